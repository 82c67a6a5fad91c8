"""report.html: one self-contained page (no network) per sweep, to choose settings by looking.

The page is report_page.html with report.css and report.js inlined and the sweep's data embedded
as JSON; the script draws, per model, a trade-off plot (inline SVG), the table of
combinations (tinted, sortable, filterable, with each metric's spread), the outputs of the
selected combination, a side-by-side matrix of the ticked ones, and each row as options, TOML and
a `sweep-preset` command. ``report.html?sort=perplexity&dir=asc`` opens it sorted, and
``?click=perplexity`` clicks that header.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np

from chatbot_llm.sweep.metrics import METRICS
from chatbot_llm.sweep.preset import cli_options, quote, ranked, toml_text

# The page's markup, style and behaviour, shipped beside this module and inlined into each report.
PAGE, STYLE, SCRIPT = "report_page.html", "report.css", "report.js"
DATA_MARK = "SWEEP_DATA_JSON"


def _spread(values: list[float]) -> dict:
    return {"min": float(np.min(values)), "max": float(np.max(values)), "std": float(np.std(values))}


def report_data(plan, summary: list[dict], rows: list[dict], rank_by: str | None, variant: str | None = None) -> dict:
    by_cell: dict[str, list[dict]] = {}
    for row in rows:
        by_cell.setdefault(row["cell"], []).append(row)
    configs = {c.key: c.config for c in plan.cells}
    variant_option = f" --variant {variant}" if variant else ""
    prompts_file = quote(plan.prompts_file or "PROMPTS.txt")
    seed_option = f" --seed {plan.seed}" if plan.seed is not None else ""
    models = []
    for model in plan.models:
        entries = []
        for rank, entry in enumerate(ranked(summary, model), start=1):
            outputs = by_cell.get(entry["cell"], [])
            config = configs[entry["cell"]]
            options = cli_options(config)
            entries.append({
                "cell": entry["cell"], "rank": rank,
                "params": {k: entry[k] for k in plan.grid},
                "metrics": {m: entry[m] for m in METRICS},
                "spread": {m: _spread([o[m] for o in outputs]) for m in METRICS},
                "outputs": [[o["prompt_line"], o["sample"], o["response"], o["tokens"], o["perplexity"],
                             o["finish_reason"]] for o in sorted(outputs, key=lambda o: (o["prompt_line"], o["sample"]))],
                "chat": f"chatbot-llm chat --model {quote(model)}{variant_option} {options}",
                "batch": f"chatbot-llm batch {prompts_file} --model {quote(model)}{variant_option} {options}{seed_option}",
                "toml": toml_text(config),
                "preset": f"chatbot-llm sweep-preset {quote(plan.out)} --model {quote(model)} --rank {rank} --name NAME",
            })
        models.append({"name": model, "rows": entries})
    return {
        "grid": plan.grid,
        "prompts": [list(p) for p in plan.prompts],
        "samples": plan.samples,
        "seed": plan.seed,
        "streams": plan.streams,
        "rank_by": rank_by,
        "metrics": {m: ("higher" if better else "lower") for m, better in METRICS.items()},
        "models": models,
    }


def render(plan, summary: list[dict], rows: list[dict], rank_by: str | None, variant: str | None = None) -> str:
    files = resources.files("chatbot_llm.sweep")
    page, style, script = (files.joinpath(name).read_text(encoding="utf-8") for name in (PAGE, STYLE, SCRIPT))
    template = page.replace("/*REPORT_STYLE*/", style).replace("/*REPORT_SCRIPT*/", script)
    data = json.dumps(report_data(plan, summary, rows, rank_by, variant), ensure_ascii=False)
    # inside <script>, "</script" would end the element early; "<" only occurs in JSON strings, where
    # \u003c is the same character
    data = data.replace("<", "\\u003c")
    return template.replace(DATA_MARK, data, 1)


def write_report(plan, summary: list[dict], rows: list[dict], rank_by: str | None, variant: str | None = None) -> Path:
    from chatbot_llm.sweep.run import REPORT, write_atomic

    path = Path(plan.out) / REPORT
    write_atomic(path, render(plan, summary, rows, rank_by, variant))
    return path
