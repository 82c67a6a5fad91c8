"""One row of a sweep as a setting: command-line options, a preset TOML, or a checkpoint's defaults.

Each form sets every generation parameter of the row's full configuration (the seed aside, which
belongs to a run, not a setting), so whatever sits below it in the precedence (the model's
generation_config.json, the seed's defaults) cannot change what the row ran with.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

from chatbot_llm.config import PARAMETERS, GenerationConfig, read_generation_config_json
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


def pick(models: list[str], summary: list[dict], model: str | None, rank: int, rank_by: str | None) -> dict:
    """The summary row of --model M --rank N, or a UsageError that says what there is."""
    if model is None:
        if len(models) > 1:
            raise UsageError(f"this sweep ran {', '.join(models)}; pick one with --model")
        model = models[0]
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


def preset_target(name: str | None, output_file: Path | None, overwrite: bool) -> Path:
    """Where --name NAME or --output-file FILE goes; a UsageError before any work when it cannot."""
    from chatbot_llm.config import presets_dir, user_presets_dir

    if name is not None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
            raise UsageError(f"--name {name!r}: use letters, digits, '-' and '_' (it becomes NAME.toml)")
        if (presets_dir() / f"{name}.toml").is_file():
            raise UsageError(f"--name {name} is a shipped preset; choose another name")
        target = user_presets_dir() / f"{name}.toml"
    else:
        target = output_file
        if target.is_dir():
            raise UsageError(f"--output-file {target} is a directory")
        if not target.parent.is_dir():
            raise UsageError(f"cannot write --output-file {target}: its folder does not exist")
    if target.exists() and not overwrite:
        raise UsageError(f"{target} already exists; add --overwrite to replace it")
    return target


def write_preset(target: Path, config: GenerationConfig, plan, entry: dict, rank: int, rank_by: str | None) -> None:
    """The preset TOML, with comments that say where it came from and how to get its outputs again."""
    from chatbot_llm.sweep.run import REPORT, write_atomic

    comments = [f"From the sweep in {plan.out}: {entry['model']}, rank {rank}"
                + (f" by {rank_by}" if rank_by else "") + f" (combination {entry['cell']}).",
                f"Its outputs are in {Path(plan.out) / REPORT}."]
    if plan.seed is not None and plan.streams >= 2:
        comments.append(f"With --seed {plan.seed}, batch on the sweep's prompt file writes the first sample of "
                        "each prompt again.")
    target.parent.mkdir(parents=True, exist_ok=True)  # the presets folder, on first use
    write_atomic(target, toml_text(config, comments))


def apply_to_checkpoint(model: str, config: GenerationConfig) -> Path:
    """Write the setting into the model's generation_config.json, keeping its other keys; atomically."""
    from chatbot_llm.models import resolve_model
    from chatbot_llm.sweep.run import write_atomic

    ref = resolve_model(model)
    if ref.checkpoint is None:
        raise UsageError(f"{model} is an export folder; --apply needs its checkpoint folder")
    path = ref.checkpoint / "generation_config.json"
    data = read_generation_config_json(path)
    for name in SETTING:
        data.pop(name, None)  # an unset length must not stay behind from before
    data.update(setting(config))
    write_atomic(path, json.dumps(data, indent=2) + "\n")
    return path
