"""GenerationConfig: the seed's seven generation parameters plus a random seed, in one place.

Defaults, validation and precedence live here and nowhere else. Precedence, highest first:
command line > ``--config`` TOML file > the model's ``generation_config.json`` > the seed's defaults.

``max_new_tokens`` wins over ``max_length`` when one source sets both. A source that sets only
``max_length`` clears the ``max_new_tokens`` of the sources below it, so ``--max-length 60`` means a
total length of 60 even though the seed's defaults carry ``max_new_tokens = 300``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from chatbot_llm.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# The original tool's GENERATION_CONFIG, edited in its source; now the lowest layer.
SEED_DEFAULTS: dict[str, Any] = {
    "max_new_tokens": 300,
    "max_length": None,
    "temperature": 1.7,
    "top_p": 1.0,
    "top_k": 500,
    "repetition_penalty": 0.9,
    "no_repeat_ngram_size": 0,
    "do_sample": True,
    "seed": None,
}

# name -> (type, may be None, one-line help). Order is the order shown to users.
PARAMETERS: dict[str, tuple[type, bool, str]] = {
    "max_new_tokens": (int, True, "tokens to generate after the prompt (>= 1); wins over max_length"),
    "max_length": (int, True, "prompt + generated tokens (>= 1); used when max_new_tokens is unset"),
    "temperature": (float, False, "> 0; higher flattens the distribution (sampling only)"),
    "top_p": (float, False, "in (0, 1]; keep the smallest set of tokens with this much probability"),
    "top_k": (int, False, ">= 0; keep the k most likely tokens, 0 disables"),
    "repetition_penalty": (float, False, "> 0; above 1 discourages repeats, below 1 encourages them"),
    "no_repeat_ngram_size": (int, False, ">= 0; never repeat an n-gram of this size, 0 disables"),
    "do_sample": (bool, False, "true samples, false takes the most likely token (greedy)"),
    "seed": (int, True, ">= 0; makes sampled output reproducible"),
}

_TRUE = {"true", "1", "yes", "on", "sample"}
_FALSE = {"false", "0", "no", "off", "greedy"}
_NONE = {"none", "null", "unset", ""}


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int | None = 300
    max_length: int | None = None
    temperature: float = 1.7
    top_p: float = 1.0
    top_k: int = 500
    repetition_penalty: float = 0.9
    no_repeat_ngram_size: int = 0
    do_sample: bool = True
    seed: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise UsageError naming the first invalid parameter."""
        for name, (kind, nullable, _) in PARAMETERS.items():
            value = getattr(self, name)
            if value is None and nullable:
                continue
            if kind is bool:
                ok = isinstance(value, bool)
            elif kind is int:
                ok = isinstance(value, int) and not isinstance(value, bool)
            else:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok:
                raise UsageError(f"{_flag(name)} must be {_kind_name(kind)}, got {value!r}")
        if self.max_new_tokens is None and self.max_length is None:
            raise UsageError("set --max-new-tokens or --max-length: both are unset")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise UsageError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if self.max_length is not None and self.max_length < 1:
            raise UsageError(f"--max-length must be >= 1, got {self.max_length}")
        if self.do_sample and not self.temperature > 0:
            raise UsageError(
                f"--temperature must be > 0 when sampling, got {self.temperature} (use --greedy for argmax)"
            )
        if not 0 < self.top_p <= 1:
            raise UsageError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise UsageError(f"--top-k must be >= 0 (0 disables it), got {self.top_k}")
        if not self.repetition_penalty > 0:
            raise UsageError(f"--repetition-penalty must be > 0, got {self.repetition_penalty}")
        if self.no_repeat_ngram_size < 0:
            raise UsageError(f"--no-repeat-ngram-size must be >= 0 (0 disables it), got {self.no_repeat_ngram_size}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise UsageError(f"--seed must be in [0, 2**63), got {self.seed}")

    def new_tokens_for(self, prompt_length: int) -> int:
        """How many tokens to generate after a prompt of this many tokens.

        Like transformers, at least one token is generated even when max_length <= prompt length.
        """
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        return max(1, self.max_length - prompt_length)

    def replace(self, **changes: Any) -> "GenerationConfig":
        return dataclasses.replace(self, **_merge_lengths(self.to_dict(), changes))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def resolve(cls, *layers: Mapping[str, Any] | None) -> "GenerationConfig":
        """Merge layers, lowest precedence first, on top of the seed's defaults."""
        merged = dict(SEED_DEFAULTS)
        for layer in layers:
            if layer:
                merged = _merge_lengths(merged, layer)
        return cls(**merged)


def _merge_lengths(base: Mapping[str, Any], layer: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    if layer.get("max_length") is not None and "max_new_tokens" not in layer:
        merged["max_new_tokens"] = None
    merged.update(layer)
    return merged


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _kind_name(kind: type) -> str:
    return {bool: "true or false", int: "an integer", float: "a finite number"}[kind]


def canonical_name(name: str) -> str:
    """'top-p', '--top-p' and 'top_p' all name top_p; anything else is a UsageError."""
    key = name.strip().lstrip("-").replace("-", "_").lower()
    if key not in PARAMETERS:
        raise UsageError(f"unknown generation parameter {name!r}; known: {', '.join(PARAMETERS)}")
    return key


def parse_value(name: str, text: str) -> Any:
    """Parse a parameter value typed by a user (chat's /set)."""
    kind, nullable, _ = PARAMETERS[name]
    raw = text.strip()
    if nullable and raw.lower() in _NONE:
        return None
    try:
        if kind is bool:
            if raw.lower() in _TRUE:
                return True
            if raw.lower() in _FALSE:
                return False
            raise ValueError
        return kind(raw)
    except ValueError:
        raise UsageError(f"{name} must be {_kind_name(kind)}, got {text!r}") from None


def coerce_value(name: str, value: Any, source: str) -> Any:
    """Check the type of a value read from a TOML or JSON file; ints are accepted for floats."""
    kind, nullable, _ = PARAMETERS[name]
    if value is None and nullable:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is bool and isinstance(value, bool):
        return value
    if kind is not bool and isinstance(value, kind) and not isinstance(value, bool):
        return value
    raise UsageError(f"{source}: {name} must be {_kind_name(kind)}, got {value!r}")


def presets_dir() -> Path:
    return Path(str(resources.files("chatbot_llm") / "presets"))


def user_presets_dir() -> Path:
    """Presets of your own (`sweep-preset --name`): presets/ beside models/ in the project root."""
    from chatbot_llm.models import project_root  # models imports this module

    return project_root() / "presets"


def preset_names() -> list[str]:
    return sorted({p.stem for folder in (presets_dir(), user_presets_dir()) for p in folder.glob("*.toml")})


def config_path(name: str | Path) -> Path:
    """A --config value: a TOML file, or the name of a preset shipped with the package (seed, dream, ...)
    or written by `sweep-preset --name`."""
    path = Path(name)
    if not path.exists() and path.suffix == "" and len(path.parts) == 1:
        for folder in (presets_dir(), user_presets_dir()):
            if (folder / f"{name}.toml").is_file():
                return folder / f"{name}.toml"
    return path


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a --config file or preset: a flat TOML table of generation parameters. Unknown keys are errors."""
    path = config_path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"config file not found: {path} (presets: {', '.join(preset_names())})") from None
    except IsADirectoryError:
        raise UsageError(f"config file is a directory: {path}") from None
    except UnicodeDecodeError:
        raise UsageError(f"config file is not UTF-8 text: {path}") from None
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from None
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in PARAMETERS:
            raise UsageError(f"config file {path}: unknown key {key!r}; known: {', '.join(PARAMETERS)}")
        out[name] = coerce_value(name, value, f"config file {path}")
    return out


def read_generation_config_json(path: Path) -> dict[str, Any]:
    """A checkpoint's generation_config.json as a dict, all keys ({} when there is none)."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path} is not valid JSON ({exc}); fix or delete it") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path} is not a JSON object; fix or delete it")
    return data


def load_generation_config_json(path: str | Path) -> dict[str, Any]:
    """The generation parameters a checkpoint's generation_config.json sets (other keys ignored)."""
    path = Path(path)
    data = read_generation_config_json(path)
    return {
        name: coerce_value(name, data[name], str(path))
        for name in PARAMETERS
        if name in data and name != "seed"
    }
