"""The export reaches every worker whole: by its path where the worker's machine shares it, else
as the copy shipped with the job (Ray's object store), written to a local cache. Either way the
worker checks every file against the manifest's sha256 before it loads."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from chatbot_llm.errors import ChatbotError
from chatbot_llm.export.manifest import MANIFEST, check_export


@dataclass(frozen=True)
class ShippedExport:
    name: str  # the model's name, as records show it
    variant: str
    path: str  # the export folder on the driver's machine
    manifest_sha256: str  # names the copy in a worker's cache
    files: Any  # a Ray ObjectRef of {file name: bytes}


def ship_export(ray, name: str, export_dir: Path, variant: str) -> ShippedExport:
    """Put the export's files in the object store; a worker fetches them only if it needs them."""
    export_dir = Path(export_dir).resolve()
    files = {p.name: p.read_bytes() for p in sorted(export_dir.iterdir())
             if p.is_file() and not p.name.startswith(".")}  # not .verified.json, not lock files
    digest = hashlib.sha256(files[MANIFEST]).hexdigest()
    return ShippedExport(name, variant, str(export_dir), digest, ray.put(files))


def cache_dir() -> Path:
    return Path(os.environ.get("CHATBOT_LLM_RAY_CACHE", Path(tempfile.gettempdir()) / "chatbot_llm_ray"))


def worker_folder(shipped: ShippedExport) -> Path:
    """A verified export folder on this worker's machine."""
    path = Path(shipped.path)
    if path.is_dir() and check_export(path, None, shipped.variant).ok:
        return path
    local = cache_dir() / f"{shipped.name}-{shipped.manifest_sha256[:16]}" / shipped.variant
    if not check_export(local, None, shipped.variant).ok:
        import ray

        files = ray.get(shipped.files)
        partial = local.parent / f".{shipped.variant}.partial-{os.getpid()}"
        partial.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (partial / name).write_bytes(data)
        shutil.rmtree(local, ignore_errors=True)
        os.replace(partial, local)  # whole or not at all, should two workers race
    status = check_export(local, None, shipped.variant)
    if not status.ok:
        raise ChatbotError(f"the {shipped.name}/{shipped.variant} export shipped to {socket.gethostname()} is "
                           f"{status.describe()}; re-export it with: chatbot-llm export --force")
    return local


def load_shipped(shipped: ShippedExport, threads: int | None, device: str,
                 on_warning: Callable[[str], None]):
    """The same TextGenerator a local run loads, from the verified folder."""
    from chatbot_llm.models import ModelRef, load_text_generator

    folder = worker_folder(shipped)
    ref = ModelRef(shipped.name, None, folder.parent, fixed_variant=shipped.variant)
    return load_text_generator(ref, "onnx", shipped.variant, on_warning=on_warning, device=device, threads=threads)
