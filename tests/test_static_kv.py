"""The CUDA provider's layout of the decoder graph (fp16) and its fixed buffers (runtime/static_kv.py),
run here on the CPU provider: the same graph, the same IO binding of OrtValues updated in place, the
same dead slots stepping; only the CUDA graph capture itself (a CUDA provider option) is not here.
"""

from __future__ import annotations

import gc

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from chatbot_llm.config import GenerationConfig
from chatbot_llm.export.manifest import RECIPE
from chatbot_llm.runtime import device as device_module
from chatbot_llm.runtime.generator import Generator, generate_ids
from chatbot_llm.runtime.onnx_model import OnnxCausalLM
from chatbot_llm.runtime.static_kv import BufferSet, StaticKVBatch, power_of_two

GREEDY = GenerationConfig(do_sample=False, max_new_tokens=8, repetition_penalty=1.0)


@pytest.fixture(scope="module")
def fp16_export(tiny_checkpoint):
    from chatbot_llm.models import ensure_export, resolve_model

    return ensure_export(resolve_model(str(tiny_checkpoint)), "fp16", on_stage=lambda s: None)


@pytest.fixture(scope="module")
def fp16(fp16_export):
    return OnnxCausalLM(fp16_export / "model.onnx")


def test_fp16_graph_is_the_cuda_providers_layout(fp16_export, exports):
    """No query_seqlens (onnxruntime-gpu 1.31's GroupQueryAttention has no such input), a next_token
    output, opset 18; the CPU variants keep query_seqlens and gain no output."""
    import json

    model = onnx.load(str(fp16_export / "model.onnx"), load_external_data=False)
    inputs = [i.name for i in model.graph.input]
    outputs = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    assert "query_seqlens" not in inputs and {"seqlens_k", "total_sequence_length", "logits_index"} <= set(inputs)
    assert outputs["next_token"] == onnx.TensorProto.INT64 and outputs["logits"] == onnx.TensorProto.FLOAT
    assert all(len(n.input) == 7 for n in model.graph.node if n.op_type == "GroupQueryAttention")
    assert next(o.version for o in model.opset_import if o.domain == "") == 18
    assert json.loads((fp16_export / "manifest.json").read_text())["recipe"] == RECIPE
    for variant in ("opt", "int8", "int4"):
        graph = onnx.load(str(exports[variant] / "model.onnx"), load_external_data=False).graph
        assert "query_seqlens" in [i.name for i in graph.input]
        assert [o.name for o in graph.output][0] == "logits" and "next_token" not in [o.name for o in graph.output]
        assert OnnxCausalLM(exports[variant] / "model.onnx").static is False


def test_fp16_generates_through_the_static_buffers(fp16):
    assert fp16.static and not fp16.cuda_graph  # the CPU provider has no CUDA graphs
    cache = fp16.start([[464, 3290], [40]], capacity=10, pad_id=50256)
    assert isinstance(cache, StaticKVBatch) and isinstance(cache.buffers, BufferSet)
    results = generate_ids(fp16, [[464, 3290, 373], [40, 1101]], GREEDY, 50256, 64)
    assert [len(r.tokens) for r in results] == [8, 8]


PROMPTS = [[5, 9, 13], [464, 3290, 373, 257, 1110, 13, 40], [1212], [2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22], [7, 7]]
LEAVE_AFTER = [2, 8, 1, 5, 8]  # steps each row takes before it leaves the batch


def _run_rows(model: OnnxCausalLM, rows: list[int], nexts: np.ndarray) -> dict[int, list[np.ndarray]]:
    """Logits of each row at each step, rows leaving the batch after LEAVE_AFTER steps."""
    cache = model.start([PROMPTS[r] for r in rows], capacity=30, pad_id=50256)
    seen = {r: [] for r in rows}
    logits, live = cache.forward(None), list(rows)
    for step in range(8):
        for r, row_logits in zip(live, logits):
            seen[r].append(row_logits)
        keep = np.array([LEAVE_AFTER[r] > step + 1 for r in live])
        live = [r for r, k in zip(live, keep) if k]
        if not live:
            break
        if not keep.all():
            cache.keep(keep)
        logits = cache.forward(np.array([nexts[step, r] for r in live]))
    return seen


def test_a_row_gets_bit_identical_logits_alone_and_among_others_with_dead_slots_stepping(fp16):
    """5 rows in 8 slots (3 never used), rows leaving at different steps, whose slots then step on
    dummy tokens: every row's logits equal those of the row alone in a 1-slot set, bit for bit (on the
    CPU provider; on CUDA, cuBLAS picks GEMM kernels by shape, so the last bits may move)."""
    nexts = np.random.default_rng(0).integers(0, 50257, size=(8, len(PROMPTS)))
    together = _run_rows(fp16, list(range(len(PROMPTS))), nexts)
    for r in range(len(PROMPTS)):
        alone = _run_rows(fp16, [r], nexts)[r]
        assert len(alone) == len(together[r]) == LEAVE_AFTER[r]
        for a, b in zip(alone, together[r]):
            np.testing.assert_array_equal(a, b)


