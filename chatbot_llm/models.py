"""Model names -> folders, export status, and loading a model ready to generate.

``dream`` and ``email`` name the shipped checkpoints under ``models/``; anything else is a folder:
a Hugging Face GPT-2 checkpoint (exported on first use into ``onnx_models/``), or an export
folder itself (``onnx_models/dream/opt``, or a copy of one on a machine without torch).

The project root, holding ``models/`` and ``onnx_models/``, is ``$CHATBOT_LLM_HOME`` when set,
else the source checkout this package was installed from, else the current directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from chatbot_llm.config import load_generation_config_json
from chatbot_llm.errors import UsageError
from chatbot_llm.export.manifest import MANIFEST, VARIANTS, ExportStatus, check_export
from chatbot_llm.runtime.device import DEVICES
from chatbot_llm.runtime.onnx_model import eos_and_context, read_model_config

if TYPE_CHECKING:
    from chatbot_llm.runtime.textgen import TextGenerator

KNOWN_MODELS = {"dream": "dream_gpt2", "email": "email_gpt2"}
DEFAULT_MODEL = "dream"
DEFAULT_VARIANT = "opt"  # on the CPU; on CUDA, fp16


def default_variant(device: str) -> str:
    """opt on the CPU, fp16 on CUDA (--device auto: whichever it will run on)."""
    from chatbot_llm.runtime.device import resolve_device

    return "fp16" if device != "cpu" and resolve_device(device) == "cuda" else DEFAULT_VARIANT
BACKENDS = ("onnx", "torch")


def project_root() -> Path:
    if os.environ.get("CHATBOT_LLM_HOME"):
        return Path(os.environ["CHATBOT_LLM_HOME"]).expanduser()
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "setup.cfg").is_file() and (checkout / "chatbot_llm").is_dir():
        return checkout
    return Path.cwd()


def onnx_cache_dir() -> Path:
    return project_root() / "onnx_models"


@dataclass(frozen=True)
class ModelRef:
    """A model as the user named it: its checkpoint folder and where its exports live."""

    name: str
    checkpoint: Path | None  # None for a bare export folder
    export_root: Path  # holds one folder per variant; for a bare export folder, its parent
    fixed_variant: str | None = None  # set for a bare export folder

    def export_dir(self, variant: str) -> Path:
        if self.fixed_variant is not None:
            if variant != self.fixed_variant:
                raise UsageError(
                    f"{self.export_root / self.fixed_variant} is a {self.fixed_variant} export; "
                    f"drop --variant {variant} or point --model at a checkpoint folder"
                )
        return self.export_root / variant

    def status(self, variant: str) -> ExportStatus:
        return check_export(self.export_dir(variant), self.checkpoint, variant)


def resolve_model(model: str) -> ModelRef:
    """A known name or a folder path -> ModelRef; a UsageError when it names nothing usable."""
    if model in KNOWN_MODELS:
        folder = project_root() / "models" / KNOWN_MODELS[model]
        if not folder.is_dir():
            raise UsageError(
                f"model {model!r} is not here: no folder {folder}; "
                "pass a GPT-2 checkpoint folder with --model PATH"
            )
        return ModelRef(model, folder, onnx_cache_dir() / model)
    folder = Path(model).expanduser()
    if not folder.exists():
        known = ", ".join(KNOWN_MODELS)
        raise UsageError(f"model folder not found: {model} (known names: {known}; or a checkpoint folder)")
    if not folder.is_dir():
        raise UsageError(f"--model {model} is a file; it needs a GPT-2 checkpoint folder")
    folder = folder.resolve()
    if (folder / MANIFEST).is_file():  # an export folder used directly
        variant = _manifest_variant(folder)
        return ModelRef(folder.name, None, folder.parent, fixed_variant=variant)
    read_model_config(folder)  # fail now if this is not a GPT-2 checkpoint
    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:8]
    return ModelRef(folder.name, folder, onnx_cache_dir() / f"{folder.name}-{digest}")


def _manifest_variant(folder: Path) -> str:
    try:
        variant = json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("variant")
    except (ValueError, OSError, AttributeError):
        variant = None
    if variant not in VARIANTS:
        raise UsageError(f"{folder / MANIFEST} is unreadable; re-export the model with --force")
    # the folder's own name may differ from the variant; the ref addresses it through its parent
    if folder.name != variant:
        raise UsageError(f"{folder} holds a {variant} export but is not named {variant!r}; rename it")
    return variant


def ensure_export(ref: ModelRef, variant: str, on_stage: Callable[[str], None], force: bool = False) -> Path:
    """The export folder of this variant, exporting first when missing, stale or corrupt."""
    export_dir = ref.export_dir(variant)
    status = ref.status(variant)
    if status.ok and not force:
        return export_dir
    if ref.checkpoint is None:
        raise UsageError(
            f"{export_dir} is {status.describe()}; re-export it from its checkpoint with: "
            f"chatbot-llm export CHECKPOINT_FOLDER --variant {variant} --force"
        )
    from chatbot_llm.export.pipeline import export_checkpoint

    with export_lock(ref.export_root, variant, on_stage):
        status = ref.status(variant)  # another process may have exported it while this one waited
        if status.ok and not force:
            return export_dir
        if status.state != "missing" and not force:
            on_stage(f"re-exporting {ref.name}/{variant}: export is {status.describe()}")
        export_checkpoint(ref.checkpoint, export_dir, variant, name=ref.name, on_stage=on_stage)
    return export_dir


@contextlib.contextmanager
def export_lock(export_root: Path, variant: str, on_stage: Callable[[str], None]):
    """One exporter per model and variant at a time; a second process waits, then reuses the export.

    An flock is released by the kernel when its holder dies, so a killed export never blocks the next.
    """
    import fcntl

    export_root.mkdir(parents=True, exist_ok=True)
    with open(export_root / f".{variant}.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            on_stage(f"waiting for another process exporting {export_root.name}/{variant}")
            fcntl.flock(lock, fcntl.LOCK_EX)
        for leftover in export_root.glob(f".{variant}.partial-*"):  # from an export that was killed
            shutil.rmtree(leftover, ignore_errors=True)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def model_defaults(ref: ModelRef) -> dict:
    """The generation parameters in the model's generation_config.json (a cheap read, no loading)."""
    folder = ref.checkpoint if ref.checkpoint is not None else ref.export_root / ref.fixed_variant
    return load_generation_config_json(folder / "generation_config.json")


