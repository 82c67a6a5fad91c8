"""chatbot-llm: the Click command line. It parses and prints; generation lives in runtime/."""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import click
from rich.console import Console
from rich.table import Table

from chatbot_llm import __version__
from chatbot_llm.config import PARAMETERS, GenerationConfig, canonical_name, load_toml, parse_value
from chatbot_llm.errors import ChatbotError, UsageError
from chatbot_llm.models import BACKENDS, DEFAULT_MODEL, DEFAULT_VARIANT, VARIANTS
from chatbot_llm.sweep.metrics import METRICS

err = Console(stderr=True, highlight=False)


def _stage(message: str) -> None:
    err.print(f"[dim]{message}[/dim]")


def _warn(message: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {message}", soft_wrap=True)


# ---------------------------------------------------------------- options shared by commands

def model_options(func: Callable) -> Callable:
    @click.option("--model", "-m", default=DEFAULT_MODEL, show_default=True,
                  help="A known name (dream, email), a GPT-2 checkpoint folder, or an export folder.")
    @click.option("--backend", type=click.Choice(BACKENDS), default="onnx", show_default=True,
                  help="onnx runs the export; torch runs the checkpoint with transformers (the baseline).")
    @click.option("--variant", type=click.Choice(VARIANTS), default=DEFAULT_VARIANT, show_default=True,
                  help="Which export to run: fp32, opt (fused) or int8 (weight-only 8-bit).")
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return func(*args, **kwargs)

    return wrapper


def generation_options(func: Callable) -> Callable:
    """The same generation options on every command that generates; unset ones fall through."""
    options = [
        click.option("--max-new-tokens", type=int, help=PARAMETERS["max_new_tokens"][2]),
        click.option("--max-length", type=int, help=PARAMETERS["max_length"][2]),
        click.option("--temperature", type=float, help=PARAMETERS["temperature"][2]),
        click.option("--top-p", type=float, help=PARAMETERS["top_p"][2]),
        click.option("--top-k", type=int, help=PARAMETERS["top_k"][2]),
        click.option("--repetition-penalty", type=float, help=PARAMETERS["repetition_penalty"][2]),
        click.option("--no-repeat-ngram-size", type=int, help=PARAMETERS["no_repeat_ngram_size"][2]),
        click.option("--do-sample/--greedy", "do_sample", default=None,
                     help="Sample (the seed's default) or take the most likely token."),
        click.option("--seed", type=int, help=PARAMETERS["seed"][2]),
        click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
                     help="A TOML file of generation parameters, or a shipped preset's name (seed, dream, "
                          "email); below the command line, above the model's generation_config.json."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def resolve_generation_config(model_defaults: dict, cli_values: dict[str, Any]) -> GenerationConfig:
    """command line > --config file > generation_config.json > the seed's defaults."""
    config_file = cli_values.pop("config_file", None)
    from_file = load_toml(config_file) if config_file else {}
    from_cli = {k: v for k, v in cli_values.items() if k in PARAMETERS and v is not None}
    return GenerationConfig.resolve(model_defaults, from_file, from_cli)


def _split_generation_args(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Take the generation options out of a command's kwargs."""
    keys = set(PARAMETERS) | {"config_file"}
    return {k: kwargs.pop(k) for k in list(kwargs) if k in keys}


def _load(model: str, backend: str, variant: str, generation_args: dict[str, Any]):
    """Check the model folder and every generation option first, then load (and export if need be)."""
    from chatbot_llm.models import load_text_generator, model_defaults, resolve_model

    ref = resolve_model(model)
    config = resolve_generation_config(model_defaults(ref), generation_args)
    with err.status(f"preparing {ref.name} ({backend}{'' if backend == 'torch' else ', ' + variant})"):
        generator = load_text_generator(ref, backend, variant, on_stage=_stage, on_warning=_warn)
    return generator, config


# ---------------------------------------------------------------- the group

@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="chatbot-llm")
def cli() -> None:
    """Chat with, batch-run and tune small fine-tuned GPT-2 models, fast on a CPU.

    Each checkpoint is exported to ONNX once (on first use, or with `export`); everything after
    that runs on ONNX Runtime with the sampling semantics of transformers' generate().
    """


# ---------------------------------------------------------------- chat

CHAT_HELP = """Commands:
  /set NAME VALUE   change a generation parameter (e.g. /set temperature 0.8, /set seed none)
  /params           show the parameters in use
  /help             this help
  exit, quit        leave (so do Ctrl-D and Ctrl-C at the prompt)
Each message is a prompt the model continues; there is no memory between turns.
Ctrl-C while a reply is streaming stops that reply."""


def _bot_label(name: str) -> str:
    return {"dream": "DreamBot", "email": "EmailBot"}.get(name, "Bot")


@cli.command()
@model_options
@click.option("--output-file", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Append each prompt and reply here, in the seed's format.")
@generation_options
def chat(model: str, backend: str, variant: str, output_file: Path | None, **kwargs: Any) -> None:
    """Talk to a model: each line you type is a prompt, the reply streams as it is generated."""
    from chatbot_llm.batchio import output_stream

    generation_args = _split_generation_args(kwargs)
    with output_stream(output_file, append=True, overwrite=False) as (out, _):
        generator, config = _load(model, backend, variant, generation_args)
        _chat_loop(generator, config, out if output_file else None)


def _chat_loop(generator, config: GenerationConfig, out) -> None:
    from chatbot_llm.batchio import format_record, write_record

    label = _bot_label(generator.model_name)
    err.print(f"Chatting with [bold]{generator.model_name}[/bold] ({generator.backend}"
              f"{'' if generator.variant is None else ', ' + generator.variant}). "
              "Type /help for commands, exit to leave.")
    if sys.stdin.isatty():
        try:
            import readline  # noqa: F401  line editing and history for input()
        except ImportError:  # not on every platform
            pass
    turn = 0
    while True:
        try:
            line = input("You: ")
        except (EOFError, KeyboardInterrupt):
            click.echo()
            break
        prompt = line.strip()
        if not prompt:
            continue
        if prompt.lower() in {"exit", "quit"}:
            break
        if prompt.startswith("/"):
            config = _chat_command(prompt, config)
            continue
        turn += 1
        click.echo(f"{label}: ", nl=False)
        try:
            completion = generator.generate(
                [prompt], config, stream_keys=[turn], on_text=lambda _row, text: click.echo(text, nl=False)
            )[0]
        except KeyboardInterrupt:
            click.echo(" [stopped]")
            continue
        click.echo()
        if out is not None:
            write_record(out, format_record("text", {"prompt": prompt, "response": completion.response}, False))


def _chat_command(line: str, config: GenerationConfig) -> GenerationConfig:
    parts = line.split(maxsplit=2)
    command = parts[0].lower()
    try:
        if command == "/set" and len(parts) == 3:
            name = canonical_name(parts[1])
            config = config.replace(**{name: parse_value(name, parts[2])})
            click.echo(f"{name} = {getattr(config, name)}")
        elif command == "/params":
            _print_params(config)
        elif command == "/help":
            click.echo(CHAT_HELP)
        else:
            click.echo(f"unknown command {line!r}; /help lists the commands")
    except UsageError as exc:
        click.echo(f"error: {exc}")
    return config


def _print_params(config: GenerationConfig) -> None:
    for name, value in config.to_dict().items():
        shown = "unset" if value is None else str(value)
        click.echo(f"  {name:<21} {shown:<7} {PARAMETERS[name][2]}")


# ---------------------------------------------------------------- batch

@cli.command()
@click.argument("prompt_file", type=click.Path(path_type=Path))
@model_options
@click.option("--output-file", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Write results here as they complete (default: standard output).")
@click.option("--format", "fmt", type=click.Choice(("text", "jsonl", "csv")), default="text", show_default=True,
              help="text is the seed's format; a jsonl row holds index, prompt, response, model, "
                   "backend, variant, params, new_tokens and seconds.")
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=8, show_default=True,
              help="Prompts generated together.")
@click.option("--append", is_flag=True, help="Add to an existing output file.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
@generation_options
def batch(prompt_file: Path, model: str, backend: str, variant: str, output_file: Path | None, fmt: str,
          batch_size: int, append: bool, overwrite: bool, **kwargs: Any) -> None:
    """Run every non-empty line of PROMPT_FILE through a model."""
    from chatbot_llm.batchio import check_prompt_file, output_stream

    if append and overwrite:
        raise UsageError("--append and --overwrite contradict each other; pick one")
    generation_args = _split_generation_args(kwargs)
    total = check_prompt_file(prompt_file)
    with output_stream(output_file, append, overwrite) as (out, has_records):
        generator, config = _load(model, backend, variant, generation_args)
        done = _run_batch(generator, config, prompt_file, total, out, fmt, batch_size, has_records, output_file)
    if output_file is not None:
        err.print(f"{done} results written to {output_file}")


def _run_batch(generator, config, prompt_file, total, out, fmt, batch_size, has_records, output_file) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from chatbot_llm.batchio import format_record, read_prompts, write_record

    params = config.to_dict()
    done = 0
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    try:
        with Progress(*columns, console=err, transient=False) as progress:
            task = progress.add_task("prompts", total=total)
            for chunk in _chunks(read_prompts(prompt_file), batch_size):
                numbers = [n for n, _ in chunk]
                completions = generator.generate([p for _, p in chunk], config, stream_keys=numbers)
                for number, completion in zip(numbers, completions):
                    row = {
                        "index": number,
                        "prompt": completion.prompt,
                        "response": completion.response,
                        "model": generator.model_name,
                        "backend": generator.backend,
                        "variant": generator.variant,
                        "params": params,
                        "new_tokens": len(completion.tokens),
                        "prompt_tokens": completion.prompt_tokens,
                        "finish_reason": completion.finish_reason,
                        "seconds": round(completion.seconds, 4),
                    }
                    write_record(out, format_record(fmt, row, header=(fmt == "csv" and not has_records)))
                    has_records = True
                    done += 1
                progress.advance(task, len(chunk))
    except KeyboardInterrupt:
        err.print(f"interrupted: {done} of {total} prompts written to {output_file or 'standard output'}")
        sys.exit(130)
    return done


def _chunks(items, size: int):
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# ---------------------------------------------------------------- export and models

@cli.command()
@click.argument("model")
@click.option("--variant", type=click.Choice(VARIANTS + ("all",)), default=DEFAULT_VARIANT, show_default=True)
@click.option("--force", is_flag=True, help="Export again even when the export is up to date.")
def export(model: str, variant: str, force: bool) -> None:
    """Export MODEL (a known name or a checkpoint folder) to ONNX, once."""
    from chatbot_llm.models import ensure_export, resolve_model

    ref = resolve_model(model)
    for name in VARIANTS if variant == "all" else (variant,):
        status = ref.status(name)
        if status.ok and not force:
            click.echo(f"{ref.export_dir(name)}: up to date (use --force to export again)")
            continue
        started = time.perf_counter()
        with err.status(f"exporting {ref.name} ({name})") as spinner:
            folder = ensure_export(ref, name, on_stage=lambda s, name=name: spinner.update(f"{ref.name} ({name}): {s}"),
                                   force=force)
        parity = json.loads((folder / "manifest.json").read_text())["parity"]
        size = (folder / "model.onnx").stat().st_size / 1e6
        click.echo(
            f"{folder}: exported in {time.perf_counter() - started:.1f}s, {size:.1f} MB; "
            f"max |delta logits| vs PyTorch {parity['max_abs_logits_delta']:.2e}, "
            f"greedy agreement {parity['greedy_token_agreement']:.0%}"
        )


@cli.command(name="models")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def models_command(as_json: bool) -> None:
    """Known models, their folders, and the export status of each variant."""
    from chatbot_llm.export.manifest import ExportStatus, check_export, read_manifest
    from chatbot_llm.models import KNOWN_MODELS, onnx_cache_dir, project_root, resolve_model

    rows = []
    for name, folder in KNOWN_MODELS.items():
        path = project_root() / "models" / folder
        try:
            ref = resolve_model(name)
            statuses = {v: ref.status(v) for v in VARIANTS}
        except UsageError:
            statuses = {v: ExportStatus("no checkpoint") for v in VARIANTS}
        rows.append(({"name": name, "folder": str(path)}, statuses))
    cache = onnx_cache_dir()
    for folder in sorted(cache.iterdir()) if cache.is_dir() else []:
        if folder.name in KNOWN_MODELS or not folder.is_dir() or folder.name.startswith("."):
            continue
        source = None
        for v in VARIANTS:
            try:
                source = source or read_manifest(folder / v)["source"]["path"]
            except (UsageError, KeyError, TypeError):
                pass
        statuses = {v: check_export(folder / v, Path(source) if source else None, v) for v in VARIANTS}
        rows.append(({"name": folder.name, "folder": source or "?"}, statuses))
    if as_json:
        click.echo(json.dumps([{**row, **{v: s.describe() for v, s in st.items()}} for row, st in rows], indent=2))
        return
    colours = {"ok": "green", "stale": "yellow", "corrupt": "red"}
    table = Table(title=f"models (exports in {_short(cache)})", caption="chatbot-llm models --json gives the reasons")
    for column in ("name", "folder") + VARIANTS:
        table.add_column(column, overflow="fold")
    for row, statuses in rows:
        cells = [f"[{colours.get(s.state, 'dim')}]{s.state}[/]" for s in statuses.values()]
        table.add_row(row["name"], _short(Path(row["folder"])), *cells)
    Console().print(table)


def _short(path: Path) -> str:
    """A path relative to the project root when it is inside it."""
    from chatbot_llm.models import project_root

    try:
        return str(path.relative_to(project_root()))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------- bench

@cli.command()
@click.option("--model", "-m", help="A known name or a checkpoint folder (default: --shape gpt2-124m).")
@click.option("--shape", type=click.Choice(("gpt2-124m", "tiny")),
              help="Benchmark a random-weights GPT-2 of this shape, built once into checkpoints/.")
@click.option("--backends", default="torch,onnx-fp32,onnx-opt,onnx-int8", show_default=True,
              help="Comma-separated: torch, onnx-fp32, onnx-opt, onnx-int8 (and ct2-int8, ct2-fp32 when "
                   "ctranslate2 is installed).")
@click.option("--batch-sizes", default="1,8,32", show_default=True, help="Comma-separated batch sizes.")
@click.option("--prompt-tokens", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--new-tokens", type=click.IntRange(min=2), default=64, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), help="Threads per backend (default: each one's own).")
@click.option("--json", "json_file", type=click.Path(dir_okay=False, path_type=Path), help="Write the figures as JSON.")
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False, path_type=Path), help="Write a PNG plot.")
def bench(model: str | None, shape: str | None, backends: str, batch_sizes: str, prompt_tokens: int,
          new_tokens: int, repeats: int, threads: int | None, json_file: Path | None, plot_file: Path | None) -> None:
    """Speed, memory and agreement of every backend on one checkpoint, each in its own process."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from chatbot_llm.batchio import check_output_path
    from chatbot_llm.bench.report import plot, summary_lines, table
    from chatbot_llm.bench.run import check_fits, parse_backends, parse_sizes, run_bench
    from chatbot_llm.models import project_root, resolve_model

    if model and shape:
        raise UsageError("give --model or --shape, not both")
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
            _stage(f"building a random GPT-2 of shape {shape} (once)")
        model = str(shape_checkpoint(shape, project_root()))
    ref = resolve_model(model)
    check_fits(ref, prompt_tokens, new_tokens)
    with Progress(TextColumn("[bold]bench[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                  TimeElapsedColumn(), console=err) as bar:
        task = bar.add_task("preparing", total=len(names))
        started: list[str] = []

        def on_backend(name: str) -> None:
            if started:
                bar.advance(task)
            started.append(name)
            bar.update(task, description=name)

        report = run_bench(ref, names, sizes, prompt_tokens, new_tokens, repeats, threads,
                           on_stage=lambda m: bar.update(task, description=m), on_backend=on_backend)
        bar.update(task, completed=len(names), description="done")
    console = Console()
    console.print(table(report))
    for line in summary_lines(report):
        console.print(line)
    if json_file:
        json_file.write_text(json.dumps(report, indent=2) + "\n")
        _stage(f"wrote {json_file}")
    if plot_file:
        plot(report, plot_file)
        _stage(f"wrote {plot_file}")


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
@click.option("--variant", type=click.Choice(VARIANTS), default=DEFAULT_VARIANT, show_default=True)
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=16, show_default=True)
def sweep(models: str, prompts_file: Path, grid_text: str, samples: int, seed: int, max_new_tokens: int | None,
          config_file: Path | None, out: Path, rank_by: str | None, variant: str, batch_size: int) -> None:
    """Every combination of a grid of generation parameters, on every model and prompt, side by side."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from chatbot_llm.sweep.report import write_report
    from chatbot_llm.sweep.run import plan_sweep, run_sweep, summarize, write_summary

    names = [m.strip() for m in models.split(",") if m.strip()]
    overrides = {"max_new_tokens": max_new_tokens} if max_new_tokens else {}
    plan = plan_sweep(names, prompts_file, grid_text, samples, seed, overrides,
                      load_toml(config_file) if config_file else {}, out)
    with Progress(TextColumn("[bold]sweep[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("cells"),
                  TimeRemainingColumn(), console=err) as bar:
        task = bar.add_task("cells", total=len(plan.cells))
        rows = run_sweep(plan, batch_size, variant, on_stage=lambda m: bar.console.print(f"[dim]{m}[/dim]"),
                         on_cell=lambda done, total: bar.update(task, completed=done))
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


# ---------------------------------------------------------------- train

@cli.command()
@click.argument("corpus", type=click.Path(path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The model folder to write (a Hugging Face GPT-2 checkpoint).")
@click.option("--size", type=click.Choice(("tiny", "small", "base")), default="small", show_default=True,
              help="Shape of a new model: tiny (tests), small (16M, what ships), base (GPT-2 124M).")
@click.option("--from", "init_from", type=click.Path(file_okay=False, path_type=Path),
              help="Fine-tune this GPT-2 checkpoint on the corpus instead of starting from scratch.")
@click.option("--epochs", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True)
@click.option("--max-steps", type=click.IntRange(min=1), help="Optimizer steps (overrides --epochs).")
@click.option("--max-minutes", type=click.FloatRange(min=0, min_open=True),
              help="Stop this session after N minutes, saving a checkpoint; continue with --resume.")
@click.option("--resume", is_flag=True, help="Continue the training saved in --out.")
@click.option("--force", is_flag=True, help="Replace the model in --out.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for init, split and data order.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Blocks per optimizer step.")
@click.option("--micro-batch", type=click.IntRange(min=1), default=4, show_default=True,
              help="Blocks per forward pass; --batch-size is reached by gradient accumulation.")
@click.option("--block-size", type=click.IntRange(min=2), help="Tokens per block (default: the context).")
@click.option("--lr", "learning_rate", type=click.FloatRange(min=0, min_open=True),
              help="Peak learning rate (default by size: tiny 2e-3, small 1e-3, base 6e-4).")
@click.option("--save-dtype", type=click.Choice(("float16", "float32")), default="float16", show_default=True,
              help="Dtype of the saved weights (float16 halves the folder; exports load them as fp32).")
@click.option("--bf16/--no-bf16", default=None, help="bf16 autocast (default: when the CPU supports it).")
def train(corpus: Path, out: Path, **kwargs: Any) -> None:
    """Train a GPT-2 on CORPUS (a txt file of records separated by blank lines), writing --out."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from chatbot_llm.train.card import write_card
    from chatbot_llm.train.run import train as run_training

    if kwargs["init_from"] is not None:
        kwargs["size"] = None
    # The bar starts with the first report, so an input refused up front prints only its error line.
    bar = Progress(TextColumn("[bold]train[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                   TimeRemainingColumn(), console=err)
    task = bar.add_task("train", total=None, info="", start=False)

    def on_stage(message: str) -> None:
        bar.start()
        bar.console.print(f"[dim]{message}[/dim]")

    def on_progress(step, total, loss, rate):
        bar.start()
        info = " ".join(filter(None, (f"loss {loss:.3f}" if loss is not None else "",
                                      f"{rate:,.0f} tok/s" if rate else "")))
        bar.start_task(task)
        bar.update(task, completed=step, total=total, info=info)
        if not err.is_terminal and step and (step % 10 == 0 or step == total):
            bar.console.print(f"step {step}/{total} {info}")

    try:
        results = run_training(corpus, out, on_stage=on_stage, on_progress=on_progress, command=_command_line(),
                               **kwargs)
        on_stage("writing the model card")
        write_card(out)
    finally:
        bar.stop()
    state = "finished" if results["complete"] else f"paused at step {results['steps']} (continue with --resume)"
    click.echo(f"{out}: {state}; held-out perplexity {results['heldout_perplexity']:.2f} "
               f"over {results['heldout_tokens']:,} tokens, {results['tokens_seen']:,} tokens seen")


def _command_line() -> str:
    import shlex

    return "chatbot-llm " + " ".join(shlex.quote(a) for a in sys.argv[1:])


# ---------------------------------------------------------------- entry point

def main(argv: list[str] | None = None) -> None:
    """Run the CLI; every error is one line on stderr and an exit status, never a traceback."""
    try:
        code = cli.main(args=argv, prog_name="chatbot-llm", standalone_mode=False)
    except click.exceptions.Abort:
        code = 130
    except click.ClickException as exc:
        hint = ""
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            hint = f" (see '{exc.ctx.command_path} --help')"
        click.echo(f"chatbot-llm: error: {exc.format_message()}{hint}", err=True)
        code = exc.exit_code
    except ChatbotError as exc:
        click.echo(f"chatbot-llm: error: {exc}", err=True)
        code = exc.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        code = 130
    except Exception as exc:  # a bug: one line, the traceback on request
        if os.environ.get("CHATBOT_LLM_DEBUG"):
            raise
        click.echo(f"chatbot-llm: internal error: {type(exc).__name__}: {exc} "
                   "(set CHATBOT_LLM_DEBUG=1 for the traceback)", err=True)
        code = 1
    sys.exit(code if isinstance(code, int) else 0)
