"""Run a sweep: every model x combination ("cell") over every prompt and sample, batched, resumable.

A cell's rows are appended to results.jsonl in one write once the whole cell is done, so a killed
sweep leaves only whole cells behind; a rerun with the same --out skips every cell already there.
summary.csv and report.html are rewritten from results.jsonl at the end of each run; sweep.json
(manifest.py) records the plan, so `sweep-report` can redraw them and `sweep-preset` can write a row out.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from chatbot_llm.config import GenerationConfig
from chatbot_llm.errors import UsageError
from chatbot_llm.runtime.stops import cut_text
from chatbot_llm.runtime.textgen import RowTexts
from chatbot_llm.sweep.grid import check_combinations, combinations, parse_grid
from chatbot_llm.sweep.metrics import METRICS, output_metrics

RESULTS, SUMMARY, REPORT = "results.jsonl", "summary.csv", "report.html"
# How rows get their random streams (see stream_key). 1: (line << 20) | sample, before sample 0 shared
# batch's stream; 2: sample 0 of prompt line L is batch's stream for line L.
STREAMS = 2


@dataclass
class Cell:
    model: str
    params: dict[str, Any]  # the grid's values for this cell
    config: GenerationConfig  # the full configuration it runs with
    key: str


@dataclass
class Plan:
    models: list[str]
    grid: dict[str, list[Any]]
    prompts: list[tuple[int, str]]  # (line number, prompt)
    samples: int
    cells: list[Cell]
    out: Path
    seed: int | None = None
    prompts_file: str = ""
    streams: int = STREAMS
    stops: tuple[str, ...] = ()  # --stop: each output ends before the first of these

    @property
    def rows_per_cell(self) -> int:
        return len(self.prompts) * self.samples


def cell_key(model: str, config: GenerationConfig, prompts: list[tuple[int, str]], samples: int,
             stops: tuple[str, ...] = ()) -> str:
    """Everything that decides a cell's outputs, hashed: a rerun finds the same key for the same work."""
    extra = {"streams": STREAMS, **({"stops": list(stops)} if stops else {})}  # keys without stops unchanged
    blob = json.dumps([model, config.to_dict(), prompts, samples, extra], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def plan_sweep(models: list[str], prompts_file: Path, grid_text: str, samples: int, seed: int | None,
               overrides: dict[str, Any], config_layer: dict[str, Any], out: Path,
               stops: tuple[str, ...] = ()) -> Plan:
    """Check everything a user can get wrong, before any model is loaded."""
    from chatbot_llm.batchio import check_prompt_file, read_prompts
    from chatbot_llm.models import model_defaults, resolve_model

    grid = parse_grid(grid_text)
    combos = combinations(grid)
    if not models:
        raise UsageError("--models is empty; name at least one model")
    check_prompt_file(prompts_file)
    prompts = list(read_prompts(prompts_file))
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder")
    cells = []
    for model in models:
        base = GenerationConfig.resolve(model_defaults(resolve_model(model)), config_layer,
                                        {**overrides, "seed": seed})
        check_combinations(base, combos)
        for combo in combos:
            config = base.replace(**combo)
            cells.append(Cell(model, combo, config, cell_key(model, config, prompts, samples, stops)))
    return Plan(models, grid, prompts, samples, cells, out, seed, str(prompts_file), stops=tuple(stops))


def read_results(path: Path, repair: bool = True) -> list[dict]:
    """Rows of results.jsonl; a last line cut short by a kill is dropped from the file (when repair:
    a reader that only reads, sweep-report, leaves it, since a running sweep may be writing it)."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if repair and len(complete) != len(data):
        with open(path, "r+b") as f:
            f.truncate(len(complete))
    rows = []
    for line in complete.decode("utf-8").splitlines():
        if line.strip():
            rows.append(json.loads(line))
    return rows


def finished_cells(plan: Plan, rows: list[dict]) -> set[str]:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["cell"]] = counts.get(row["cell"], 0) + 1
    return {key for key, n in counts.items() if n >= plan.rows_per_cell}


def stream_key(line: int, sample: int) -> int:
    """One random stream per (prompt line, sample), the same in every cell and at any batch size.

    Sample 0 of a prompt draws from the stream `batch` gives that line of the same prompt file, so
    `batch PROMPTS --config <a row's preset> --seed <the sweep's seed>` writes that row's first
    sample again; the other samples take keys no line number reaches.
    """
    return line if sample == 0 else line | (sample << 40)


def run_cell(generator, cell: Cell, plan: Plan, batch_size: int) -> list[dict]:
    rows = [(line, prompt, s) for line, prompt in plan.prompts for s in range(plan.samples)]
    encoded = {line: generator.encode(prompt, cell.config) for line, prompt in plan.prompts}
    ids = [encoded[line] for line, _, _ in rows]
    results = [None] * len(rows)
    texts = RowTexts(generator.tokenizer, len(rows), plan.stops) if plan.stops else None  # ends rows at a stop
    for group in generator.batches(ids, cell.config, batch_size):  # see TextGenerator.generate
        on_token = None if texts is None else (lambda row, token, group=group: texts.on_token(group[row], token))
        done = generator.generate_ids([ids[i] for i in group], cell.config,
                                      stream_keys=[stream_key(rows[i][0], rows[i][2]) for i in group],
                                      on_token=on_token)
        for i, result in zip(group, done):
            results[i] = result
    out = []
    for (line, prompt, sample), result in zip(rows, results):
        generated = result.tokens + ([generator.eos_token_id] if result.finish_reason == "eos" else [])
        ids = encoded[line] + generated
        logprobs = generator.model.token_logprobs(ids, len(encoded[line])) if generated else np.zeros(0)
        response = generator.tokenizer.decode(result.tokens, skip_special_tokens=True).strip()
        response, stopped = cut_text(response, plan.stops) if plan.stops else (response, False)
        out.append({
            "model": cell.model, "cell": cell.key, "params": cell.params, "prompt_line": line, "prompt": prompt,
            "sample": sample, "response": response.rstrip() if stopped else response,
            "finish_reason": "stop" if stopped else result.finish_reason,
            **output_metrics(result.tokens, logprobs.tolist(), result.seconds),
        })
    return out


def append_rows(path: Path, rows: list[dict]) -> None:
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def run_sweep(plan: Plan, batch_size: int, variant: str | None, device: str = "cpu",
              on_stage: Callable[[str], None] = lambda m: None, on_cell: Callable[[int, int], None] = lambda done, total: None) -> list[dict]:
    """Run every unfinished cell; returns the rows of this plan's cells (old and new)."""
    from chatbot_llm.models import load_text_generator

    plan.out.mkdir(parents=True, exist_ok=True)
    results_path = plan.out / RESULTS
    done = finished_cells(plan, read_results(results_path))
    todo = [c for c in plan.cells if c.key not in done]
    finished = len(plan.cells) - len(todo)
    on_cell(finished, len(plan.cells))
    if finished:
        on_stage(f"{finished} of {len(plan.cells)} cells already in {results_path}; skipping them")
    warned: set[str] = set()

    def warn_once(message: str) -> None:
        if message not in warned:
            warned.add(message)
            on_stage(f"warning: {message}")

    for model in plan.models:
        cells = [c for c in todo if c.model == model]
        if not cells:
            continue
        generator = load_text_generator(model, "onnx", variant, on_stage=on_stage, on_warning=warn_once,
                                        device=device)
        for cell in cells:
            append_rows(results_path, run_cell(generator, cell, plan, batch_size))
            finished += 1
            on_cell(finished, len(plan.cells))
    keys = {c.key for c in plan.cells}
    return [row for row in read_results(results_path) if row["cell"] in keys]


def summarize(plan: Plan, rows: list[dict], rank_by: str | None) -> list[dict]:
    """One row per model x combination with every metric averaged, best first by --rank-by."""
    by_cell: dict[str, list[dict]] = {}
    for row in rows:
        by_cell.setdefault(row["cell"], []).append(row)
    summary = []
    for cell in plan.cells:
        outputs = by_cell.get(cell.key, [])
        if not outputs:
            continue
        entry = {"model": cell.model, "cell": cell.key, **cell.params, "outputs": len(outputs)}
        for metric in METRICS:
            entry[metric] = float(np.mean([o[metric] for o in outputs]))
        summary.append(entry)
    if rank_by:
        summary.sort(key=lambda e: -e[rank_by] if METRICS[rank_by] else e[rank_by])
    return summary


def write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def write_summary(plan: Plan, summary: list[dict]) -> Path:
    buffer = io.StringIO()
    columns = ["model", "cell", *plan.grid, "outputs", *METRICS]
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for entry in summary:
        writer.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in entry.items()})
    path = plan.out / SUMMARY
    write_atomic(path, buffer.getvalue())
    return path
