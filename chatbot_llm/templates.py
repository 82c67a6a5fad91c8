"""Chat templates: a list of messages -> one prompt, with Jinja2 as Hugging Face chat templates do.

GPT-2 has no chat format of its own, so the template decides what the model sees. `--template`
takes a file or the name of a preset shipped in chatbot_llm/chat_templates/: `plain` (the default:
the messages' text, one per line, so a single message reaches the model unchanged) and
`question` (the original web app's "Question: {prompt} Bot:"). A template sees `messages`, a list
of {"role": "system" | "user" | "assistant", "content": str}.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Sequence

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from chatbot_llm.errors import UsageError

DEFAULT_TEMPLATE = "plain"
# sandboxed: a template may come from a request body (chat_template), so it must not reach Python
_ENV = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


def templates_dir() -> Path:
    return Path(str(resources.files("chatbot_llm") / "chat_templates"))


def template_names() -> list[str]:
    return sorted(p.stem for p in templates_dir().glob("*.jinja"))


class ChatTemplate:
    """A compiled chat template; render() raises TemplateError (a UsageError) with one clear line."""

    def __init__(self, source: str, name: str = "template"):
        self.name = name
        try:
            self.template = _ENV.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"{name} is not a valid Jinja2 template (line {exc.lineno}: {exc.message})") from None

    def render(self, messages: Sequence[dict]) -> str:
        try:
            return self.template.render(messages=list(messages))
        except jinja2.TemplateError as exc:
            raise TemplateError(f"{self.name} failed to render the messages: {exc}") from None
        except Exception as exc:  # a template can raise anything (a division by zero, a bad index)
            raise TemplateError(f"{self.name} failed to render the messages: {type(exc).__name__}: {exc}") from None

    def render_prompt(self, prompt: str, history: Sequence[dict] = ()) -> str:
        """One user turn after earlier ones."""
        return self.render([*history, {"role": "user", "content": prompt}])


class TemplateError(UsageError):
    pass


def load_template(name_or_path: str | Path | None) -> ChatTemplate:
    """A --template value: a preset's name (plain, question) or a Jinja2 file; None is the default."""
    value = str(name_or_path or DEFAULT_TEMPLATE)
    preset = templates_dir() / f"{value}.jinja"
    path = Path(value).expanduser()
    if not path.is_file() and preset.is_file():
        return ChatTemplate(preset.read_text(encoding="utf-8"), f"template {value!r}")
    try:
        source = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"template not found: {value} (presets: {', '.join(template_names())}; or a Jinja2 file)") from None
    except IsADirectoryError:
        raise UsageError(f"--template {value} is a directory; it needs a Jinja2 file") from None
    except UnicodeDecodeError:
        raise UsageError(f"template {value} is not UTF-8 text") from None
    except OSError as exc:
        raise UsageError(f"cannot read template {value}: {exc.strerror}") from None
    return ChatTemplate(source, f"template {value}")
