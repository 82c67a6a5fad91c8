"""sweep.json: what a sweep folder was made with, so its report can be redrawn and its rows written out.

results.jsonl holds each output with the grid values of its combination, but not the full
configuration it ran with (the model's defaults, --config, --max-new-tokens, --seed). sweep.json,
written before anything runs, keeps that: every cell's full configuration, the prompts, the seed,
the ranking metric and the variant. `sweep-report` and `sweep-preset` read it back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from chatbot_llm.config import GenerationConfig
from chatbot_llm.errors import UsageError
from chatbot_llm.sweep.metrics import METRICS
from chatbot_llm.sweep.run import RESULTS, Cell, Plan, read_results, summarize, write_atomic

MANIFEST = "sweep.json"
FORMAT = 1


def write_manifest(plan: Plan, rank_by: str | None, variant: str | None, device: str) -> Path:
    data = {
        "format": FORMAT,
        "streams": plan.streams,
        "models": plan.models,
        "grid": plan.grid,
        "prompts_file": plan.prompts_file,
        "prompts": [list(p) for p in plan.prompts],
        "samples": plan.samples,
        "seed": plan.seed,
        "stops": list(plan.stops),
        "rank_by": rank_by,
        "variant": variant,
        "device": device,
        "cells": [{"model": c.model, "key": c.key, "params": c.params, "config": c.config.to_dict()}
                  for c in plan.cells],
    }
    plan.out.mkdir(parents=True, exist_ok=True)
    path = plan.out / MANIFEST
    write_atomic(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    return path


def load_sweep(folder: Path) -> tuple[Plan, dict[str, Any]]:
    """The plan of a sweep folder and the rest of its manifest; a UsageError naming what is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"sweep folder not found: {folder} (the --out of a sweep)")
    path = folder / MANIFEST
    if not path.is_file():
        hint = (" (its results.jsonl is from a sweep made before sweep.json; run that sweep again to make one)"
                if (folder / RESULTS).is_file() else "")
        raise UsageError(f"{folder} is not a sweep folder: it has no {MANIFEST}{hint}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        cells = [Cell(c["model"], c["params"], GenerationConfig(**c["config"]), c["key"]) for c in data["cells"]]
        plan = Plan(data["models"], data["grid"], [(int(n), str(p)) for n, p in data["prompts"]],
                    int(data["samples"]), cells, folder, data.get("seed"), data.get("prompts_file", ""),
                    int(data.get("streams", 1)), tuple(data.get("stops", ())))
    except (ValueError, KeyError, TypeError, UsageError) as exc:
        raise UsageError(f"{path} is damaged ({type(exc).__name__}: {exc}); rerun the sweep to rewrite it") from None
    if data.get("rank_by") is not None and data["rank_by"] not in METRICS:
        raise UsageError(f"{path}: unknown rank_by {data['rank_by']!r}")
    return plan, data


def load_finished(folder: Path) -> tuple[Plan, dict[str, Any], list[dict], list[dict]]:
    """A sweep folder's plan, manifest, result rows and summary (ranked as its report is).

    Only reads: a line cut short at the end of results.jsonl is skipped, not cut off, since a sweep
    may be writing it right now.
    """
    plan, manifest = load_sweep(folder)
    keys = {c.key for c in plan.cells}
    rows = [r for r in read_results(Path(folder) / RESULTS, repair=False) if r["cell"] in keys]
    return plan, manifest, rows, summarize(plan, rows, manifest.get("rank_by"))
