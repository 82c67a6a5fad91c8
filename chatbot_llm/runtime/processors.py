"""Logits processors in numpy with the semantics of transformers' generate().

Order (as in GenerationMixin._get_logits_processor): RepetitionPenalty -> NoRepeatNGram ->
[sampling only] Temperature -> TopK -> TopP -> draw. Greedy is argmax after the first two. A
processor that would be a no-op (penalty 1.0, n-gram size 0, temperature 1.0, top_k 0, top_p 1.0)
is left out, as generate() leaves it out.

Every processor takes ``ids``, one 1-D int array per row holding that row's prompt and generated
tokens (no padding: a row's output must not depend on its batch), and ``scores``, a float32
array of shape (rows, vocab). Scores are changed in place and returned.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from chatbot_llm.config import GenerationConfig

NEG_INF = np.float32(-np.inf)


class RepetitionPenalty:
    """Each token already in the row: positive logits divided by the penalty, negative multiplied."""

    def __init__(self, penalty: float):
        self.penalty = penalty

    def __call__(self, ids: Sequence[np.ndarray], scores: np.ndarray) -> np.ndarray:
        for row, row_ids in enumerate(ids):
            seen = np.unique(row_ids)
            picked = scores[row, seen]
            scores[row, seen] = np.where(picked < 0, picked * self.penalty, picked / self.penalty)
        return scores


class NoRepeatNGram:
    """Ban every token that would complete an n-gram already present in the row."""

    def __init__(self, size: int):
        self.size = size

    def banned_tokens(self, row_ids: np.ndarray) -> np.ndarray:
        n = self.size
        length = len(row_ids)
        if length < n:  # no complete n-gram yet (transformers: none when length + 1 < n, none found at n - 1)
            return row_ids[:0]
        if n == 1:
            return row_ids
        prefix = row_ids[length - n + 1 :]
        windows = sliding_window_view(row_ids[:-1], n - 1)  # prefixes of every complete n-gram
        matches = np.flatnonzero((windows == prefix).all(axis=1))
        return row_ids[matches + n - 1]

    def __call__(self, ids: Sequence[np.ndarray], scores: np.ndarray) -> np.ndarray:
        for row, row_ids in enumerate(ids):
            scores[row, self.banned_tokens(row_ids)] = NEG_INF
        return scores


class Temperature:
    def __init__(self, temperature: float):
        self.temperature = temperature

    def __call__(self, ids: Sequence[np.ndarray], scores: np.ndarray) -> np.ndarray:
        scores /= self.temperature
        return scores


class TopK:
    """Keep the k highest scores; every token tied with the k-th is kept too."""

    def __init__(self, top_k: int):
        self.top_k = top_k

    def __call__(self, ids: Sequence[np.ndarray], scores: np.ndarray) -> np.ndarray:
        vocab = scores.shape[-1]
        k = min(max(self.top_k, 1), vocab)
        for row in scores:
            row[row < kth_largest(row, k)] = NEG_INF
        return scores


def kth_largest(row: np.ndarray, k: int, stride: int = 16) -> np.float32:
    """The k-th largest value of a row, exactly, without a selection over the whole vocabulary.

    The k-th largest of every stride-th score is a lower bound with at least k scores of the row
    at or above it (they include the sample's own top k), so the k-th largest of the row is the
    k-th largest of those few candidates: a compare over the row and a selection over ~stride x k
    values, instead of a selection over 50,257.
    """
    vocab = len(row)
    sample = row[::stride]
    if k * stride * 4 > vocab or len(sample) < k:  # large k: the plain selection is as quick
        return np.partition(row, vocab - k)[vocab - k]
    bound = np.partition(sample, len(sample) - k)[len(sample) - k]
    candidates = row[row >= bound]
    return np.partition(candidates, len(candidates) - k)[len(candidates) - k]


class TopP:
    """Keep the most likely tokens whose probabilities sum to top_p, and always at least one.

    Ascending sort and ``cumulative <= 1 - top_p`` as transformers does it. Only finite scores
    are sorted: after TopK that is k of them, not the whole vocabulary, and the tokens already
    at -inf have probability 0, so they would be dropped by the full sort as well.
    """

    def __init__(self, top_p: float):
        self.top_p = top_p

    def __call__(self, ids: Sequence[np.ndarray], scores: np.ndarray) -> np.ndarray:
        for row in scores:
            live = np.flatnonzero(np.isfinite(row))
            order = live[np.argsort(row[live], kind="stable")]
            ordered = row[order]
            probs = np.exp(ordered - ordered[-1])
            probs /= probs.sum(dtype=np.float32)
            drop = np.cumsum(probs, dtype=np.float32) <= (1 - self.top_p)
            drop[-1] = False
            row[order[drop]] = NEG_INF
        return scores


def build_processors(config: GenerationConfig) -> list:
    """The processors generate() would apply for this configuration, in its order."""
    processors: list = []
    if config.repetition_penalty != 1.0:
        processors.append(RepetitionPenalty(config.repetition_penalty))
    if config.no_repeat_ngram_size > 0:
        processors.append(NoRepeatNGram(config.no_repeat_ngram_size))
    if config.do_sample:
        if config.temperature != 1.0:
            processors.append(Temperature(config.temperature))
        if config.top_k != 0:
            processors.append(TopK(config.top_k))
        if config.top_p < 1.0:
            processors.append(TopP(config.top_p))
    return processors


def apply_processors(processors: list, ids: Sequence[np.ndarray], scores: np.ndarray) -> np.ndarray:
    for processor in processors:
        scores = processor(ids, scores)
    return scores


def sample(scores: np.ndarray, rng: np.random.Generator) -> int:
    """Draw one token from softmax(scores) with one uniform number from this row's stream.

    Tokens at -inf have probability exactly 0 and can never be drawn.
    """
    # Only the tokens above -inf: top-k and top-p leave a few dozen of 50,257. Their cumulative sums
    # are those of the whole row (the others add exactly 0.0, in the same order), so the draw is too.
    live = np.flatnonzero(scores > NEG_INF)
    if len(live) == 0:
        raise ValueError("every token's score is -inf: nothing can be drawn")
    kept = scores[live]
    cdf = np.cumsum(np.exp(kept.astype(np.float64) - np.max(kept)))
    index = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    # rounding can put the draw at the very end: fall back to the last token with mass
    return int(live[min(index, len(live) - 1)])