def load_text_generator(
    model: str | ModelRef,
    backend: str = "onnx",
    variant: str | None = None,
    on_stage: Callable[[str], None] = lambda s: None,
    on_warning: Callable[[str], None] | None = None,
    device: str = "cpu",
    threads: int | None = None,
    spinning: bool = True,
) -> "TextGenerator":
    """A model ready to generate text on the chosen backend and device, exported first if need be.

    variant None: opt on the CPU, fp16 on CUDA. threads: onnxruntime's intra-op threads (default: its own);
    spinning: whether they busy-wait between passes (see OnnxCausalLM).
    """
    from functools import partial

    from chatbot_llm.runtime.generator import generate_ids
    from chatbot_llm.runtime.onnx_model import OnnxCausalLM
    from chatbot_llm.runtime.textgen import TextGenerator
    from chatbot_llm.runtime.tokenizer import load_tokenizer

    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if device not in DEVICES:
        raise UsageError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    variant = variant or default_variant(device)
    if variant not in VARIANTS:
        raise UsageError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    ref = model if isinstance(model, ModelRef) else resolve_model(model)
    if backend == "onnx":
        folder = ensure_export(ref, variant, on_stage)
        on_stage(f"loading {folder}")
        config = read_model_config(folder)
        eos, context = eos_and_context(config)
        model = OnnxCausalLM(folder / "model.onnx", device=device, threads=threads, on_stage=on_stage,
                             spinning=spinning)
        run = partial(generate_ids, model, eos_token_id=eos, context_length=context)
    else:
        if ref.checkpoint is None:
            raise UsageError(f"--backend torch needs a checkpoint folder; {ref.name} is an ONNX export")
        from chatbot_llm.export.pipeline import check_checkpoint
        from chatbot_llm.torch_backend import TorchBaseline

        folder, variant = ref.checkpoint, None
        config = check_checkpoint(folder)
        eos, context = eos_and_context(config)
        on_stage(f"loading {folder} with PyTorch")
        model = None
        run = TorchBaseline(folder, eos, context, device).generate_ids
    extra = {"on_warning": on_warning} if on_warning else {}
    return TextGenerator(
        run,
        load_tokenizer(folder),
        context_length=context,
        eos_token_id=eos,
        model_name=ref.name,
        backend=backend,
        variant=variant,
        model=model,
        **extra,
    )
