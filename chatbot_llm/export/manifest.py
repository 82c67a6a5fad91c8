"""manifest.json of an export: what it was made from, how, and how close it is to PyTorch.

This module needs neither torch nor onnx: the runtime checks every export it loads against its
manifest, so a stale or corrupt export is never used silently.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatbot_llm.errors import UsageError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
# What the export does to the graph. Bumped when a change to the pipeline makes old exports slower or
# bigger than new ones: an export of a checkpoint made by an older recipe counts as stale and is
# redone on first use (an export folder used without its checkpoint keeps working as it is).
# 2: logits_to_keep, int8 embedding shared with lm_head, attention's Gemm quantized, model.onnx.data.
# 3: opt, int8, int4 and fp16 are the decoder graph written from the weights (export/decoder.py);
#    int8 is per-row int8 activations on the integer GEMM.
# 4: opset 18; fp16 is the CUDA provider's layout (no query_seqlens, which onnxruntime-gpu 1.31 lacks;
#    a next_token output) and runs with CUDA graphs (runtime/static_kv.py).
# 5: int8 quantizes its activations with one blocked QuantizeLinear per MatMul (opset 21) instead of
#    Div, Add and Cast: 3.6% more tokens/s at batch 32 on GPT-2-124M.
RECIPE = 5
MODEL_FILE = "model.onnx"
VARIANTS = ("fp32", "opt", "int8", "int4", "fp16")  # what export_checkpoint can make; see export/pipeline.py
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
# Everything in a checkpoint folder that changes the exported graph or its tokenizer and defaults.
CHECKPOINT_FILES = ("config.json", "generation_config.json", "tokenizer.json", "vocab.json", "merges.txt")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_files(folder: Path) -> list[Path]:
    files = [folder / n for n in CHECKPOINT_FILES + WEIGHT_FILES if (folder / n).is_file()]
    files += sorted(folder.glob("model-*-of-*.safetensors"))
    return sorted(set(files))


def fingerprint(folder: Path, known: dict[str, Any] | None = None) -> dict[str, Any]:
    """sha256 of each checkpoint file and of them all together.

    A file whose size and mtime match ``known`` (an earlier fingerprint) keeps its recorded hash,
    so checking an up-to-date export costs a few stat calls, not a read of the weights.
    """
    known_files = (known or {}).get("files", {})
    files: dict[str, dict[str, Any]] = {}
    for path in checkpoint_files(Path(folder)):
        stat = path.stat()
        entry = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        old = known_files.get(path.name)
        if old and old.get("size") == entry["size"] and old.get("mtime_ns") == entry["mtime_ns"]:
            entry["sha256"] = old["sha256"]
        else:
            entry["sha256"] = sha256_file(path)
        files[path.name] = entry
    combined = hashlib.sha256()
    for name in sorted(files):
        combined.update(f"{name}\0{files[name]['sha256']}\n".encode())
    return {"sha256": combined.hexdigest(), "files": files}


VERIFIED = ".verified.json"


def file_matches(path: Path, expected: str | None) -> bool:
    """A file's sha256 against the manifest's, read in full only when the file changed on disk.

    A hash once verified is remembered with the file's size, mtime and inode (in .verified.json,
    per file name), so an unchanged export starts with a few stat calls; any rewrite of the file
    changes its mtime and gets it hashed again.
    """
    if not expected:
        return False
    stat = path.stat()
    key = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino, "sha256": expected}
    stamp = path.parent / VERIFIED
    try:
        stamps = json.loads(stamp.read_text())
        stamps = stamps if isinstance(stamps, dict) else {}
    except (OSError, ValueError):
        stamps = {}
    if stamps.get(path.name) == key:
        return True
    if sha256_file(path) != expected:
        return False
    try:
        stamp.write_text(json.dumps({**stamps, path.name: key}))
    except OSError:  # a read-only export folder is verified at every load instead
        pass
    return True


def external_data_files(model_path: Path) -> list[str]:
    """The files a model.onnx keeps its weights in besides itself (ONNX external data), by name."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    names = {
        entry.value
        for tensor in graph.initializer
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    return sorted(names)


def model_files_entry(model_path: Path) -> dict[str, Any]:
    """The manifest's "onnx" entry: model.onnx, and its external data files, with sizes and hashes."""
    entry: dict[str, Any] = {"file": model_path.name, "size": model_path.stat().st_size,
                             "sha256": sha256_file(model_path)}
    data = {name: {"size": (model_path.parent / name).stat().st_size, "sha256": sha256_file(model_path.parent / name)}
            for name in external_data_files(model_path)}
    if data:
        entry["data"] = data
    return entry


def _check_file(path: Path, size: Any, sha256: Any) -> str:
    """Why this file of an export does not match its manifest, or "" when it does."""
    if not path.is_file():
        return f"{path.name} is missing"
    if path.stat().st_size != size:
        return f"{path.name} is {path.stat().st_size} bytes, the manifest says {size}"
    if not file_matches(path, sha256):
        return f"{path.name} does not match the sha256 in its manifest (altered or damaged)"
    return ""


@dataclass
class ExportStatus:
    state: str  # "ok", "missing", "stale" or "corrupt"
    reason: str = ""
    manifest: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.state == "ok"

    def describe(self) -> str:
        return self.state if not self.reason else f"{self.state}: {self.reason}"


def read_manifest(export_dir: Path) -> dict[str, Any]:
    path = Path(export_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{export_dir} has no {MANIFEST}: it is not a chatbot-llm export") from None
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        raise UsageError(f"{path} is unreadable ({exc}); re-export with --force") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        raise UsageError(f"{path} is not a format-{FORMAT_VERSION} chatbot-llm manifest; re-export with --force")
    return manifest


def check_export(export_dir: Path, checkpoint: Path | None, variant: str) -> ExportStatus:
    """Is this export complete and made from the checkpoint as it is now?"""
    export_dir = Path(export_dir)
    if not (export_dir / MANIFEST).is_file():
        return ExportStatus("missing", "not exported yet")
    try:
        manifest = read_manifest(export_dir)
    except UsageError as exc:
        return ExportStatus("corrupt", str(exc))
    recorded = manifest.get("onnx", {})
    files = {MODEL_FILE: recorded, **recorded.get("data", {})}
    for name, entry in files.items():
        problem = _check_file(export_dir / name, entry.get("size"), entry.get("sha256"))
        if problem:
            return ExportStatus("corrupt", problem, manifest)
    if manifest.get("variant") != variant:
        return ExportStatus("corrupt", f"manifest is for variant {manifest.get('variant')!r}", manifest)
    if checkpoint is not None:
        if not Path(checkpoint).is_dir():
            return ExportStatus("ok", "", manifest)  # an export shipped without its checkpoint
        if manifest.get("recipe", 1) < RECIPE:
            return ExportStatus("stale", f"made by an older chatbot-llm export (recipe {manifest.get('recipe', 1)}, "
                                f"now {RECIPE})", manifest)
        source = manifest.get("source", {})
        now = fingerprint(Path(checkpoint), known=source)
        if now["sha256"] != source.get("sha256"):
            changed = sorted(
                n for n in set(now["files"]) | set(source.get("files", {}))
                if now["files"].get(n, {}).get("sha256") != source.get("files", {}).get(n, {}).get("sha256")
            )
            return ExportStatus("stale", "checkpoint changed: " + ", ".join(changed), manifest)
    return ExportStatus("ok", "", manifest)
