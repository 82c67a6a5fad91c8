"""Stop sequences: the text is cut before the first stop string and the row ends there.

A stop string can span several tokens, and a streamed delta may end in the first part of one, so
StopText holds back the longest tail of the text that could still become a stop string and
releases it once it cannot. The same cut applies to finished rows (cut_completion), so streamed
and returned text agree.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence


class StopText:
    """One row's text as it streams, cut before the first of the stop strings."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.text = ""  # everything seen so far, up to a stop
        self.released = 0  # how much of self.text has been handed out
        self.stopped = False

    def add(self, delta: str) -> str:
        """The part of the text that is now safe to show (may be empty)."""
        if self.stopped:
            return ""
        self.text += delta
        cut = min((i for i in (self.text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.text, self.stopped = self.text[:cut], True
            safe = cut
        else:
            safe = len(self.text) - self._held_back()
        out, self.released = self.text[self.released : safe], max(self.released, safe)
        return out

    def flush(self) -> str:
        """The held-back tail, at the end of a row that met no stop string."""
        out, self.released = self.text[self.released :], len(self.text)
        return out

    def _held_back(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string."""
        longest = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self.text)), longest, -1):
                if self.text.endswith(stop[:n]):
                    longest = n
                    break
        return longest


def cut_text(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """text cut before its first stop string, and whether one was found."""
    row = StopText(stops)
    kept = row.add(text)
    return (kept if row.stopped else kept + row.flush()), row.stopped


def cut_completion(completion, stops: Sequence[str]):
    """A textgen Completion whose response is cut at its first stop string, finish_reason "stop"
    (its tokens stay those generated). Unchanged when no stop string occurs."""
    response, stopped = cut_text(completion.response, stops)
    if not stopped:
        return completion
    return dataclasses.replace(completion, response=response.rstrip(), finish_reason="stop")