def test_rows_give_the_same_tokens_alone_and_together_greedy_and_seeded(fp16):
    prompts = [p for p in PROMPTS]
    for config in (GenerationConfig(do_sample=False, max_length=16, repetition_penalty=1.3),  # rows end apart
                   GenerationConfig(do_sample=True, seed=3, max_new_tokens=6, top_k=50, temperature=1.2),
                   GREEDY):
        keys = list(range(len(prompts)))
        together = generate_ids(fp16, prompts, config, 50256, 64, stream_keys=keys)
        alone = [generate_ids(fp16, [p], config, 50256, 64, stream_keys=[k])[0] for p, k in zip(prompts, keys)]
        assert [r.tokens for r in together] == [r.tokens for r in alone]
    assert len({len(r.tokens) for r in generate_ids(fp16, prompts, GenerationConfig(
        do_sample=False, max_length=16, repetition_penalty=1.3), 50256, 64)}) > 1  # rows did leave early


def test_greedy_reads_the_devices_argmax_and_it_equals_the_hosts(fp16):
    """Greedy without processors copies one int64 per row back (next_token), and picks what the
    host's argmax of the logits picks, at every step."""
    prompts = [[464, 3290, 373], [40], [1212, 318, 257, 1332]]
    generator = Generator(fp16, prompts, GREEDY, 50256, 64)
    assert generator.argmax_on_device and generator.cache.read_logits is False
    with_processors = Generator(fp16, prompts, GREEDY.replace(repetition_penalty=1.2), 50256, 64)
    assert not with_processors.argmax_on_device  # the processors need the logits on the host

    cache = fp16.start(prompts, capacity=20, pad_id=50256)
    logits = cache.forward(None)
    for _ in range(6):
        device = cache.next_tokens()
        np.testing.assert_array_equal(device, logits.argmax(axis=-1))
        logits = cache.forward(device)

    on_device = generate_ids(fp16, prompts, GREEDY, 50256, 64)
    plain = Generator(fp16, prompts, GREEDY, 50256, 64)
    plain.argmax_on_device, plain.cache.read_logits = False, True  # the host's argmax of the logits
    while not plain.is_done():
        plain.generate_next_token()
    assert [r.tokens for r in on_device] == [r.tokens for r in plain.results]


def test_buffer_sets_are_leased_reused_once_dropped_and_never_shared(fp16_export):
    model = OnnxCausalLM(fp16_export / "model.onnx")
    pool = model.static_pool
    first = model.start([[1, 2, 3]] * 3, capacity=40, pad_id=0)
    second = model.start([[4, 5]] * 4, capacity=50, pad_id=0)  # the same shape: 4 slots, 64 tokens
    assert (first.buffers.slots, first.buffers.capacity) == (second.buffers.slots, second.buffers.capacity) == (4, 64)
    assert first.buffers is not second.buffers and first.buffers.graph_id != second.buffers.graph_id
    assert pool.made == 2
    kept = first.buffers
    del first
    gc.collect()
    third = model.start([[6]] * 2, capacity=64, pad_id=0).buffers  # 2 slots: another shape
    assert third.slots == 2 and pool.made == 3
    again = model.start([[7, 8, 9]], capacity=33, pad_id=0)
    assert again.buffers.slots == 1 and pool.made == 4
    fourth = model.start([[7, 8, 9]] * 3, capacity=60, pad_id=0)  # 4 x 64 again: the dropped one's set
    assert fourth.buffers is kept and pool.made == 4
    assert fourth.buffers is not second.buffers

    # a Generator holds its lease until it is dropped; then the next batch of its shape replays
    generator = Generator(model, [[1, 2]] * 3, GREEDY, 50256, 64)
    held = generator.cache.buffers
    assert held not in (second.buffers, fourth.buffers)
    while not generator.is_done():
        generator.generate_next_token()
    made = pool.made
    del generator
    gc.collect()
    assert Generator(model, [[3]] * 4, GREEDY, 50256, 64).cache.buffers is held and pool.made == made


def test_buffer_shapes_are_powers_of_two_with_at_least_64_positions():
    assert [power_of_two(n) for n in (1, 2, 3, 5, 8, 9, 32, 33)] == [1, 2, 4, 8, 8, 16, 32, 64]
    assert [power_of_two(n, 64) for n in (1, 64, 65, 300, 1024)] == [64, 64, 128, 512, 1024]


