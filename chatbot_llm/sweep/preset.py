"""One row of a sweep as a setting: command-line options, a preset TOML, or a checkpoint's defaults.

Each form sets every generation parameter of the row's full configuration (the seed aside, which
belongs to a run, not a setting), so whatever sits below it in the precedence (the model's
generation_config.json, the seed's defaults) cannot change what the row ran with.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from chatbot_llm.config import PARAMETERS, GenerationConfig
from chatbot_llm.errors import UsageError

SETTING = [name for name in PARAMETERS if name != "seed"]


def setting(config: GenerationConfig) -> dict[str, Any]:
    """The row's parameters, seed left out; an unset length is left out too (TOML has no null)."""
    values = config.to_dict()
    return {name: values[name] for name in SETTING if values[name] is not None}


def cli_options(config: GenerationConfig) -> str:
    """chat/batch options that give exactly this configuration, whatever the model's own defaults."""
    parts = []
    for name, value in setting(config).items():
        if name == "do_sample":
            parts.append("--do-sample" if value else "--greedy")
        else:
            parts.append(f"--{name.replace('_', '-')} {value}")
    return " ".join(parts)


def toml_text(config: GenerationConfig, comments: list[str] = ()) -> str:
    lines = [f"# {c}" for c in comments]
    for name, value in setting(config).items():
        shown = "true" if value is True else "false" if value is False else repr(value)
        lines.append(f"{name} = {shown}")
    return "\n".join(lines) + "\n"


def quote(text: str) -> str:
    return shlex.quote(str(text))


def ranked(summary: list[dict], model: str) -> list[dict]:
    """A model's rows in the report's order: rank 1 first."""
    return [e for e in summary if e["model"] == model]


def pick(models: list[str], summary: list[dict], model: str, rank: int, rank_by: str | None) -> dict:
    """The summary row of --model M --rank N, or a UsageError that says what there is."""
    chosen = next((m for m in models if m == model), None)
    if chosen is None:  # a checkpoint folder may be spelled another way
        chosen = next((m for m in models if Path(m).expanduser().resolve() == Path(model).expanduser().resolve()
                       and Path(model).exists()), None)
    if chosen is None:
        raise UsageError(f"--model {model}: this sweep ran {', '.join(models)}; name one of them")
    rows = ranked(summary, chosen)
    if not rows:
        raise UsageError(f"--model {model}: this sweep has no finished results for it yet; rerun the sweep")
    if not 1 <= rank <= len(rows):
        order = f"best {rank_by} first" if rank_by else "in grid order"
        raise UsageError(f"--rank {rank}: {chosen} has ranks 1 to {len(rows)} ({order}); "
                         "see the # column of report.html")
    return rows[rank - 1]


def apply_to_checkpoint(folder: Path, config: GenerationConfig) -> Path:
    """Write the setting into folder/generation_config.json, keeping its other keys; atomically."""
    from chatbot_llm.sweep.run import write_atomic

    path = folder / "generation_config.json"
    data: dict[str, Any] = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise UsageError(f"{path} is not valid JSON ({exc}); fix or delete it") from None
        if not isinstance(data, dict):
            raise UsageError(f"{path} is not a JSON object; fix or delete it")
    for name in SETTING:
        data.pop(name, None)  # an unset length must not stay behind from before
    data.update(setting(config))
    write_atomic(path, json.dumps(data, indent=2) + "\n")
    return path
