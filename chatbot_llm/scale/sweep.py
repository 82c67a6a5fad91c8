"""sweep --ray: one sweep cell per unit of work, over an actor pool that holds every model of the sweep.

results.jsonl gets each cell's rows in one append, in the order a local run writes them, as the
cells come back in order; a rerun skips the cells already there, as a local rerun does.
"""

from __future__ import annotations

from typing import Callable

from chatbot_llm.scale.cluster import pool_size, ray_cluster
from chatbot_llm.scale.export import ship_export
from chatbot_llm.scale.runner import Timing, run_on_pool
from chatbot_llm.scale.workers import SweepWorker


def run_sweep_on_ray(plan, batch_size: int, variant: str | None, device: str, address: str, workers: int | None,
                     threads: int, on_stage: Callable[[str], None] = lambda m: None,
                     on_cell: Callable[[int, int], None] = lambda done, total: None) -> tuple[list[dict], str]:
    """(the rows of this plan's cells, old and new; the summary line)."""
    from chatbot_llm.models import default_variant, ensure_export, resolve_model
    from chatbot_llm.scale.cluster import check_reachable, import_ray
    from chatbot_llm.sweep.run import RESULTS, append_rows, finished_cells, read_results

    import_ray()
    check_reachable(address)
    plan.out.mkdir(parents=True, exist_ok=True)
    results_path = plan.out / RESULTS
    done = finished_cells(plan, read_results(results_path))
    todo = [n for n, c in enumerate(plan.cells) if c.key not in done]
    finished = len(plan.cells) - len(todo)
    on_cell(finished, len(plan.cells))
    if finished:
        on_stage(f"{finished} of {len(plan.cells)} cells already in {results_path}; skipping them")
    summary = "ray: nothing to do"
    if todo:
        variant = variant or default_variant(device)
        needed = dict.fromkeys(plan.cells[n].model for n in todo)
        refs = {model: resolve_model(model) for model in needed}
        exports = {model: ensure_export(ref, variant, on_stage) for model, ref in refs.items()}
        warned: set[str] = set()
        with ray_cluster(address, on_stage) as ray:
            size = pool_size(ray, workers, threads)
            on_stage(f"{size} workers x {threads} thread(s), {len(todo)} cells")
            timing = Timing(size)
            shipped = {model: ship_export(ray, refs[model].name, exports[model], variant) for model in needed}
            constructor = {"shipped": shipped, "plan": plan, "batch_size": batch_size, "threads": threads,
                           "device": device}
            for _, payload in run_on_pool(ray, [{"unit": n} for n in todo], SweepWorker, constructor, size, threads):
                timing.add(payload)
                for message in payload["warnings"]:
                    if message not in warned:
                        warned.add(message)
                        on_stage(f"warning: {message}")
                append_rows(results_path, payload["rows"])
                finished += 1
                on_cell(finished, len(plan.cells))
            summary = timing.summary(len(todo), "cells")
    keys = {c.key for c in plan.cells}
    return [row for row in read_results(results_path) if row["cell"] in keys], summary
