"""--ray, --workers and --threads for batch and sweep, and batch's Ray path (chatbot_llm.scale does the work).

Nothing here imports Ray: a local run never pays for it.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any, Callable

import click

from chatbot_llm.cli.app import err, resolve_generation_config, stage, warn
from chatbot_llm.errors import UsageError


def ray_options(func: Callable) -> Callable:
    @click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
                  help="Run on Ray: alone, a Ray instance started on this machine for the run; auto or "
                       "HOST:PORT or ray://HOST:PORT, a running cluster (put --ray after PROMPT_FILE, or use --ray=auto).")
    @click.option("--workers", type=click.IntRange(min=1),
                  help="With --ray: actors in the pool, each with its own copy of the model "
                       "(default: as many as the cluster's CPUs hold at --threads each).")
    @click.option("--threads", type=click.IntRange(min=1),
                  help="With --ray: onnxruntime threads per actor (default 1; each actor reserves that many CPUs).")
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        if kwargs["ray_address"] is None and (kwargs["workers"] or kwargs["threads"]):
            raise UsageError("--workers and --threads go with --ray")
        return func(*args, **kwargs)

    return wrapper


def batch_on_ray(address: str, workers: int | None, threads: int | None, model: str, backend: str,
                 variant: str | None, device: str, generation_args: dict[str, Any], prompt_file: Path, total: int,
                 out, fmt: str, batch_size: int, truncate: bool, has_records: bool, output_file: Path | None,
                 skip: int, dialogue=None) -> int:
    """batch --ray: resolve and export the model here, then hand the prompts to the cluster."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from chatbot_llm.models import default_variant, ensure_export, model_defaults, resolve_model
    from chatbot_llm.scale.batch import run_batch_on_ray
    from chatbot_llm.scale.cluster import check_reachable, import_ray

    if backend != "onnx":
        raise UsageError("--ray runs the onnx backend; drop --backend torch")
    import_ray()
    check_reachable(address)  # before the model is exported or loaded
    ref = resolve_model(model)
    config = resolve_generation_config(model_defaults(ref), generation_args)
    variant = variant or default_variant(device)
    export_dir = ensure_export(ref, variant, on_stage=stage)  # once, here, not once per worker
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    done = 0
    try:
        with Progress(*columns, console=err, transient=False) as progress:
            task = progress.add_task("prompts", total=total, completed=skip)
            done, summary = run_batch_on_ray(
                address, workers, threads or 1, ref, export_dir, variant, device, config, prompt_file, total, out,
                fmt, batch_size, truncate, has_records, output_file, skip,
                render=dialogue.render if dialogue is not None else None,
                stops=list(dialogue.stops) if dialogue is not None else [],
                progress=lambda n: progress.advance(task, n), on_stage=lambda m: progress.console.print(f"[dim]{m}[/dim]"),
                on_warning=warn)
    except KeyboardInterrupt:
        err.print(f"interrupted: the prompts written so far are in {output_file or 'standard output'}"
                  + (" (continue with --resume)" if output_file else ""))
        sys.exit(130)
    err.print(summary, highlight=False, soft_wrap=True)
    return done
