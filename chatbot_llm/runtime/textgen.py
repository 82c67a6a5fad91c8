"""Text in, text out, over either backend: tokenize, cut to the context, generate, decode, stream.

A backend is a function ``generate_ids(prompts, config, stream_keys, on_token) -> [RowResult]``:
the ONNX Generator here, or the PyTorch baseline in chatbot_llm.torch_backend. Both see the same
token ids, so their outputs can be compared token for token.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

from tokenizers import Tokenizer

from chatbot_llm.config import GenerationConfig
from chatbot_llm.errors import PromptTooLong
from chatbot_llm.runtime.generator import RowResult
from chatbot_llm.runtime.stops import StopText, cut_completion
from chatbot_llm.runtime.tokenizer import StreamDecoder

if TYPE_CHECKING:
    from chatbot_llm.runtime.onnx_model import OnnxCausalLM

GenerateIds = Callable[..., list[RowResult]]
TextCallback = Callable[[int, str], None]  # (row, text delta)


@dataclass
class Completion:
    prompt: str
    response: str
    tokens: list[int]
    prompt_tokens: int  # after any cut
    finish_reason: str
    seconds: float


def _warn_stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


class TextGenerator:
    """One loaded model on one backend."""

    def __init__(
        self,
        generate_ids: GenerateIds,
        tokenizer: Tokenizer,
        *,
        context_length: int,
        eos_token_id: int,
        model_name: str,
        backend: str,
        variant: str | None,
        model: "OnnxCausalLM | None" = None,
        on_warning: Callable[[str], None] = _warn_stderr,
    ):
        self.generate_ids = generate_ids
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.eos_token_id = eos_token_id
        self.model_name, self.backend, self.variant = model_name, backend, variant
        self.model = model  # the ONNX session, for scoring (sweep); None on the torch backend
        self.on_warning = on_warning
        self.truncate = False  # a prompt longer than the context: PromptTooLong, or cut with a warning

    def groups_by_length(self, config: GenerationConfig) -> bool:
        """Must this call batch prompts of equal token length only? (see generate())"""
        exact = self.model is not None and self.model.buffered
        return config.do_sample and config.seed is not None and not exact

    def batches(self, encoded: Sequence[Sequence[int]], config: GenerationConfig, size: int) -> list[list[int]]:
        """Row indexes to generate together, at most `size` each: in order, or by equal length where a
        seed must give the same draws in any batch on a left-padding graph (see generate())."""
        by_length = self.groups_by_length(config)
        groups: dict[int, list[int]] = {}
        for row, ids in enumerate(encoded):
            groups.setdefault(len(ids) if by_length else 0, []).append(row)
        return [rows[i : i + size] for rows in groups.values() for i in range(0, len(rows), size)]

    def encode(self, prompt: str, config: GenerationConfig) -> list[int]:
        """Token ids of a prompt, cut from the left so that its reply fits in the context.

        A prompt plus its token budget that overflows the context keeps its last
        ``max(context - budget, context // 2)`` tokens: the reply gets its budget where it can,
        and the prompt keeps at least half the context where it cannot. A prompt that alone fills
        the context is an error (PromptTooLong) unless ``truncate`` is set.
        """
        ids = self.tokenizer.encode(valid_text(prompt)).ids or [self.eos_token_id]
        budget = config.new_tokens_for(len(ids))
        keep = max(self.context_length - budget, self.context_length // 2)
        if len(ids) >= self.context_length and not self.truncate:
            raise PromptTooLong(
                f"prompt of {len(ids)} tokens is longer than the model's context of {self.context_length} "
                f"tokens: {_preview(prompt)}; shorten it, or pass --truncate to keep its last {keep} tokens"
            )
        if len(ids) > keep:
            self.on_warning(
                f"prompt of {len(ids)} tokens cut from the left to its last {keep} tokens "
                f"(the model's context is {self.context_length} tokens): {_preview(prompt)}"
            )
            ids = ids[-keep:]
        return ids

    def generate(
        self,
        prompts: Sequence[str],
        config: GenerationConfig,
        stream_keys: Sequence[int] | None = None,
        on_text: TextCallback | None = None,
        max_batch: int | None = None,
        stops: Sequence[str] = (),
    ) -> list[Completion]:
        """Completions in the order of the prompts, generated max_batch at a time (default: all).

        stops: a row ends before the first of these strings (also one spanning several tokens): its
        text is cut there, nothing past it streams, and its finish_reason is "stop".

        A seeded call must give the same text per prompt at any batch size, so a row's logits must
        be bit-identical in any batch: a draw ~1e-6 from the edge between two tokens could otherwise
        pick the other one. The decoder graph (opt, int8, int4, fp16) gives that in any batch on the
        CPU provider: its rows are right-padded and their tokens keep their positions. On CUDA it does
        not (cuBLAS picks GEMM kernels by shape, so fp16 logits move in their last bits with the batch):
        there only greedy output is batch-invariant. Optimum's graph (fp32) left-pads,
        which moves a row's tokens within the padded width and changes the order of float32 sums, so
        there a seeded sampled call runs prompts of equal token length together (see batches()).
        """
        prompts = [valid_text(p) for p in prompts]
        encoded = []
        for row, prompt in enumerate(prompts):
            try:
                encoded.append(self.encode(prompt, config))
            except PromptTooLong as exc:
                exc.row = row
                raise
        texts = RowTexts(self.tokenizer, len(prompts), stops, on_text) if on_text is not None or any(stops) else None
        on_token = None if texts is None else texts.on_token
        keys = list(stream_keys) if stream_keys is not None else list(range(len(prompts)))
        results: list[RowResult | None] = [None] * len(prompts)
        for rows in self.batches(encoded, config, max_batch or len(prompts)):
            callback = None if on_token is None else (lambda row, token, rows=rows: on_token(rows[row], token))
            done = self.generate_ids([encoded[r] for r in rows], config, stream_keys=[keys[r] for r in rows],
                                     on_token=callback)
            for row, result in zip(rows, done):
                results[row] = result
        if texts is not None:
            texts.flush()
        completions = [
            Completion(
                prompt=prompt,
                response=self.tokenizer.decode(r.tokens, skip_special_tokens=True).strip(),
                tokens=r.tokens,
                prompt_tokens=len(ids),
                finish_reason=r.finish_reason,
                seconds=r.seconds,
            )
            for prompt, ids, r in zip(prompts, encoded, results)
        ]
        return [cut_completion(c, stops) for c in completions] if any(stops) else completions


class RowTexts:
    """Each row's text as its tokens arrive: decoded as a stream, and held back where it could be the
    start of a stop string. on_token() is a generate_ids token callback: True when the row met a stop
    string (generate_ids then ends the row)."""

    def __init__(self, tokenizer: Tokenizer, rows: int, stops: Sequence[str] = (),
                 on_text: TextCallback | None = None):
        self.decoders = [StreamDecoder(tokenizer) for _ in range(rows)]
        self.stops = [StopText(stops) for _ in range(rows)] if any(stops) else None
        self.on_text = on_text

    def on_token(self, row: int, token: int) -> bool:
        delta = self.decoders[row].add(token)
        if self.stops:
            delta = self.stops[row].add(delta)  # what is safe to show: no part of a stop string
        if delta and self.on_text is not None:
            self.on_text(row, delta)
        return self.stops is not None and self.stops[row].stopped

    def flush(self) -> None:
        """At the end: hand out what each row still holds back (an unfinished character, the start of
        a stop string that never came), unless the row met a stop string."""
        if self.on_text is None:
            return
        for row, decoder in enumerate(self.decoders):
            tail = decoder.flush()
            if self.stops is not None:
                stop_text = self.stops[row]
                tail = "" if stop_text.stopped else stop_text.add(tail) + stop_text.flush()
            if tail:
                self.on_text(row, tail)


def valid_text(text: str) -> str:
    """Text with each lone surrogate replaced by U+FFFD (and split pairs joined).

    Python hands such strings over when a terminal or argv carries bytes that are not UTF-8
    (surrogateescape); the tokenizer and UTF-8 output files cannot take them.
    """
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _preview(text: str, width: int = 40) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= width else flat[:width] + "...")
