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
        for row in scores:
            row[row < self.threshold(row)[0]] = NEG_INF
        return scores

    def kept(self, row: np.ndarray) -> np.ndarray:
        """The positions, ascending, of the scores that __call__ leaves in a row (the others it sets
        to -inf), from one pass over the row."""
        kth, candidates = self.threshold(row)
        return np.flatnonzero(row >= kth) if candidates is None else candidates[row[candidates] >= kth]

    def threshold(self, row: np.ndarray) -> tuple[np.float32, np.ndarray | None]:
        """kth_largest() of the row for this k (at least 1, at most the row's length)."""
        return kth_largest(row, min(max(self.top_k, 1), len(row)))


def kth_largest(row: np.ndarray, k: int, stride: int = 16) -> tuple[np.float32, np.ndarray | None]:
    """The k-th largest value of a row, exactly, without a selection over the whole vocabulary, and
    the positions (ascending) of the candidates it was chosen from, which hold every score at or
    above it; None for them where k is large enough that the plain selection is as quick.

    The k-th largest of every stride-th score is a lower bound with at least k scores of the row
    at or above it (they include the sample's own top k), so the k-th largest of the row is the
    k-th largest of those few candidates: a compare over the row and a selection over ~stride x k
    values, instead of a selection over 50,257.
    """
    sample = row[::stride]
    if k * stride * 4 > len(row) or len(sample) < k:
        return np.partition(row, len(row) - k)[len(row) - k], None
    bound = np.partition(sample, len(sample) - k)[len(sample) - k]
    candidates = np.flatnonzero(row >= bound)
    values = row[candidates]
    return np.partition(values, len(values) - k)[len(values) - k], candidates


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


def sample_rows(processors: list, ids: Sequence[np.ndarray], scores: np.ndarray,
                rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """Each row's draw: the token that apply_processors() and then sample() give, from the same
    random numbers, with less work. From a TopK on, a row is only the scores it kept (a few dozen
    of 50,257, in vocabulary order): the processors after it (TopP, which reads scores only) and
    the draw see the same finite scores in the same order as in the whole row, so they give the
    same result without another pass over the vocabulary."""
    cut = next((i for i, p in enumerate(processors) if isinstance(p, TopK)), None)
    if cut is None:
        scores = apply_processors(processors, ids, scores)
        return np.array([sample(row, rng) for row, rng in zip(scores, rngs)], np.int64)
    top_k, after = processors[cut], processors[cut + 1 :]
    if not all(isinstance(p, TopP) for p in after):
        raise ValueError("sample_rows: only TopP may follow TopK (it reads scores, not their positions)")
    scores = apply_processors(processors[:cut], ids, scores)
    tokens = np.empty(len(scores), np.int64)
    for r, (row, rng) in enumerate(zip(scores, rngs)):
        kept = top_k.kept(row)
        values = apply_processors(after, ids[r : r + 1], row[kept][None, :])[0]
        tokens[r] = kept[sample(values, rng)]
    return tokens
