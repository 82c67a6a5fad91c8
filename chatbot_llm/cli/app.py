"""The Click group, the options every command shares, and the entry point that turns errors into one line."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable

import click
from rich.console import Console

from chatbot_llm import __version__
from chatbot_llm.config import PARAMETERS, GenerationConfig, load_toml
from chatbot_llm.errors import ChatbotError
from chatbot_llm.models import BACKENDS, DEFAULT_MODEL, DEFAULT_VARIANT, DEVICES, VARIANTS

err = Console(stderr=True, highlight=False)


def stage(message: str) -> None:
    err.print(f"[dim]{message}[/dim]")


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {message}", soft_wrap=True)


# ---------------------------------------------------------------- options shared by commands

device_option = click.option(
    "--device", type=click.Choice(DEVICES), default="cpu", show_default=True,
    help="Where onnxruntime runs: cpu, cuda (needs the [gpu] extra and an NVIDIA driver), or auto "
         "(cuda when it is there, else cpu).")


def model_options(func: Callable) -> Callable:
    @click.option("--model", "-m", default=DEFAULT_MODEL, show_default=True,
                  help="A known name (dream, email), a GPT-2 checkpoint folder, or an export folder.")
    @click.option("--backend", type=click.Choice(BACKENDS), default="onnx", show_default=True,
                  help="onnx runs the export; torch runs the checkpoint with transformers (the baseline).")
    @click.option("--variant", type=click.Choice(VARIANTS),
                  help=f"Which export to run: fp32 (Optimum's, the reference), opt (the decoder graph), int8 (8-bit "
                       f"weights and activations), int4 (4-bit weights) or fp16 (for GPUs). "
                       f"Default: {DEFAULT_VARIANT} on the CPU, fp16 on CUDA.")
    @device_option
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


def split_generation_args(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Take the generation options out of a command's kwargs."""
    keys = set(PARAMETERS) | {"config_file"}
    return {k: kwargs.pop(k) for k in list(kwargs) if k in keys}


def load_model(model: str, backend: str, variant: str | None, generation_args: dict[str, Any], device: str = "cpu"):
    """Check the model folder and every generation option first, then load (and export if need be)."""
    from chatbot_llm.models import default_variant, load_text_generator, model_defaults, resolve_model

    ref = resolve_model(model)
    config = resolve_generation_config(model_defaults(ref), generation_args)
    variant = variant or default_variant(device)
    with err.status(f"preparing {ref.name} ({backend}{'' if backend == 'torch' else ', ' + variant})"):
        generator = load_text_generator(ref, backend, variant, on_stage=stage, on_warning=warn, device=device)
    return generator, config


# ---------------------------------------------------------------- the group

@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="chatbot-llm")
def cli() -> None:
    """Chat with, batch-run and tune small fine-tuned GPT-2 models, fast on a CPU.

    Each checkpoint is exported to ONNX once (on first use, or with `export`); everything after
    that runs on ONNX Runtime with the sampling semantics of transformers' generate().
    """


def short_path(path: Path) -> str:
    """A path relative to the project root when it is inside it."""
    from chatbot_llm.models import project_root

    try:
        return str(path.relative_to(project_root()))
    except ValueError:
        return str(path)


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
