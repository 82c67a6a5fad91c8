"""--grid "temperature=0.7,1.0 top_k=0,50" -> every combination, each checked before anything runs."""

from __future__ import annotations

import itertools
from typing import Any

from chatbot_llm.config import GenerationConfig, canonical_name, parse_value
from chatbot_llm.errors import UsageError


def parse_grid(text: str) -> dict[str, list[Any]]:
    """name -> values, in the order given; a UsageError that names the fault otherwise."""
    grid: dict[str, list[Any]] = {}
    for part in text.split():
        name, sep, values = part.partition("=")
        if not sep or not name:
            raise UsageError(f"--grid: {part!r} is not NAME=V1,V2,...")
        try:
            key = canonical_name(name)
        except UsageError:
            raise UsageError(f"--grid: unknown parameter {name!r}") from None
        if key == "seed":
            raise UsageError("--grid: seed is not a generation parameter to sweep; use --seed")
        if key in grid:
            raise UsageError(f"--grid: {key} is given twice")
        items = [v for v in values.split(",")]
        if not values or any(v.strip() == "" for v in items):
            raise UsageError(f"--grid: {key} has an empty value list" if not values.strip(",")
                             else f"--grid: {key} has an empty value in {values!r}")
        try:
            parsed = [parse_value(key, v) for v in items]
        except UsageError as exc:
            raise UsageError(f"--grid: {exc}") from None
        grid[key] = list(dict.fromkeys(parsed))  # a repeated value is one combination, not two
    if not grid:
        raise UsageError("--grid is empty; give NAME=V1,V2 pairs separated by spaces")
    return grid


def combinations(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]


def check_combinations(base: GenerationConfig, combos: list[dict[str, Any]]) -> None:
    """Every combination must be a valid configuration on top of the base, or nothing runs."""
    for combo in combos:
        try:
            base.replace(**combo).validate()
        except UsageError as exc:
            shown = " ".join(f"{k}={v}" for k, v in combo.items())
            raise UsageError(f"--grid: the combination {shown} is invalid: {exc}") from None
