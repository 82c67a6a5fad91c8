"""--device cpu|cuda|auto -> onnxruntime execution providers, with one clear line when CUDA is missing."""

from __future__ import annotations

from typing import Callable

import onnxruntime as ort

from chatbot_llm.errors import ChatbotError, UsageError

DEVICES = ("cpu", "cuda", "auto")
CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
INSTALL_GPU = ("make setup-gpu (or: pip uninstall -y onnxruntime && pip install --force-reinstall "
               "onnxruntime-gpu), on a machine with an NVIDIA driver")


def resolve_device(device: str, on_stage: Callable[[str], None] = lambda m: None) -> str:
    """"cpu" or "cuda": what --device asks for and this onnxruntime can do."""
    if device not in DEVICES:
        raise UsageError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    available = ort.get_available_providers()
    if device == "cpu":
        return "cpu"
    if CUDA in available:
        return "cuda"
    if device == "cuda":
        raise UsageError(f"--device cuda: this onnxruntime {ort.__version__} has no CUDA provider (it has "
                         f"{', '.join(available)}); install it with: {INSTALL_GPU}")
    on_stage("--device auto: no CUDA provider in this onnxruntime, running on the CPU")
    return "cpu"


def providers_for(device: str) -> list[str]:
    return [CUDA, CPU] if device == "cuda" else [CPU]


def started_on(session: ort.InferenceSession, requested: str, on_stage: Callable[[str], None]) -> str:
    """The device a session really runs on. onnxruntime falls back to the CPU with only a log line
    when CUDA cannot start: --device cuda says so and stops, --device auto says so and goes on."""
    if CUDA in session.get_providers():
        return "cuda"
    if requested == "cuda":
        raise ChatbotError("--device cuda: onnxruntime-gpu is installed but its CUDA provider did not start "
                           "(no NVIDIA driver, or CUDA 12 / cuDNN 9 libraries not found); use --device cpu")
    if requested == "auto" and CUDA in ort.get_available_providers():
        on_stage("--device auto: the CUDA provider did not start, running on the CPU")
    return "cpu"
