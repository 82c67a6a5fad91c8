"""The scheduler: worker threads (lanes) run every forward pass.

Requests become rows (one per prompt and choice). Rows wait in a bounded queue; at each step
boundary a lane admits waiting rows, then steps every running Generator of its own once, with at
most its share of max_batch rows live (see _Lane for why serve runs two lanes on the CPU). The
asyncio side never waits on a forward pass: each token's text goes back through the row's
`deliver` callback, which the app points at its Mailbox (one loop wake-up a step).

Continuous batching. Rows share a Generator only when they share a model and generation settings
(a group). Each group has one running Generator in each lane, and newcomers join it between steps
(Generator.add_rows): their prompts run in a pass of their own beside the others' decode step, and
from the next step on they decode in the same pass as everyone else. A forward pass of this small
model costs about the same for 8 rows as for 32, so one pass of all a lane's rows, not several
small Generators stepped in turn, is what keeps up with `batch --batch-size 32`. A Generator that has taken
ROWS_PER_GENERATOR rows takes no more (it keeps every row's tokens and results): the next newcomers
start a fresh one and the old one runs down.

Where a batch cannot take rows mid-way (Optimum's fp32 graph, and the decoder graph's device
buffers under IO binding), waiting rows start a new Generator together instead; while rows are live
they wait until a quarter of the lane's rows is free, since a Generator of one or two rows costs a forward
pass and a round of Python per step for little work.

A row's logits, and so its text, are the same alone or alongside 31 others, whenever it joins: the
decoder graph keeps each row's numbers apart (runtime.kv); on fp32's left-padded graph a seeded
sampled row shares a Generator only with rows of its own token length (TextGenerator.groups_by_length).
Each row's random stream is keyed by (seed, its choice index), so a seed gives one text per choice,
whatever else runs.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, NamedTuple

from chatbot_llm.config import GenerationConfig
from chatbot_llm.runtime.generator import Generator
from chatbot_llm.runtime.stops import StopText
from chatbot_llm.runtime.tokenizer import StreamDecoder


class QueueFull(Exception):
    pass


class RowEvent(NamedTuple):
    index: int  # the choice it belongs to, within its request
    text: str  # a text delta, possibly empty
    finish_reason: str | None = None  # set on a row's last event: stop, length, error
    completion_tokens: int = 0
    seconds: float = 0.0


@dataclass(eq=False)
class Row:
    """One choice of one request."""

    text_generator: object  # chatbot_llm.runtime.textgen.TextGenerator (tokenizer, ONNX model, eos, context)
    ids: list[int]
    config: GenerationConfig
    index: int  # the choice's index in its response
    stream_key: int  # its random stream: (seed, stream_key); the choice's number within its prompt
    stops: list[str]
    deliver: Callable[[RowEvent], None]
    cancelled: bool = False

    def group_key(self) -> tuple:
        by_length = self.text_generator.groups_by_length(self.config)
        return (id(self.text_generator), self.config, len(self.ids) if by_length else -1)

    def can_join(self) -> bool:
        """Can it join a running Generator, or must it start one of its own?"""
        return self.text_generator.model.can_join


class _LiveRow:
    def __init__(self, row: Row):
        self.row = row
        self.decoder = StreamDecoder(row.text_generator.tokenizer)
        self.stop_text = StopText(row.stops)
        self.tokens = 0
        self.held = ""  # text not sent yet (the stream interval)
        self.sent_at: float | None = None  # when its last text went out


class _Batch:
    """A running Generator and the streams of its rows that are still live."""

    def __init__(self, rows: list[Row]):
        first = rows[0]
        tg = first.text_generator
        self.generator = Generator(tg.model, [r.ids for r in rows], first.config, tg.eos_token_id,
                                   tg.context_length, stream_keys=[r.stream_key for r in rows])
        self.rows: dict[int, _LiveRow] = {i: _LiveRow(r) for i, r in enumerate(rows)}  # by Generator row
        self.taken = len(rows)  # rows it has ever taken
        self.failed = False

    def add(self, rows: list[Row]) -> None:
        indexes = self.generator.add_rows([r.ids for r in rows], [r.stream_key for r in rows])
        self.rows.update((i, _LiveRow(r)) for i, r in zip(indexes, rows))
        self.taken += len(rows)

    def live(self) -> int:
        return len(self.rows)

    def over(self) -> bool:
        return self.failed or self.generator.is_done()


class Scheduler:
    ROWS_PER_GENERATOR = 1024  # then a fresh Generator takes the newcomers: finished rows' state is let go
    JOIN_FRACTION = 8  # joining rows come a lane's max_batch // JOIN_FRACTION at a time while it is busy
    JOIN_WAIT = 4  # steps at most that free room waits for more rows to join it

    def __init__(self, max_batch: int = 32, max_queue: int = 256, stream_interval: float = 0.0, lanes: int = 1):
        """stream_interval: seconds a row's text may wait to go out with the next token's (0: every
        token at once). A row's first text and its end always go at once.
        lanes: worker threads, each stepping Generators of its own with its share of max_batch (see _Lane)."""
        if not 1 <= lanes <= max_batch:
            raise ValueError(f"lanes must be between 1 and max_batch ({max_batch}), not {lanes}")
        self.stream_interval = stream_interval
        self.max_batch, self.max_queue = max_batch, max_queue
        self._lock = threading.Condition()
        self._waiting: deque[Row] = deque()
        self._stopping = False
        shares = [max_batch // lanes + (i < max_batch % lanes) for i in range(lanes)]
        self.lanes = [_Lane(self, i, share) for i, share in enumerate(shares)]

    # ------------------------------------------------------------ the asyncio side (never blocks)

    def start(self) -> None:
        for lane in self.lanes:
            lane.thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        for lane in self.lanes:
            lane.thread.join(timeout=30)

    def submit(self, rows: list[Row]) -> None:
        with self._lock:
            if len(self._waiting) + len(rows) > self.max_queue:
                raise QueueFull(f"{len(self._waiting)} rows are waiting (the limit is {self.max_queue})")
            self._waiting.extend(rows)
            self._lock.notify_all()

    def cancel(self, rows: list[Row]) -> None:
        """Stop these rows at the next step boundary (their client went away)."""
        for row in rows:
            row.cancelled = True
        with self._lock:
            self._lock.notify_all()

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"live_rows": sum(lane.live_rows for lane in self.lanes), "waiting_rows": len(self._waiting),
                    "max_batch": self.max_batch, "max_queue": self.max_queue, "lanes": len(self.lanes)}


class _Lane:
    """A worker thread and the Generators it steps, with at most `max_batch` rows live in all.

    With two lanes on two cores, one lane's forward pass (onnxruntime, which lets go of the GIL)
    runs while the other lane is in Python (the draw, detokenizing, events), so neither core waits
    for the other's kind of work (serve sizes the shared session's threads for it: cli/serve.py).
    Waiting rows go to whichever lane has room at its next step boundary."""

    def __init__(self, scheduler: Scheduler, number: int, max_batch: int):
        self.scheduler, self.max_batch = scheduler, max_batch
        self.admit_min = max(1, max_batch // 4)  # for rows that cannot join a running Generator
        # rows that join a running Generator join join_min or more at a time while the batch is nearly
        # full, waiting at most JOIN_WAIT steps for the room: each join is a forward pass of its own
        self.join_min = max(1, max_batch // scheduler.JOIN_FRACTION)
        self._held = 0  # steps the waiting rows have been held back so far
        self._batches: list[_Batch] = []
        self._joinable: dict[tuple, _Batch] = {}  # group -> its running Generator that takes newcomers
        self.live_rows = 0  # read by other threads under the scheduler's lock
        self.thread = threading.Thread(target=self._run, name=f"chatbot-llm-lane-{number}", daemon=True)

    def _run(self) -> None:
        lock, waiting = self.scheduler._lock, self.scheduler._waiting
        while True:
            with lock:
                while not self.scheduler._stopping and not self._batches and not waiting:
                    lock.wait()
                if self.scheduler._stopping:
                    return
                newcomers = self._admit()
            for rows in _groups(newcomers):
                self._start(rows)
            for batch in list(self._batches):
                try:
                    self._step(batch)
                except Exception as exc:  # a bug in one batch: its rows get the error, the others go on
                    self._fail(batch, exc)
            self._batches = [b for b in self._batches if not b.over()]
            self._joinable = {key: b for key, b in self._joinable.items() if not b.over()}
            with lock:
                self.live_rows = sum(b.live() for b in self._batches)

    def _admit(self) -> list[Row]:
        """Waiting rows to start now, in their order (under the lock)."""
        waiting = self.scheduler._waiting
        live = sum(b.live() for b in self._batches)
        free = self.max_batch - live
        taken = []
        if (live and 0 < free < self.join_min and len(waiting) > free and self._held < self.scheduler.JOIN_WAIT
                and waiting[0].can_join()):
            self._held += 1  # a join pass for one or two rows costs nearly what it costs for a few more
        else:
            self._held = 0
            while waiting and len(taken) < free:
                row = waiting[0]
                if not row.cancelled and live and free < self.admit_min and not row.can_join():
                    break  # it would start a small Generator of its own: it waits for more room
                waiting.popleft()
                if not row.cancelled:
                    taken.append(row)
            while waiting and waiting[0].cancelled:
                waiting.popleft()
        self.live_rows = live + len(taken)
        return taken

    def _start(self, rows: list[Row]) -> None:
        """Rows of one group: into the group's running Generator, or a new one."""
        key = rows[0].group_key()
        batch = self._joinable.get(key)
        try:
            if batch is not None:
                batch.add(rows)
            else:
                batch = _Batch(rows)
                self._batches.append(batch)
                if batch.generator.can_add_rows:
                    self._joinable[key] = batch
        except Exception as exc:  # a bad row must not stop the worker, nor the rows it would join
            for row in rows:
                row.deliver(RowEvent(row.index, "", "error:" + str(exc)))
            return
        if batch.taken >= self.scheduler.ROWS_PER_GENERATOR and self._joinable.get(key) is batch:
            del self._joinable[key]  # it runs down; newcomers start a fresh one

    def _step(self, batch: _Batch) -> None:
        generator = batch.generator
        for i, live in list(batch.rows.items()):
            if live.row.cancelled:
                generator.cancel(i)
                del batch.rows[i]
        if generator.is_done():
            return
        try:
            stepped = generator.generate_next_token()
        except Exception as exc:  # a failed forward pass ends its batch, not the server
            self._fail(batch, exc)
            return
        now = time.perf_counter()
        for i, token in stepped:
            live = batch.rows[i]
            result = generator.results[i]
            text = ""
            if token != generator.eos:
                live.tokens += 1
                delta = live.decoder.add(token)
                text = live.stop_text.add(delta) if delta else ""
            if live.stop_text.stopped:
                generator.cancel(i)
                finish = "stop"
            elif result.finish_reason == "eos":
                finish = "stop"
            elif result.finish_reason in ("length", "context"):
                finish = "length"
            else:
                finish = None
            if finish is not None:
                del batch.rows[i]
                if not live.stop_text.stopped:  # an unfinished character, a stop string's start
                    text += live.stop_text.add(live.decoder.flush())
                    text += live.stop_text.flush()
            text, live.held = live.held + text, ""
            if text and finish is None and live.sent_at is not None and now - live.sent_at < self.scheduler.stream_interval:
                live.held = text  # it goes with a later token's text
                continue
            if text:
                live.sent_at = now
            if text or finish:
                live.row.deliver(RowEvent(live.row.index, text, finish, live.tokens, result.seconds))

    @staticmethod
    def _fail(batch: _Batch, exc: Exception) -> None:
        batch.failed = True
        for i, live in batch.rows.items():
            live.row.deliver(RowEvent(live.row.index, "", f"error:{type(exc).__name__}: {exc}"))
        batch.rows.clear()


def _groups(rows: list[Row]) -> list[list[Row]]:
    groups: dict[tuple, list[Row]] = {}
    for row in rows:
        groups.setdefault(row.group_key(), []).append(row)
    return list(groups.values())
