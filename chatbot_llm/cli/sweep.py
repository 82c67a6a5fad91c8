"""sweep: a grid of generation parameters over models and prompts."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from chatbot_llm.cli.app import cli, device_option, err
from chatbot_llm.cli.dialogue import stop_option, unescape_stops
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
@stop_option
@click.option("--variant", type=click.Choice(VARIANTS), help=f"Default: {DEFAULT_VARIANT} on the CPU, fp16 on CUDA.")
@device_option
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=16, show_default=True)
@ray_options
def sweep(models: str, prompts_file: Path, grid_text: str, samples: int, seed: int, max_new_tokens: int | None,
          config_file: Path | None, out: Path, rank_by: str | None, variant: str | None, device: str,
          stops: tuple[str, ...], batch_size: int, ray_address: str | None, workers: int | None,
          threads: int | None) -> None:
    """Every combination of a grid of generation parameters, on every model and prompt, side by side."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from chatbot_llm.sweep.manifest import write_manifest
    from chatbot_llm.sweep.report import write_report
    from chatbot_llm.sweep.run import plan_sweep, run_sweep, summarize, write_summary

    from chatbot_llm.runtime.device import resolve_device

    resolve_device(device)  # a missing CUDA provider is one line before any work starts
    names = [m.strip() for m in models.split(",") if m.strip()]
    overrides = {"max_new_tokens": max_new_tokens} if max_new_tokens else {}
    plan = plan_sweep(names, prompts_file, grid_text, samples, seed, overrides,
                      load_toml(config_file) if config_file else {}, out, tuple(unescape_stops(stops)))
    write_manifest(plan, rank_by, variant, device)
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
    report = write_report(plan, summary, rows, rank_by, variant)
    table = Table(title=f"sweep: {len(plan.cells)} cells" + (f", best {rank_by} first" if rank_by else ""))
    for column in ("model", *plan.grid, "tokens", "distinct_2", "repetition_4gram", "perplexity"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for entry in summary[:20]:
        table.add_row(entry["model"], *[str(entry[k]) for k in plan.grid],
                      *[f"{entry[m]:.3g}" for m in ("tokens", "distinct_2", "repetition_4gram", "perplexity")])
    Console().print(table)
    click.echo(f"wrote {out / 'results.jsonl'}, {out / 'summary.csv'}, {report}")
    click.echo(f"open {report} to choose; keep a row with: chatbot-llm sweep-preset {out} --model M --rank N --name NAME")


# ---------------------------------------------------------------- sweep-report

@cli.command("sweep-report")
@click.argument("folder", type=click.Path(path_type=Path))
def sweep_report(folder: Path) -> None:
    """Redraw FOLDER's report.html and summary.csv from its results.jsonl, without generating anything."""
    from chatbot_llm.sweep.manifest import load_finished
    from chatbot_llm.sweep.report import write_report
    from chatbot_llm.sweep.run import write_summary

    plan, manifest, rows, summary = load_finished(folder)
    write_summary(plan, summary)
    report = write_report(plan, summary, rows, manifest.get("rank_by"), manifest.get("variant"))
    click.echo(f"wrote {folder / 'summary.csv'}, {report} ({len(summary)} of {len(plan.cells)} combinations finished)")


# ---------------------------------------------------------------- sweep-preset

@cli.command("sweep-preset")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--model", "-m", help="Which of the sweep's models (default: its only one).")
@click.option("--rank", type=click.IntRange(min=1), default=1, show_default=True,
              help="The row's number in the # column of report.html (1 is the best by the sweep's --rank-by).")
@click.option("--name", help="Save as a preset by this name, for --config NAME on every command.")
@click.option("--output-file", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Save the preset TOML at this path instead.")
@click.option("--apply", is_flag=True,
              help="Write the setting into the model checkpoint's generation_config.json (its other keys are kept), "
                   "making it the model's default; the next run re-exports the model.")
@click.option("--overwrite", is_flag=True, help="Replace a preset file that exists.")
def sweep_preset(folder: Path, model: str | None, rank: int, name: str | None, output_file: Path | None, apply: bool,
                 overwrite: bool) -> None:
    """Write one row of a sweep's report as a preset TOML, or as the model's default settings."""
    from chatbot_llm.errors import UsageError
    from chatbot_llm.sweep.manifest import load_finished
    from chatbot_llm.sweep.preset import apply_to_checkpoint, pick, preset_target, setting, write_preset

    if sum((name is not None, output_file is not None, apply)) != 1:
        raise UsageError("give one of --name NAME, --output-file FILE or --apply")
    target = None if apply else preset_target(name, output_file, overwrite)
    plan, manifest, _, summary = load_finished(folder)
    entry = pick(plan.models, summary, model, rank, manifest.get("rank_by"))
    config = next(c.config for c in plan.cells if c.key == entry["cell"])
    shown = ", ".join(f"{k}={v}" for k, v in setting(config).items())
    if apply:
        path = apply_to_checkpoint(entry["model"], config)
        click.echo(f"wrote {shown} into {path}; {entry['model']} now runs with them by default")
        return
    write_preset(target, config, plan, entry, rank, manifest.get("rank_by"))
    click.echo(f"wrote {target}: {shown}\nuse it with: chatbot-llm chat --model {entry['model']} "
               f"--config {name if name is not None else target}")
