"""bench: every backend on one checkpoint, side by side."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console

from chatbot_llm.cli.app import cli, device_option, err, stage
from chatbot_llm.errors import UsageError


# ---------------------------------------------------------------- bench

@cli.command()
@click.option("--model", "-m", help="A known name or a checkpoint folder (default: --shape gpt2-124m).")
@click.option("--shape", type=click.Choice(("gpt2-124m", "tiny")),
              help="Benchmark a random-weights GPT-2 of this shape, built once into checkpoints/.")
@click.option("--backends",
              help="Comma-separated: torch, onnx-fp32, onnx-opt, onnx-int8, onnx-int4, onnx-fp16, "
                   "onnx-fp16-nograph (fp16 with CUDA graphs off) (and ct2-int8, ct2-fp32 when ctranslate2 is "
                   "installed). Default: torch,onnx-fp32,onnx-opt,onnx-int8,onnx-int4 on the CPU; "
                   "torch,onnx-fp32,onnx-fp16-nograph,onnx-fp16 on CUDA.")
@click.option("--batch-sizes", default="1,8,32", show_default=True, help="Comma-separated batch sizes.")
@click.option("--prompt-tokens", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--new-tokens", type=click.IntRange(min=2), default=64, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--rounds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Run the list of backends this many times over and report each figure's median over the "
                   "rounds (on a shared host a slow minute then costs one round of every backend, not one "
                   "backend's all).")
@click.option("--threads", type=click.IntRange(min=1),
              help="Threads for every backend alike (default: the cores this process may use).")
@click.option("--cli-path", is_flag=True,
              help="Also time each backend through the code `batch --batch-size 1` runs, with the model's own "
                   "generation defaults (sampling, processors, decoding): the user's path.")
@click.option("--json", "json_file", type=click.Path(dir_okay=False, path_type=Path), help="Write the figures as JSON.")
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False, path_type=Path), help="Write a PNG plot.")
@device_option
def bench(model: str | None, shape: str | None, backends: str | None, batch_sizes: str, prompt_tokens: int,
          new_tokens: int, repeats: int, rounds: int, threads: int | None, cli_path: bool, json_file: Path | None,
          plot_file: Path | None, device: str) -> None:
    """Speed, memory and agreement of every backend on one checkpoint, each in its own process."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from chatbot_llm.batchio import check_output_path
    from chatbot_llm.bench.report import plot, summary_lines, table
    from chatbot_llm.bench.run import DEFAULT_BACKENDS, check_fits, parse_backends, parse_sizes, run_bench
    from chatbot_llm.models import project_root, resolve_model
    from chatbot_llm.runtime.device import resolve_device

    if model and shape:
        raise UsageError("give --model or --shape, not both")
    device = resolve_device(device, stage)
    backends = backends or DEFAULT_BACKENDS[device]
    if device == "cuda" and "torch" in backends.split(","):
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"bench --device cuda compares against PyTorch on the same GPU, but torch "
                             f"{torch.__version__} has no CUDA here; install a CUDA build of torch, or leave "
                             "torch out of --backends")
    names, sizes = parse_backends(backends), parse_sizes(batch_sizes)
    for option, path in (("--json", json_file), ("--plot", plot_file)):
        if path is not None:
            check_output_path(path, option)
    if plot_file is not None:
        from chatbot_llm.bench.report import check_plotting

        check_plotting()
    if not model:
        from chatbot_llm.bench.shapes import shape_checkpoint

        shape = shape or "gpt2-124m"
        if not (project_root() / "checkpoints" / shape / "config.json").is_file():
            stage(f"building a random GPT-2 of shape {shape} (once)")
        model = str(shape_checkpoint(shape, project_root()))
    ref = resolve_model(model)
    check_fits(ref, prompt_tokens, new_tokens)
    with Progress(TextColumn("[bold]bench[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                  TimeElapsedColumn(), console=err) as bar:
        task = bar.add_task("preparing", total=len(names) * rounds)
        started: list[str] = []

        def on_backend(name: str) -> None:
            if started:
                bar.advance(task)
            started.append(name)
            bar.update(task, description=name if rounds == 1 else
                       f"{name} (round {(len(started) - 1) // len(names) + 1} of {rounds})")

        report = run_bench(ref, names, sizes, prompt_tokens, new_tokens, repeats, threads,
                           on_stage=lambda m: bar.update(task, description=m), on_backend=on_backend,
                           device=device, cli_path=cli_path, rounds=rounds)
        bar.update(task, completed=len(names) * rounds, description="done")
    console = Console()
    if not console.is_terminal:  # piped or logged: no terminal width to wrap the wide table into
        console = Console(width=200)
    console.print(table(report))
    for line in summary_lines(report):
        console.print(line)
    if json_file:
        json_file.write_text(json.dumps(report, indent=2) + "\n")
        stage(f"wrote {json_file}")
    if plot_file:
        plot(report, plot_file)
        stage(f"wrote {plot_file}")