def test_scoring_the_fp16_graph_matches_its_decode_steps(fp16):
    """prompt_logits (one pass, every position) against prefill + one token at a time through the
    fixed buffers: fp16's rounding differs between the two orders, its argmax does not."""
    ids = [464, 3290, 373, 257, 1110, 13, 40, 1101]
    whole = fp16.prompt_logits(ids)
    cache = fp16.start([ids[:3]], capacity=len(ids), pad_id=50256)
    steps = [cache.forward(None)[0]] + [cache.forward(np.array([t]))[0] for t in ids[3:]]
    np.testing.assert_allclose(np.stack(steps), whole[2:], atol=0.02 * max(1, np.abs(whole).max()))
    np.testing.assert_array_equal(np.stack(steps).argmax(-1), whole[2:].argmax(-1))


def _as_if_on_cuda(monkeypatch, seen: dict):
    """OnnxCausalLM believing it runs on CUDA, on the CPU provider: what it asks the providers for."""
    monkeypatch.setattr(device_module, "resolve_device", lambda device, on_stage=None: "cuda")

    def providers_for(device, cuda_graph=False):
        seen["cuda_graph"] = cuda_graph
        return ["CPUExecutionProvider"]

    monkeypatch.setattr(device_module, "providers_for", providers_for)
    monkeypatch.setattr(device_module, "started_on", lambda session, requested, on_stage: "cuda")


def test_cuda_graphs_are_on_by_default_for_fp16_on_cuda_and_off_by_env_or_argument(fp16_export, monkeypatch):
    seen = {}
    _as_if_on_cuda(monkeypatch, seen)
    monkeypatch.setattr(ort.OrtValue, "ortvalue_from_numpy", _cpu_ortvalue_from_numpy(ort.OrtValue.ortvalue_from_numpy))
    model = OnnxCausalLM(fp16_export / "model.onnx", device="cuda")
    assert seen["cuda_graph"] is True and model.cuda_graph
    # the run options a CUDA session gets: a graph id per buffer set, -1 for every other run
    cache = model.start([[1, 2, 3]], capacity=10, pad_id=0)
    assert cache.buffers.run_options.get_run_config_entry("gpu_graph_id") == str(cache.buffers.graph_id)
    assert model.uncaptured.get_run_config_entry("gpu_graph_id") == "-1"
    reference = generate_ids(OnnxCausalLM(fp16_export / "model.onnx"), [[464, 3290, 373]], GREEDY, 50256, 64)
    assert [r.tokens for r in generate_ids(model, [[464, 3290, 373]], GREEDY, 50256, 64)] == [reference[0].tokens]
    assert len(model.prompt_logits([464, 3290])) == 2

    assert OnnxCausalLM(fp16_export / "model.onnx", device="cuda", cuda_graph=False).cuda_graph is False
    assert seen["cuda_graph"] is False
    monkeypatch.setenv("CHATBOT_LLM_CUDA_GRAPH", "0")
    assert OnnxCausalLM(fp16_export / "model.onnx", device="cuda").cuda_graph is False
    assert seen["cuda_graph"] is False


def _cpu_ortvalue_from_numpy(original):
    """The buffers ask for device "cuda" when the model believes it is there: make them on the CPU."""
    def make(array, device_type="cpu", device_id=0, *args):
        return original(array, "cpu", 0)

    return staticmethod(make)


def test_cuda_graphs_are_off_for_exports_without_the_cuda_layout(exports, monkeypatch):
    seen = {}
    _as_if_on_cuda(monkeypatch, seen)
    model = OnnxCausalLM(exports["fp32"] / "model.onnx", device="cuda")
    assert seen["cuda_graph"] is False and not model.cuda_graph and not model.static


def test_providers_for_cuda_graphs_set_the_cuda_providers_option():
    assert device_module.providers_for("cuda", cuda_graph=True) == [
        ("CUDAExecutionProvider", {"enable_cuda_graph": "1"}), "CPUExecutionProvider"]
    assert device_module.providers_for("cuda") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert device_module.providers_for("cpu", cuda_graph=True) == ["CPUExecutionProvider"]


def test_a_row_cancelled_before_its_prompt_ran_leaves_a_dead_slot_the_others_do_not_see(fp16):
    prompts = [[464, 3290, 373], [40, 1101, 257, 1110, 13], [1212]]
    generator = Generator(fp16, prompts, GREEDY, 50256, 64)
    generator.cancel(1)  # the server's client went away before the first step
    while not generator.is_done():
        generator.generate_next_token()
    assert generator.results[1].tokens == [] and generator.results[1].finish_reason == "cancelled"
    for row in (0, 2):
        assert generator.results[row].tokens == generate_ids(fp16, [prompts[row]], GREEDY, 50256, 64)[0].tokens
