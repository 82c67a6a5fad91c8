"""Options that chat, batch and serve share for what goes around generation: the chat template,
stop sequences, and the history database."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

import click

from chatbot_llm.templates import DEFAULT_TEMPLATE

template_option = click.option(
    "--template", default=None, metavar="NAME|FILE",
    help=f"A Jinja2 chat template that turns the messages into the prompt: a file, or a preset "
         f"(plain, the default: the text as typed; question: \"Question: {{prompt}} Bot:\").")

stop_option = click.option(
    "--stop", "stops", multiple=True, metavar="TEXT",
    help="End a reply before this text (repeat for several); its finish_reason is then stop. "
         "Backslash escapes work: --stop '\\n'.")


def history_options(func: Callable) -> Callable:
    @click.option("--log-db", type=click.Path(dir_okay=False, path_type=Path),
                  help="The SQLite history to write to (default: history.db in the project root, "
                       "$CHATBOT_LLM_HOME when set).")
    @click.option("--no-log", is_flag=True, help="Do not record the exchanges in the history.")
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return func(*args, **kwargs)

    return wrapper


def unescape_stops(stops: tuple[str, ...]) -> list[str]:
    r"""--stop '\n' means a newline, as a shell user would expect."""
    return [s.encode("latin-1", "backslashescape").decode("unicode_escape") if "\\" in s else s for s in stops]
