"""Metrics of one generated output: how long, how varied, how repetitive, how likely under the model."""

from __future__ import annotations

import math
from typing import Sequence

# name -> True when higher reads as better; --rank-by puts the best first.
METRICS = {
    "tokens": True,
    "distinct_1": True,
    "distinct_2": True,
    "repetition_4gram": False,
    "mean_logprob": True,
    "perplexity": False,
    "seconds": False,
}


def distinct(tokens: Sequence[int], n: int) -> float:
    """Distinct-n (Li et al., 2016): unique n-grams / all n-grams of the generated tokens; 0 when there are none."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(tokens: Sequence[int], n: int = 4) -> float:
    """Share of the n-grams that repeat an earlier n-gram of the same output."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def output_metrics(tokens: Sequence[int], logprobs: Sequence[float], seconds: float) -> dict:
    mean = sum(logprobs) / len(logprobs) if logprobs else 0.0
    return {
        "tokens": len(tokens),
        "distinct_1": distinct(tokens, 1),
        "distinct_2": distinct(tokens, 2),
        "repetition_4gram": repetition_rate(tokens, 4),
        "mean_logprob": mean,
        "perplexity": math.exp(-mean) if logprobs else 1.0,
        "seconds": seconds,
    }
