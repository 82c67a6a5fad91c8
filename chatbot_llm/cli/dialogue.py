"""Options that chat, batch and serve share for what goes around generation: the chat template,
stop sequences, and the history database."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import click

from chatbot_llm.cli.app import err
from chatbot_llm.errors import UsageError

if TYPE_CHECKING:
    from chatbot_llm.history import History
    from chatbot_llm.templates import ChatTemplate

template_option = click.option(
    "--template", default=None, metavar="NAME|FILE",
    help="A Jinja2 chat template that turns the messages into the prompt: a file, or a preset "
         "(plain, the default: the text as typed; question: \"Question: {prompt} Bot:\").")

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


@dataclass
class Dialogue:
    """What chat and batch do around generate(): render the prompt through the template, cut the
    reply at a stop string, remember the turns (chat --continue), and log each exchange."""

    template: ChatTemplate | None  # None: the prompt goes to the model as typed
    template_name: str | None
    stops: list[str]
    history: History | None
    source: str  # chat or batch
    conversation: str
    remember: bool = False
    turns: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def from_options(cls, template: str | None, stops: tuple[str, ...], log_db: Path | None, no_log: bool,
                     source: str, remember: bool = False) -> "Dialogue":
        from chatbot_llm.history import new_conversation_id, open_history, turns_as_messages
        from chatbot_llm.templates import DEFAULT_TEMPLATE, load_template

        if remember and no_log:
            raise UsageError("--continue reads the last conversation from the history; drop --no-log")
        chat_template = load_template(template) if template or remember else None
        history = open_history(log_db, no_log)
        dialogue = cls(chat_template, (template or DEFAULT_TEMPLATE) if chat_template else None,
                       unescape_stops(stops), history, source, new_conversation_id(), remember)
        if remember:
            last = history.last_conversation(source)
            if last is None:
                err.print(f"[dim]no earlier {source} conversation in {history.path}: starting a new one[/dim]")
            else:
                dialogue.conversation = last
                dialogue.turns = turns_as_messages(history.conversation(last))
                err.print(f"[dim]continuing conversation {last} ({len(dialogue.turns) // 2} turns)[/dim]")
        return dialogue

    def render(self, prompt: str) -> str:
        if self.template is None:
            return prompt
        return self.template.render_prompt(prompt, self.turns if self.remember else [])

    def finish(self, generator, config, prompt: str, rendered: str, completion):
        """The completion (already cut at a stop string by TextGenerator.generate) remembered and logged."""
        if self.remember:
            self.turns += [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion.response}]
        self.log(generator, config, [(prompt, rendered, completion)])
        return completion

    def log(self, generator, config, exchanges: list[tuple[str, str, object]]) -> None:
        from chatbot_llm.history import Exchange

        if self.history is None:
            return
        params = {**config.to_dict(), "stop": self.stops, "template": self.template_name}
        self.history.add(*[
            Exchange(conversation=self.conversation, source=self.source, model=generator.model_name,
                     variant=generator.variant, prompt=prompt, rendered_prompt=rendered, response=c.response,
                     params=params, prompt_tokens=c.prompt_tokens, completion_tokens=len(c.tokens),
                     finish_reason=c.finish_reason, seconds=round(c.seconds, 4))
            for prompt, rendered, c in exchanges])


