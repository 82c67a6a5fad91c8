"""sweep: a grid of generation parameters over models and prompts."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from chatbot_llm.cli.app import cli, device_option, err
from chatbot_llm.cli.scale import ray_options
from chatbot_llm.config import load_toml
from chatbot_llm.models import DEFAULT_MODEL, DEFAULT_VARIANT, VARIANTS
from chatbot_llm.sweep.metrics import METRICS


# ---------------------------------------------------------------- sweep

@cli.command()
@click.option("--models", default=DEFAULT_MODEL, show_default=True,
              help="Comma-separated model names or checkpoint folders.")
@click.option("--prompts", "prompts_file", required=True, type=click.Path(path_type=Path),
              help="A text file, one prompt per line.")
@click.option("--grid", "grid_text", required=True,
              help='Parameter values to combine, e.g. "temperature=0.7,1.0 top_k=0,50 repetition_penalty=1.0,1.2".')
@click.option("--samples", type=click.IntRange(min=1), default=1, show_default=True,
              help="Outputs per prompt and combination (each with its own random stream).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of every sampled output.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), help="Tokens per output (default: each model's own).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="A TOML file or preset name: the base every combination starts from.")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path),
              help="Folder for results.jsonl, summary.csv and report.html; a rerun skips finished cells.")
@click.option("--rank-by", type=click.Choice(list(METRICS)), help="Order the summary best first by this metric.")
@click.option("--variant", type=click.Choice(VARIANTS), help=f"Default: {DEFAULT_VARIANT} on the CPU, fp16 on CUDA.")
@device_option
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=16, show_default=True)
@ray_options
def sweep(models: str, prompts_file: Path, grid_text: str, samples: int, seed: int, max_new_tokens: int | None,
          config_file: Path | None, out: Path, rank_by: str | None, variant: str | None, device: str,
          batch_size: int, ray_address: str | None, workers: int | None, threads: int | None) -> None:
    """Every combination of a grid of generation parameters, on every model and prompt, side by side."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from chatbot_llm.sweep.report import write_report
    from chatbot_llm.sweep.run import plan_sweep, run_sweep, summarize, write_summary

    from chatbot_llm.runtime.device import resolve_device

    resolve_device(device)  # a missing CUDA provider is one line before any work starts
    names = [m.strip() for m in models.split(",") if m.strip()]
    overrides = {"max_new_tokens": max_new_tokens} if max_new_tokens else {}
    plan = plan_sweep(names, prompts_file, grid_text, samples, seed, overrides,
                      load_toml(config_file) if config_file else {}, out)
    with Progress(TextColumn("[bold]sweep[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("cells"),
                  TimeRemainingColumn(), console=err) as bar:
        task = bar.add_task("cells", total=len(plan.cells))
        on_stage = lambda m: bar.console.print(f"[dim]{m}[/dim]")  # noqa: E731
        on_cell = lambda done, total: bar.update(task, completed=done)  # noqa: E731
        if ray_address is None:
            rows = run_sweep(plan, batch_size, variant, device=device, on_stage=on_stage, on_cell=on_cell)
        else:
            from chatbot_llm.scale.sweep import run_sweep_on_ray

            rows, ray_summary = run_sweep_on_ray(plan, batch_size, variant, device, ray_address, workers,
                                                 threads or 1, on_stage=on_stage, on_cell=on_cell)
            err.print(ray_summary, highlight=False, soft_wrap=True)
    summary = summarize(plan, rows, rank_by)
    write_summary(plan, summary)
    report = write_report(plan, summary, rows, rank_by)
    table = Table(title=f"sweep: {len(plan.cells)} cells" + (f", best {rank_by} first" if rank_by else ""))
    for column in ("model", *plan.grid, "tokens", "distinct_2", "repetition_4gram", "perplexity"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for entry in summary[:20]:
        table.add_row(entry["model"], *[str(entry[k]) for k in plan.grid],
                      *[f"{entry[m]:.3g}" for m in ("tokens", "distinct_2", "repetition_4gram", "perplexity")])
    Console().print(table)
    click.echo(f"wrote {out / 'results.jsonl'}, {out / 'summary.csv'}, {report}")


