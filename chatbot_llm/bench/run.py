"""Prepare each backend's files, run every backend's worker in turn, and put the figures together."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from statistics import median
from typing import Callable

from chatbot_llm.errors import ChatbotError, UsageError
from chatbot_llm.runtime.device import default_threads

# onnx-fp16-nograph: the fp16 export through the same fixed buffers, with CUDA graphs off
BACKENDS = ("torch", "onnx-fp32", "onnx-opt", "onnx-int8", "onnx-int4", "onnx-fp16", "onnx-fp16-nograph")
DEFAULT_BACKENDS = {"cpu": "torch,onnx-fp32,onnx-opt,onnx-int8,onnx-int4",
                    "cuda": "torch,onnx-fp32,onnx-fp16-nograph,onnx-fp16"}
NO_GRAPH = "-nograph"


def onnx_variant(backend: str) -> str:
    """The export variant an onnx-* backend runs: onnx-fp16-nograph -> fp16."""
    return backend.split("-", 1)[1].removesuffix(NO_GRAPH)
CT2_BACKENDS = ("ct2-int8", "ct2-fp32")


def parse_backends(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UsageError("--backends is empty; name at least one of " + ", ".join(BACKENDS + CT2_BACKENDS))
    for name in names:
        if name in CT2_BACKENDS:
            try:
                import ctranslate2  # noqa: F401
            except ImportError:
                raise UsageError(f"--backends {name} needs the ctranslate2 package: pip install ctranslate2") from None
        elif name not in BACKENDS:
            raise UsageError(f"unknown backend {name!r} in --backends; choose from {', '.join(BACKENDS + CT2_BACKENDS)}")
    return list(dict.fromkeys(names))


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        raise UsageError(f"--batch-sizes must be whole numbers separated by commas, not {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise UsageError(f"--batch-sizes needs one or more sizes of at least 1, not {text!r}")
    return sorted(set(sizes))


def _disk_mb(paths) -> float:
    return sum(p.stat().st_size for p in paths if p.is_file()) / 1e6


def prepare(ref, backends: list[str], on_stage: Callable[[str], None]) -> dict[str, dict]:
    """backend -> the files its worker loads (exporting or converting them first if need be)."""
    from chatbot_llm.models import ensure_export

    prepared = {}
    for backend in backends:
        if backend == "torch" or backend.startswith("ct2-"):
            if ref.checkpoint is None:
                raise UsageError(f"--backends {backend} needs a checkpoint folder; {ref.name} is an ONNX export")
        if backend == "torch":
            weights = [p for p in ref.checkpoint.iterdir() if p.suffix in (".safetensors", ".bin")]
            prepared[backend] = {"checkpoint": str(ref.checkpoint), "disk_mb": _disk_mb(weights)}
        elif backend.startswith("onnx-"):
            folder = ensure_export(ref, onnx_variant(backend), on_stage)
            prepared[backend] = {"folder": str(folder), "disk_mb": _disk_mb(folder.glob("model.onnx*"))}
        else:
            folder = _ct2_convert(ref, backend.split("-", 1)[1], on_stage)
            prepared[backend] = {"folder": str(folder), "disk_mb": _disk_mb(folder.glob("model.bin"))}
    return prepared


def _ct2_convert(ref, quantization: str, on_stage: Callable[[str], None]) -> Path:
    """CTranslate2's own converter on the same checkpoint, cached beside the ONNX exports."""
    import ctranslate2

    folder = ref.export_root / f"ct2-{quantization}"
    stamp = folder / "source.json"
    source = {"checkpoint": str(ref.checkpoint), "mtime": (ref.checkpoint / "config.json").stat().st_mtime,
              "ctranslate2": ctranslate2.__version__}
    if stamp.is_file() and json.loads(stamp.read_text()) == source:
        return folder
    on_stage(f"converting {ref.checkpoint} with CTranslate2 ({quantization})")
    ctranslate2.converters.TransformersConverter(str(ref.checkpoint)).convert(
        str(folder), quantization={"int8": "int8", "fp32": "float32"}[quantization], force=True)
    stamp.write_text(json.dumps(source))
    return folder


