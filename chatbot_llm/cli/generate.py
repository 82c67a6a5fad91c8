"""chat and batch: talk to a model, or run a prompt file through it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from chatbot_llm.cli.app import cli, err, generation_options, load_model, model_options, split_generation_args
from chatbot_llm.cli.scale import batch_on_ray, ray_options
from chatbot_llm.cli.dialogue import Dialogue, history_options, stop_option, template_option
from chatbot_llm.config import PARAMETERS, GenerationConfig, canonical_name, parse_value
from chatbot_llm.errors import PromptTooLong, UsageError
from chatbot_llm.runtime.textgen import valid_text


# ---------------------------------------------------------------- chat

CHAT_HELP = """Commands:
  /set NAME VALUE   change a generation parameter (e.g. /set temperature 0.8, /set seed none)
  /params           show the parameters in use
  /help             this help
  exit, quit        leave (so do Ctrl-D and Ctrl-C at the prompt)
Each message is a prompt the model continues; there is no memory between turns, unless
--continue carries the conversation's turns into the prompt (through --template).
Ctrl-C while a reply is streaming stops that reply."""


def _bot_label(name: str) -> str:
    return {"dream": "DreamBot", "email": "EmailBot"}.get(name, "Bot")


@cli.command()
@model_options
@click.option("--output-file", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Append each prompt and reply here, in the seed's format.")
@click.option("--continue", "continue_", is_flag=True,
              help="Carry on the last chat conversation in the history: its turns, and this session's, go into "
                   "each prompt through --template.")
@template_option
@stop_option
@history_options
@generation_options
def chat(model: str, backend: str, variant: str | None, device: str, output_file: Path | None, continue_: bool,
         template: str | None, stops: tuple[str, ...], log_db: Path | None, no_log: bool, **kwargs: Any) -> None:
    """Talk to a model: each line you type is a prompt, the reply streams as it is generated."""
    from chatbot_llm.batchio import output_stream

    generation_args = split_generation_args(kwargs)
    dialogue = Dialogue.from_options(template, stops, log_db, no_log, "chat", remember=continue_)
    with output_stream(output_file, append=True, overwrite=False) as (out, _):
        generator, config = load_model(model, backend, variant, generation_args, device)
        if continue_:
            generator.truncate = True  # a long conversation keeps its newest turns
        _chat_loop(generator, config, out if output_file else None, dialogue)


def _chat_loop(generator, config: GenerationConfig, out, dialogue: Dialogue) -> None:
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
            rendered = dialogue.render(prompt)
            completion = generator.generate([rendered], config, stream_keys=[turn], stops=dialogue.stops,
                                            on_text=lambda _row, text: click.echo(text, nl=False))[0]
            completion = dialogue.finish(generator, config, prompt, rendered, completion)
        except KeyboardInterrupt:
            click.echo(" [stopped]")
            continue
        except UsageError as exc:  # a prompt too long, a template that fails: the chat goes on
            click.echo()
            err.print(f"error: {exc}", soft_wrap=True, highlight=False, markup=False)
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
@click.option("--resume", is_flag=True,
              help="Continue a run that was stopped: skip the prompts already in --output-file.")
@click.option("--truncate", is_flag=True,
              help="Cut a prompt longer than the model's context from the left (with a warning) instead of "
                   "stopping at it.")
@template_option
@stop_option
@click.option("--log", "log", is_flag=True, help="Record each exchange in the history (see chatbot-llm logs).")
@click.option("--log-db", type=click.Path(dir_okay=False, path_type=Path),
              help="The SQLite history --log writes to (default: history.db in the project root).")
@generation_options
@ray_options
def batch(prompt_file: Path, model: str, backend: str, variant: str | None, device: str, output_file: Path | None,
          fmt: str, batch_size: int, append: bool, overwrite: bool, resume: bool, truncate: bool,
          template: str | None, stops: tuple[str, ...], log: bool, log_db: Path | None,
          ray_address: str | None, workers: int | None, threads: int | None, **kwargs: Any) -> None:
    """Run every non-empty line of PROMPT_FILE through a model (a .jsonl file: each line's "prompt")."""
    from chatbot_llm.batchio import check_prompt_file, output_stream, resume_point

    if sum((append, overwrite, resume)) > 1:
        raise UsageError("--append, --overwrite and --resume contradict each other; pick one")
    if resume and output_file is None:
        raise UsageError("--resume needs the --output-file of the run to continue")
    generation_args = split_generation_args(kwargs)
    dialogue = Dialogue.from_options(template, stops, log_db, not log, "batch")
    total = check_prompt_file(prompt_file)
    skip, has_header = resume_point(output_file, fmt, prompt_file) if resume else (0, False)
    if skip:
        err.print(f"resuming: {skip} of {total} prompts are already in {output_file}")
    with output_stream(output_file, append or resume, overwrite) as (out, has_records):
        if ray_address is not None:
            if log:
                raise UsageError("--log does not go with --ray yet; log a local run")
            done = batch_on_ray(ray_address, workers, threads, model, backend, variant, device, generation_args,
                                prompt_file, total, out, fmt, batch_size, truncate,
                                has_records if not resume else has_header, output_file, skip, dialogue)
        else:
            generator, config = load_model(model, backend, variant, generation_args, device)
            generator.truncate = truncate
            done = _run_batch(generator, config, prompt_file, total, out, fmt, batch_size,
                              has_records if not resume else has_header, output_file, skip, dialogue)
    if output_file is not None:
        err.print(f"{done} results written to {output_file}")


def _run_batch(generator, config, prompt_file, total, out, fmt, batch_size, has_records, output_file,
               skip: int = 0, dialogue: Dialogue | None = None) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from chatbot_llm.batchio import batch_record, format_record, prompt_windows, write_record

    params = config.to_dict()
    done = 0
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    try:
        with Progress(*columns, console=err, transient=False) as progress:
            task = progress.add_task("prompts", total=total, completed=skip)
            first, windows = prompt_windows(prompt_file, batch_size, skip, wide=generator.groups_by_length(config))
            for chunk in windows:
                numbers = [n for n, _ in chunk]
                try:
                    rendered = [dialogue.render(p) for _, p in chunk] if dialogue else [p for _, p in chunk]
                    completions = generator.generate(rendered, config, stream_keys=numbers, max_batch=batch_size,
                                                     stops=dialogue.stops if dialogue else ())
                except PromptTooLong as exc:
                    kept = f"; the {skip + done} results before it are in {output_file}, continue with --resume" \
                        if output_file else ""
                    raise UsageError(f"line {numbers[exc.row]} of {prompt_file}: {exc}{kept}") from None
                written = []  # (prompt, rendered prompt, completion) for the history
                for ordinal, (number, (_, prompt), text, completion) in enumerate(
                        zip(numbers, chunk, rendered, completions), start=first):
                    if ordinal < skip:
                        continue
                    written.append((valid_text(prompt), text, completion))
                    row = batch_record(generator, params, number, prompt, completion)
                    write_record(out, format_record(fmt, row, header=(fmt == "csv" and not has_records)))
                    has_records = True
                    done += 1
                if dialogue is not None:
                    dialogue.log(generator, config, written)
                progress.advance(task, len(chunk) - max(0, skip - first))
                first += len(chunk)
    except KeyboardInterrupt:
        err.print(f"interrupted: {skip + done} of {total} prompts are in {output_file or 'standard output'}"
                  + (" (continue with --resume)" if output_file else ""))
        sys.exit(130)
    return done
