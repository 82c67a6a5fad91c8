"""--device cpu|cuda|auto -> onnxruntime execution providers, with one clear line when CUDA is missing."""

from __future__ import annotations

import os
from typing import Callable

import onnxruntime as ort

from chatbot_llm.errors import ChatbotError, UsageError

DEVICES = ("cpu", "cuda", "auto")
CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
INSTALL_GPU = ("make setup-gpu (or: pip uninstall -y onnxruntime && pip install --force-reinstall "
               "'onnxruntime-gpu[cuda,cudnn]'), on a machine with an NVIDIA driver")


def resolve_device(device: str, on_stage: Callable[[str], None] = lambda m: None) -> str:
    """"cpu" or "cuda": what --device asks for and this onnxruntime can do."""
    if device not in DEVICES:
        raise UsageError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    available = ort.get_available_providers()
    if device == "cpu":
        return "cpu"
    if CUDA in available:
        preload_cuda_libraries()
        return "cuda"
    if device == "cuda":
        raise UsageError(f"--device cuda: this onnxruntime {ort.__version__} has no CUDA provider (it has "
                         f"{', '.join(available)}); install it with: {INSTALL_GPU}")
    on_stage("--device auto: no CUDA provider in this onnxruntime, running on the CPU")
    return "cpu"


def preload_cuda_libraries() -> None:
    """Load the CUDA runtime and cuDNN that the onnxruntime-gpu[cuda,cudnn] extras install as pip
    packages (nvidia-*), so the CUDA provider starts in a fresh venv on a machine with only the
    NVIDIA driver. Libraries it cannot find are left to the system's search path."""
    preload = getattr(ort, "preload_dlls", None)  # onnxruntime-gpu >= 1.21
    if preload is not None:
        try:
            preload()
        except OSError:
            pass


def cuda_needs() -> str:
    """What this onnxruntime-gpu's CUDA provider needs, as built: "CUDA 13.0 and cuDNN 9"."""
    version = getattr(ort, "cuda_version", "") or "12 or 13"
    return f"CUDA {version} and cuDNN 9 libraries"


def providers_for(device: str, cuda_graph: bool = False) -> list:
    """onnxruntime's providers for a device; cuda_graph: the CUDA provider captures a decode step once
    and replays it after (a session option: runtime/static_kv.py runs what it captures)."""
    if device != "cuda":
        return [CPU]
    return [(CUDA, {"enable_cuda_graph": "1"}) if cuda_graph else CUDA, CPU]


def started_on(session: ort.InferenceSession, requested: str, on_stage: Callable[[str], None]) -> str:
    """The device a session really runs on. onnxruntime falls back to the CPU with only a log line
    when CUDA cannot start: --device cuda says so and stops, --device auto says so and goes on."""
    if CUDA in session.get_providers():
        return "cuda"
    if requested == "cuda":
        raise ChatbotError(f"--device cuda: onnxruntime-gpu {ort.__version__} is installed but its CUDA provider "
                           f"did not start (no NVIDIA driver, or its {cuda_needs()} not found: make setup-gpu "
                           "installs them); use --device cpu")
    if requested == "auto" and CUDA in ort.get_available_providers():
        on_stage("--device auto: the CUDA provider did not start, running on the CPU")
    return "cpu"


def default_threads() -> int:
    """One thread count for every backend: the cores this process may run on (CTranslate2's own
    default is 4 threads, onnxruntime's the physical cores, torch's its own)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