def run_worker(spec: dict) -> dict:
    result = subprocess.run([sys.executable, "-m", "chatbot_llm.bench.worker", json.dumps(spec)],
                            capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        raise ChatbotError(f"bench: {spec['backend']} failed: {lines[-1] if lines else 'exit ' + str(result.returncode)}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def agreement(tokens: list[list[int]], reference: list[list[int]]) -> dict:
    """Greedy agreement with torch: rows token-identical, and the mean share of each row before it diverges."""
    prefix = []
    for row, ref in zip(tokens, reference):
        if row == ref:  # two empty rows (EOS first on both sides) agree too
            prefix.append(1.0)
            continue
        same = next((i for i, (a, b) in enumerate(zip(row, ref)) if a != b), min(len(row), len(ref)))
        prefix.append(same / max(1, len(ref), len(row)))
    return {"rows_identical": sum(p == 1.0 for p in prefix), "rows": len(prefix),
            "mean_prefix_share": sum(prefix) / max(1, len(prefix))}


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        kb = next(int(l.split()[1]) for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal"))
        memory = round(kb / 1024 / 1024, 1)
    except (OSError, StopIteration):
        pass
    import onnxruntime as ort

    # the onnxruntime really imported: onnxruntime and onnxruntime-gpu both install the module, and the
    # distribution metadata of the other one can linger
    versions = {"onnxruntime": f"{getattr(ort, 'package_name', 'onnxruntime')} {ort.__version__}"
                               + (f" (CUDA {ort.cuda_version})" if getattr(ort, "cuda_version", "") else "")}
    for package in ("torch", "transformers", "ctranslate2", "numpy"):
        try:
            from importlib.metadata import version

            versions[package] = version(package)
        except Exception:  # not installed
            pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": memory, "os": platform.platform(),
            "python": platform.python_version(), "versions": versions, "gpu": gpu_name()}


def gpu_name() -> str | None:
    """The NVIDIA GPU's name, from nvidia-smi (the driver's own tool), or None without one."""
    try:
        result = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    names = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    return ", ".join(names) if result.returncode == 0 and names else None


def check_fits(ref, prompt_tokens: int, new_tokens: int) -> Path:
    """The model's folder, once a prompt plus its new tokens is known to fit its context."""
    from chatbot_llm.runtime.onnx_model import eos_and_context, read_model_config

    folder = ref.checkpoint or ref.export_dir(ref.fixed_variant)
    _, context = eos_and_context(read_model_config(folder))
    if prompt_tokens + new_tokens > context:
        raise UsageError(f"--prompt-tokens {prompt_tokens} + --new-tokens {new_tokens} exceed the model's "
                         f"context of {context} tokens")
    return folder


# a worker's timings: over several rounds each becomes the median of the rounds' figures
ROUND_MEDIANS = ("load_seconds", "first_token_ms", "decode_ms_median", "decode_ms_p95", "per_token_ms",
                 "tokens_per_second")


def merge_rounds(rounds: list[dict]) -> dict:
    """One backend's figures from its rounds: each timing the median of the rounds' (the throughput of
    each batch size and the batch path's ms/token too), peak memory the highest, the outputs the first
    round's (greedy decoding gives the same tokens each time), and every round's decode step and
    throughput kept under "rounds" so that the spread shows."""
    merged = dict(rounds[0])
    if len(rounds) == 1:
        return merged
    for key in ROUND_MEDIANS:
        merged[key] = float(median([r[key] for r in rounds]))
    merged["throughput"] = {size: float(median([r["throughput"][size] for r in rounds]))
                            for size in rounds[0]["throughput"]}
    for key in ("peak_rss_mb", "peak_rss_all_mb"):
        merged[key] = max(r[key] for r in rounds)
    if rounds[0].get("cli_path"):
        merged["cli_path"] = {**rounds[0]["cli_path"],
                              "ms_per_token": float(median([r["cli_path"]["ms_per_token"] for r in rounds]))}
    merged["rounds"] = [{"decode_ms_median": r["decode_ms_median"], "throughput": r["throughput"]} for r in rounds]
    return merged


def run_bench(ref, backends: list[str], batch_sizes: list[int], prompt_tokens: int, new_tokens: int,
              repeats: int, threads: int | None = None, on_stage: Callable[[str], None] = lambda m: None,
              on_backend: Callable[[str], None] = lambda b: None, device: str = "cpu", cli_path: bool = False,
              rounds: int = 1) -> dict:
    """device: "cpu" or "cuda" (already resolved); every backend runs there, the CTranslate2 ones too.
    cli_path: also time each of our backends through the code `batch` runs, with the model's defaults.
    rounds: run the whole list of backends this many times, one after the other, and report each
    figure's median over the rounds: on a shared host a slow minute then hits one round of every
    backend instead of all the repeats of one."""
    folder = check_fits(ref, prompt_tokens, new_tokens)
    prepared = prepare(ref, backends, on_stage)
    settings = {"batch_sizes": batch_sizes, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
                "repeats": repeats, "rounds": rounds, "threads": threads or default_threads(), "device": device,
                "cli_path": cli_path}
    runs: dict[str, list[dict]] = {backend: [] for backend in backends}
    for _ in range(rounds):
        for backend in backends:
            on_backend(backend)
            spec = {"backend": backend, **prepared[backend], **settings}
            runs[backend].append(run_worker(spec))
    results = {backend: {**merge_rounds(runs[backend]), "disk_mb": prepared[backend]["disk_mb"]}
               for backend in backends}
    largest = str(max(batch_sizes))
    outputs = {name: result.pop("outputs") for name, result in results.items()}
    torch = results.get("torch")
    for name, result in results.items():
        if torch is None:
            continue
        result["speedup_vs_torch"] = torch["decode_ms_median"] / result["decode_ms_median"]
        result["throughput_vs_torch_loop"] = {  # the seed's loop: torch, one prompt at a time
            size: tps / torch["throughput"]["1"] for size, tps in result["throughput"].items()
        } if "1" in torch["throughput"] else {}
        result["rss_vs_torch"] = result["peak_rss_mb"] / torch["peak_rss_mb"]
        result["rss_all_vs_torch"] = result["peak_rss_all_mb"] / torch["peak_rss_all_mb"]
        result["greedy_agreement"] = agreement(outputs[name][largest], outputs["torch"][largest])
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "model": str(folder),
            "machine": machine(), "settings": settings, "results": results}
