"""The decode loop: prompts -> prefill -> one token per step over the KV cache -> per-row stop.

Batch invariance: a row's tokens keep their positions whatever else is in the batch (runtime.kv),
the processors see only a row's own tokens, and each row draws from its own random stream keyed by
(seed, stream key). A row that finishes leaves the batch, so the others carry on without it. Where
the KV cache can take rows mid-batch (can_add_rows: the decoder graph on the CPU), add_rows() joins
new prompts to the running batch (the server's continuous batching), each generated as it would be
alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from chatbot_llm.config import GenerationConfig
from chatbot_llm.runtime.onnx_model import OnnxCausalLM
from chatbot_llm.runtime.processors import apply_processors, build_processors, sample_rows

# Called with (row, token id) for each token as it is generated; the row indexes the prompt list.
# A true return value ends that row there (a stop string was met).
TokenCallback = Callable[[int, int], "bool | None"]


@dataclass
class RowResult:
    tokens: list[int] = field(default_factory=list)  # generated tokens, without the EOS
    finish_reason: str = ""  # "eos", "length" (max new tokens) or "context" (model context full)
    seconds: float = 0.0  # from the start of the batch (or the row's joining it) to this row's last token


def row_rngs(config: GenerationConfig, keys: Sequence[int]) -> list[np.random.Generator]:
    """One random stream per prompt, keyed by (seed, key) when seeded, fresh entropy otherwise."""
    if config.seed is None:
        return [np.random.default_rng() for _ in keys]
    return [np.random.default_rng([config.seed, int(key)]) for key in keys]


class Generator:
    """The state of one batch being generated: call generate_next_token() until is_done()."""

    def __init__(
        self,
        model: OnnxCausalLM,
        prompts: Sequence[Sequence[int]],
        config: GenerationConfig,
        eos_token_id: int,
        context_length: int,
        stream_keys: Sequence[int] | None = None,
    ):
        _check_prompts(prompts, context_length)
        self.model, self.config, self.eos, self.context_length = model, config, eos_token_id, context_length
        self.processors = build_processors(config)
        self.rngs = row_rngs(config, stream_keys if stream_keys is not None else range(len(prompts)))
        lengths = np.array([len(p) for p in prompts])
        self.budgets = np.array([config.new_tokens_for(n) for n in lengths])
        # a row stops when it reaches the context, whatever its token budget
        self.capacity = np.minimum(lengths + self.budgets, context_length)
        self.sequences = [np.zeros(c, np.int64) for c in self.capacity]
        for seq, prompt in zip(self.sequences, prompts):
            seq[: len(prompt)] = prompt
        self.lengths = lengths.copy()
        self.results = [RowResult() for _ in prompts]
        self.active = np.arange(len(prompts))
        self.cache = model.start(prompts, int(self.capacity.max()), pad_id=eos_token_id)
        # greedy with no processors, on a cache with the device's argmax: one int64 per row comes back
        self.argmax_on_device = not config.do_sample and not self.processors and hasattr(self.cache, "next_tokens")
        if self.argmax_on_device:
            self.cache.read_logits = False
        self._next_tokens: np.ndarray | None = None  # None: the prompts go first
        self.started = [time.perf_counter()] * len(prompts)  # each row's start: the batch's, or its joining
        self._joining: list[int] = []  # rows added since the last step; their prompts run at the next

    @property
    def can_add_rows(self) -> bool:
        return self.cache.can_join

    def add_rows(self, prompts: Sequence[Sequence[int]], stream_keys: Sequence[int]) -> list[int]:
        """Join prompts to the running batch, also one whose rows all finished; they run from the next
        step on. Returns their rows: the next indexes of results (the prompt list only grows)."""
        if not self.can_add_rows:
            raise RuntimeError("this model's KV cache cannot take rows mid-batch; start a new Generator")
        _check_prompts(prompts, self.context_length)
        lengths = np.array([len(p) for p in prompts])
        budgets = np.array([self.config.new_tokens_for(n) for n in lengths])
        capacity = np.minimum(lengths + budgets, self.context_length)
        rows = list(range(len(self.results), len(self.results) + len(prompts)))
        self.budgets = np.concatenate([self.budgets, budgets])
        self.capacity = np.concatenate([self.capacity, capacity])
        self.lengths = np.concatenate([self.lengths, lengths])
        for prompt, room in zip(prompts, capacity):
            self.sequences.append(np.zeros(room, np.int64))
            self.sequences[-1][: len(prompt)] = prompt
        self.results += [RowResult() for _ in prompts]
        self.rngs += row_rngs(self.config, stream_keys)
        self.started += [time.perf_counter()] * len(prompts)
        self._joining += rows
        return rows

    def is_done(self) -> bool:
        return len(self.active) == 0 and not self._joining

    def cancel(self, row: int) -> None:
        """Stop one row before the next step (the server's client went away, or it met a stop string)."""
        if row in self._joining:  # its prompt has not run: the cache never saw it
            self._joining.remove(row)
            self.results[row].finish_reason = self.results[row].finish_reason or "cancelled"
            return
        keep = self.active != row
        if keep.all():
            return
        self.results[row].finish_reason = self.results[row].finish_reason or "cancelled"
        self.active = self.active[keep]
        if self._next_tokens is not None:
            self._next_tokens = self._next_tokens[keep]
        if len(self.active) or self.can_add_rows:  # an empty batch that rows may join keeps its cache
            self.cache.keep(keep)

    def generate_next_token(self) -> list[tuple[int, int]]:
        """Run one step; returns (row, token) for every row that was still generating."""
        logits = self.cache.forward(self._next_tokens) if len(self.active) else None
        if self._joining:  # the newcomers' prompts, in a pass of their own, after the others' step
            joining, self._joining = np.array(self._joining), []
            joined = self.cache.join([self.sequences[r][: self.lengths[r]] for r in joining],
                                     int(self.capacity[joining].max()), limit=self.context_length)
            logits = joined if logits is None else np.concatenate([logits, joined])
            self.active = np.concatenate([self.active, joining])
        rows = self.active
        ids = [self.sequences[r][: self.lengths[r]] for r in rows] if self.processors else []  # only they read them
        if self.argmax_on_device:
            tokens = self.cache.next_tokens()
        elif self.config.do_sample:
            tokens = sample_rows(self.processors, ids, logits, [self.rngs[r] for r in rows])
        else:
            tokens = apply_processors(self.processors, ids, logits).argmax(axis=-1)
        now = time.perf_counter()
        keep = np.ones(len(rows), bool)
        for i, (row, token) in enumerate(zip(rows, tokens)):
            result = self.results[row]
            result.seconds = now - self.started[row]
            if token == self.eos:
                result.finish_reason, keep[i] = "eos", False
                continue
            self.sequences[row][self.lengths[row]] = token
            self.lengths[row] += 1
            result.tokens.append(int(token))
            if self.lengths[row] == self.capacity[row]:
                out_of_budget = len(result.tokens) == self.budgets[row]
                result.finish_reason = "length" if out_of_budget else "context"
                keep[i] = False
        stepped = [(int(r), int(t)) for r, t in zip(rows, tokens)]
        if not keep.all():
            self.active = rows[keep]
            if len(self.active) or self.can_add_rows:  # also when none is left: rows may join later
                self.cache.keep(keep)
        self._next_tokens = tokens[keep].astype(np.int64)
        return stepped


def _check_prompts(prompts: Sequence[Sequence[int]], context_length: int) -> None:
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    if any(len(p) >= context_length for p in prompts):
        raise ValueError("a prompt fills the whole context; cut it first")


def generate_ids(
    model: OnnxCausalLM,
    prompts: Sequence[Sequence[int]],
    config: GenerationConfig,
    eos_token_id: int,
    context_length: int,
    stream_keys: Sequence[int] | None = None,
    on_token: TokenCallback | None = None,
) -> list[RowResult]:
    generator = Generator(model, prompts, config, eos_token_id, context_length, stream_keys)
    while not generator.is_done():
        for row, token in generator.generate_next_token():
            if on_token is not None and token != eos_token_id and on_token(row, token):
                generator.cancel(row)
    return generator.results
