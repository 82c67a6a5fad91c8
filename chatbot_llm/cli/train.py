"""train: a txt corpus becomes a GPT-2 checkpoint."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from chatbot_llm.cli.app import cli, err


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


