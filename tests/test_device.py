"""--device and the GPU path, as far as a machine without CUDA can test them.

The CUDA provider itself is exercised on a GPU machine only (benchmarks/cuda_check.py); here: provider
choice, the errors, the fp16 variant on the CPU provider, and the IO-binding decode loop run on the CPU
against the plain one. The fp16 graph's fixed buffers (the CUDA-graph path): tests/test_static_kv.py.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from chatbot_llm.config import GenerationConfig
from chatbot_llm.errors import ChatbotError, UsageError
from chatbot_llm.runtime import device as device_module
from chatbot_llm.runtime.generator import generate_ids
from chatbot_llm.runtime.onnx_model import OnnxCausalLM
from tests.conftest import error_lines, run_cli

needs_no_cuda = pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(),
                                   reason="this machine has CUDA")


@needs_no_cuda
@pytest.mark.parametrize("command", [["chat"], ["batch", "PROMPTS"], ["sweep", "--prompts", "PROMPTS",
                                                                     "--grid", "top_k=0", "--out", "OUT"]])
def test_device_cuda_without_cuda_is_one_line_saying_how_to_install(tmp_path, exports, command):
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    args = [str(prompts) if a == "PROMPTS" else str(tmp_path / "out") if a == "OUT" else a for a in command]
    model = ["--models", str(exports["opt"])] if command[0] == "sweep" else ["--model", str(exports["opt"])]
    result = run_cli(*args, *model, "--device", "cuda", stdin="bye\n")
    assert result.returncode == 2
    lines = error_lines(result)
    assert len(lines) == 1 and "--device cuda" in lines[0] and "CUDA provider" in lines[0]
    assert "setup-gpu" in lines[0]


@needs_no_cuda
def test_bench_device_cuda_without_cuda_is_one_line():
    result = run_cli("bench", "--shape", "tiny", "--device", "cuda", "--new-tokens", "2", "--repeats", "1")
    assert result.returncode == 2 and len(error_lines(result)) == 1 and "CUDA provider" in result.stderr


@needs_no_cuda
def test_device_auto_falls_back_to_cpu_and_says_so(tmp_path, exports):
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello there\n")
    runs = {}
    for device in ("auto", "cpu"):
        result = run_cli("batch", str(prompts), "--model", str(exports["opt"]), "--device", device, "--greedy",
                         "--max-new-tokens", "5")
        assert result.returncode == 0, result.stderr
        runs[device] = result
    assert "running on the CPU" in runs["auto"].stderr and "running on the CPU" not in runs["cpu"].stderr
    assert runs["auto"].stdout == runs["cpu"].stdout


def test_auto_and_cuda_choose_cuda_and_fp16_where_the_provider_exists(monkeypatch):
    from chatbot_llm.models import default_variant

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert device_module.resolve_device("auto") == device_module.resolve_device("cuda") == "cuda"
    assert device_module.providers_for("cuda") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert default_variant("auto") == default_variant("cuda") == "fp16" and default_variant("cpu") == "opt"


class _Session:
    def get_providers(self):
        return ["CPUExecutionProvider"]


def test_a_cuda_provider_that_does_not_start_is_an_error_or_a_fallback(monkeypatch):
    """onnxruntime-gpu without a driver quietly runs on the CPU: --device cuda must not."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(ChatbotError, match="did not start"):
        device_module.started_on(_Session(), "cuda", lambda m: None)
    said = []
    assert device_module.started_on(_Session(), "auto", said.append) == "cpu"
    assert said and "did not start" in said[0]


@pytest.mark.parametrize("variant", ["opt", "int8", "int4"])
def test_cpu_variants_of_the_decoder_graph_are_refused_on_cuda(exports, monkeypatch, variant, tmp_path):
    """Their attention (float32) and integer GEMMs have no CUDA kernels: onnxruntime would run them on
    the CPU across the device's KV buffer. fp16 is the variant for the GPU. Refused from the manifest
    before onnxruntime loads the graph (onnxruntime-gpu 1.31 cannot: it has no query_seqlens), and
    from the graph itself for a model file without a manifest."""
    import shutil

    loaded = []
    monkeypatch.setattr(device_module, "resolve_device", lambda device, on_stage=None: "cuda")
    monkeypatch.setattr(device_module, "providers_for",
                        lambda device, cuda_graph=False: loaded.append(cuda_graph) or ["CPUExecutionProvider"])
    monkeypatch.setattr(device_module, "started_on", lambda session, requested, on_stage: "cuda")
    with pytest.raises(UsageError, match="CPU variant of the decoder graph.*--variant fp16") as refused:
        OnnxCausalLM(exports[variant] / "model.onnx", device="cuda")
    assert not loaded and "\n" not in str(refused.value)  # one line, before any session
    bare = tmp_path / variant
    bare.mkdir()
    for name in ("model.onnx", "model.onnx.data"):
        shutil.copyfile(exports[variant] / name, bare / name)
    with pytest.raises(UsageError, match="CPU variant of the decoder graph.*--variant fp16"):
        OnnxCausalLM(bare / "model.onnx", device="cuda")
    assert loaded == [False]


def test_unknown_device_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown device"):
        device_module.resolve_device("tpu")


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_io_binding_decode_loop_gives_the_same_tokens(exports, variant):
    """The loop CUDA uses (KV cache kept as OrtValues, rows leaving the batch) on the CPU provider."""
    prompts = [[464, 3290, 373, 257, 1110], [40], [1212, 318, 257]]
    config = GenerationConfig(do_sample=False, max_length=9, repetition_penalty=1.3)  # rows end at different steps
    plain = OnnxCausalLM(exports[variant] / "model.onnx")
    bound = OnnxCausalLM(exports[variant] / "model.onnx", io_binding=True)
    a = generate_ids(plain, prompts, config, eos_token_id=50256, context_length=64)
    b = generate_ids(bound, prompts, config, eos_token_id=50256, context_length=64)
    assert [r.tokens for r in a] == [r.tokens for r in b]
    assert len({len(r.tokens) for r in a}) > 1  # rows did leave the batch at different steps


@pytest.fixture(scope="module")
def fp16_export(tiny_checkpoint):
    from chatbot_llm.models import ensure_export, resolve_model

    return ensure_export(resolve_model(str(tiny_checkpoint)), "fp16", on_stage=lambda s: None)


def test_fp16_export_is_float16_inside_with_float32_logits(fp16_export):
    import json

    model = OnnxCausalLM(fp16_export / "model.onnx")
    assert model.past_dtype == np.float16
    outputs = {o.name: o.type for o in model.session.get_outputs()}
    assert outputs["logits"] == "tensor(float)" and outputs["present.0.key"] == "tensor(float16)"
    parity = json.loads((fp16_export / "manifest.json").read_text())["parity"]
    assert parity["max_abs_logits_delta"] < 0.02 * max(1.0, parity["max_abs_logits"])
    assert parity["greedy_token_agreement"] >= 0.75


def test_fp16_generates_on_the_cpu_provider(fp16_export, exports):
    config = GenerationConfig(do_sample=False, max_new_tokens=6, repetition_penalty=1.0)
    prompts = [[464, 3290, 373], [40, 1101]]
    fp16 = generate_ids(OnnxCausalLM(fp16_export / "model.onnx"), prompts, config, 50256, 64)
    fp32 = generate_ids(OnnxCausalLM(exports["fp32"] / "model.onnx"), prompts, config, 50256, 64)
    assert [len(r.tokens) for r in fp16] == [6, 6]
    assert fp16[0].tokens[:2] == fp32[0].tokens[:2]
