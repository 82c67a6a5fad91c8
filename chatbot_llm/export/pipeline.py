"""checkpoint folder -> onnx_models/<name>/<variant>/, once.

fp32: Optimum's ``main_export`` (task text-generation-with-past: one graph for prefill and decode),
      the reference the others are checked against.
opt:  the decoder graph written from the weights (export/decoder.py): fused attention over a fixed
      KV buffer, SkipLayerNormalization, FastGelu; float32.
int8: opt with int8 weights (per output column) and int8 activations (per row) on the integer
      GEMM (export/graph.py). Not ONNX Runtime's dynamic quantization: it computes one activation
      scale for the whole batch, so a prompt's logits change with its batch neighbours (onnxruntime
      issue 5653).
int4: opt with weight-only 4-bit MatMulNBits (blocks of 32); the smallest and fastest at batch 1.
fp16: the decoder graph in float16 (weights and KV buffer; logits float32) in the CUDA provider's
      layout (no query_seqlens, a next_token output; export/decoder.py), for the GPU.

Everything is written to a temporary folder beside the destination and moved into place only
after it passed validation, so an interrupted export never leaves a cache that gets used.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from chatbot_llm import __version__
from chatbot_llm.errors import ChatbotError, UsageError
from chatbot_llm.export.manifest import (
    FORMAT_VERSION,
    RECIPE,
    VARIANTS,
    MANIFEST,
    MODEL_FILE,
    WEIGHT_FILES,
    check_export,
    external_data_files,
    fingerprint,
    model_files_entry,
)
from chatbot_llm.runtime.onnx_model import read_model_config
from chatbot_llm.runtime.tokenizer import load_tokenizer

DATA_FILE = MODEL_FILE + ".data"
# An export fails when max |delta logits| > tolerance * max(1, max |logits|): fp32 and opt must match
# PyTorch to float32 rounding; int8, int4 and fp16 change the numbers by design, and their bound only
# catches a broken conversion (overflow, NaN, a wrong graph). Their quality is held-out perplexity,
# measured by benchmarks/int8_quality.py. 4 bits over a tiny random test model's 32-wide rows (one
# block each) move its logits by up to ~35% of their range.
PARITY_RTOL = {"fp32": 1e-3, "opt": 1e-4, "int8": 0.1, "int4": 0.5, "fp16": 0.1}
TOOLS = ("torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime", "tokenizers", "numpy")

Stage = Callable[[str], None]


def check_checkpoint(checkpoint: Path) -> dict[str, Any]:
    """A GPT-2 checkpoint folder with weights, or a UsageError naming what is wrong."""
    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise UsageError(f"model folder not found: {checkpoint}")
    if not checkpoint.is_dir():
        raise UsageError(f"{checkpoint} is a file, not a checkpoint folder")
    config = read_model_config(checkpoint)
    if not any((checkpoint / n).is_file() for n in WEIGHT_FILES) and not list(
        checkpoint.glob("model-*-of-*.safetensors")
    ):
        raise UsageError(
            f"{checkpoint} has a config.json but no weights (model.safetensors or pytorch_model.bin)"
        )
    return config


def _require_export_extra() -> None:
    missing = []
    for module in ("torch", "transformers", "optimum.exporters.onnx", "onnx"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module.split(".")[0])
    if missing:
        raise UsageError(
            f"exporting needs {', '.join(missing)}: install the export extra, "
            "pip install torch==2.13.0 'chatbot-llm[export]' (or run make setup)"
        )


def export_checkpoint(
    checkpoint: Path, export_dir: Path, variant: str, *, name: str, on_stage: Stage = lambda s: None
) -> dict[str, Any]:
    """Export one variant and return its manifest."""
    if variant not in VARIANTS:
        raise UsageError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    checkpoint, export_dir = Path(checkpoint).resolve(), Path(export_dir)
    config = check_checkpoint(checkpoint)
    _require_export_extra()
    import onnx

    from chatbot_llm.export.parity import measure_parity

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever downloaded
    started = time.perf_counter()
    source = fingerprint(checkpoint)
    export_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{variant}.partial-", dir=export_dir.parent))
    try:
        model_path = work / MODEL_FILE
        if variant == "fp32":  # always exported afresh into scratch
            raw = _optimum_export(checkpoint, work / "optimum", on_stage)
            for name in external_data_files(raw):  # Optimum's, for a model over 2 GB
                shutil.move(str(raw.parent / name), work / name)
            shutil.move(str(raw), model_path)
        else:
            on_stage(f"writing the {variant} decoder graph from the checkpoint's weights")
            model = _decoder_graph(checkpoint, variant)
            # weights in a file beside the graph: onnxruntime maps it instead of reading it into memory,
            # which keeps the original weights out of the resident set once they are prepacked
            onnx.save_model(model, str(model_path), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=DATA_FILE, size_threshold=1024)
            shutil.copymode(model_path, work / DATA_FILE)  # onnx writes it private (0600)
        shutil.rmtree(work / "optimum", ignore_errors=True)
        _write_side_files(checkpoint, work, config)
        on_stage("validating against PyTorch")
        parity = measure_parity(checkpoint, work)
        manifest = _manifest(name, variant, checkpoint, source, work / MODEL_FILE, parity, config)
        manifest["export_seconds"] = round(time.perf_counter() - started, 2)
        (work / MANIFEST).write_text(_json(manifest), encoding="utf-8")
        limit = PARITY_RTOL[variant] * max(1.0, parity["max_abs_logits"])
        if not parity["max_abs_logits_delta"] <= limit:
            raise ChatbotError(
                f"{variant} export of {checkpoint} differs from PyTorch: max |delta logits| "
                f"{parity['max_abs_logits_delta']:.3g} > {limit:.3g}; not installed"
            )
        _move_into_place(work, export_dir)
        return manifest
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def _quiet():
    """Hide the tracer warnings and library chatter of an export; errors still surface as exceptions."""
    loggers = [logging.getLogger(n) for n in ("transformers", "optimum", "onnxruntime", "torch.onnx")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def _optimum_export(checkpoint: Path, out: Path, on_stage: Stage) -> Path:
    from optimum.exporters.onnx import main_export

    on_stage("exporting with Optimum (text-generation-with-past)")
    try:
        with _quiet():
            main_export(
            str(checkpoint),
                output=out,
                task="text-generation-with-past",
                device="cpu",
                do_validation=False,  # measure_parity() compares against PyTorch on our own inputs
                local_files_only=True,
            )
    except Exception as exc:  # transformers/safetensors raise many types for unloadable weights
        raise UsageError(f"cannot load {checkpoint} as a GPT-2 checkpoint: {_first_line(exc)}") from None
    return out / MODEL_FILE


def _decoder_graph(checkpoint: Path, variant: str) -> "onnx.ModelProto":
    import numpy as np

    from chatbot_llm.export.decoder import build_decoder

    try:
        with _quiet():
            model = build_decoder(checkpoint, dtype=np.float16 if variant == "fp16" else np.float32,
                                  lm_head_as_matmul=variant in ("int8", "int4"), cuda_layout=variant == "fp16")
    except ValueError as exc:  # a GPT-2 variant the decoder graph does not cover
        raise UsageError(f"{checkpoint}: {exc}") from None
    except Exception as exc:  # transformers/safetensors raise many types for unloadable weights
        raise UsageError(f"cannot load {checkpoint} as a GPT-2 checkpoint: {_first_line(exc)}") from None
    return _quantize(model, variant) if variant in ("int8", "int4") else model


def _quantize(model: "onnx.ModelProto", variant: str) -> "onnx.ModelProto":
    from chatbot_llm.export import graph

    if variant == "int8":
        graph.per_row_int8(model)
    else:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
        # accuracy_level 4: int8 activations quantized per row block, so rows stay independent
        quantizer = MatMulNBitsQuantizer(model, bits=4, block_size=32, is_symmetric=True, accuracy_level=4)
        quantizer.process()
        model = quantizer.model.model
    graph.int8_embedding(model)
    return model


def _write_side_files(checkpoint: Path, work: Path, config: dict[str, Any]) -> None:
    tokenizer = load_tokenizer(checkpoint)
    if tokenizer.get_vocab_size() != config.get("vocab_size", 50257):
        raise UsageError(
            f"{checkpoint}: the tokenizer has {tokenizer.get_vocab_size()} tokens but config.json "
            f"says vocab_size {config.get('vocab_size')}; add the checkpoint's vocab.json and merges.txt"
        )
    tokenizer.save(str(work / "tokenizer.json"))
    shutil.copyfile(checkpoint / "config.json", work / "config.json")
    if (checkpoint / "generation_config.json").is_file():
        shutil.copyfile(checkpoint / "generation_config.json", work / "generation_config.json")


def _manifest(name, variant, checkpoint, source, model_path, parity, config) -> dict[str, Any]:
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False)
    opset = next((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")), None)
    return {
        "format_version": FORMAT_VERSION,
        "recipe": RECIPE,
        "name": name,
        "variant": variant,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": {"path": str(checkpoint), **source},
        "onnx": model_files_entry(model_path),
        "opset": opset,
        "model": {k: config.get(k) for k in ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size")},
        "tools": {"chatbot-llm": __version__, **{t: _version(t) for t in TOOLS}},
        "parity": parity,
    }


def _move_into_place(work: Path, export_dir: Path) -> None:
    """Replace export_dir with work; at every moment export_dir is complete or absent."""
    os.chmod(work, export_dir.parent.stat().st_mode & 0o777)  # not mkdtemp's private 0700
    old = None
    if export_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{export_dir.name}.old-", dir=export_dir.parent))
        os.replace(export_dir, old / "x")
    os.replace(work, export_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _json(data: Any) -> str:
    return json.dumps(data, indent=2) + "\n"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
