"""The decoder graph of opt and int8 (export/decoder.py, export/graph.py): what it is made of, and that\nits KV buffer changes how the model computes, never what."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from chatbot_llm.runtime.onnx_model import OnnxCausalLM
from tests.conftest import make_checkpoint


def _decoder_feeds(ids: list[int], layers: int = 2, heads: int = 2, head_dim: int = 16) -> dict:
    x = np.array([ids], np.int64)
    n = np.array([len(ids)], np.int32)
    feeds = {"input_ids": x, "position_ids": np.arange(len(ids))[None], "seqlens_k": n - 1, "query_seqlens": n,
             "total_sequence_length": np.array(len(ids), np.int32), "logits_index": np.arange(len(ids))}
    feeds.update({f"past_key_values.{i}.{k}": np.zeros((1, heads, 0, head_dim), np.float32)
                  for i in range(layers) for k in ("key", "value")})
    return feeds


@pytest.mark.parametrize("variant", ["opt", "int8", "int4"])
def test_decoder_graph_has_one_fused_attention_per_layer_and_no_cache_plumbing(exports, variant):
    graph = onnx.load(str(exports[variant] / "model.onnx"), load_external_data=False).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("GroupQueryAttention") == 2  # the tiny model's layers
    plumbing = {"Concat", "Transpose", "Where", "Shape", "Slice"}
    if variant == "int8":  # each quantized MatMul's zero point takes its row scales' shape, and only that
        expands = {n.input[1] for n in graph.node if n.op_type == "Expand"}
        assert all(n.output[0] in expands and n.input[0].endswith("/x_scale") for n in graph.node
                   if n.op_type == "Shape")
        plumbing.discard("Shape")
    assert not plumbing & set(ops)
    fp32 = onnx.load(str(exports["fp32"] / "model.onnx"), load_external_data=False).graph
    if variant == "opt":  # int8 adds the per-row quantization of each MatMul's input (9 nodes each)
        assert len(ops) < 40 and len(fp32.node) > 4 * len(ops)


@pytest.mark.parametrize("variant", ["opt", "int8"])
def test_logits_of_every_position_equal_a_step_by_step_decode_of_the_kv_buffer(exports, variant):
    """One pass over a whole text (scoring) and prefill + one token at a time through the KV buffer
    (generation) give the same logits at every position."""
    model = OnnxCausalLM(exports[variant] / "model.onnx")
    ids = [464, 3290, 373, 257, 1110, 13, 40, 1101]
    whole = model.prompt_logits(ids)
    cache = model.start([ids[:3]], capacity=len(ids), pad_id=50256)
    steps = [cache.forward(None)[0]] + [cache.forward(np.array([t]))[0] for t in ids[3:]]
    np.testing.assert_allclose(np.stack(steps), whole[2:], atol=1e-4 * max(1, np.abs(whole).max()))


@pytest.mark.parametrize("variant", ["opt", "int8", "int4"])
def test_a_row_in_the_kv_buffer_gets_bit_identical_logits_to_the_row_alone(exports, variant):
    """Right padding, idle slots of finished rows and the compaction of the buffer leave every other
    row's numbers exactly as when it runs alone: the ground of batch invariance."""
    model = OnnxCausalLM(exports[variant] / "model.onnx")
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(0, 50257, size=n)) for n in (1, 7, 3, 12, 5, 9)]
    nexts = rng.integers(0, 50257, size=(8, len(prompts)))
    leave_after = [2, 8, 1, 5, 8, 3]  # steps each row takes before it leaves the batch

    def run(rows: list[int]) -> dict[int, list[np.ndarray]]:
        cache = model.start([prompts[r] for r in rows], capacity=30, pad_id=50256)
        seen = {r: [] for r in rows}
        logits, live = cache.forward(None), list(rows)
        for step in range(8):
            for r, l in zip(live, logits):
                seen[r].append(l)
            keep = np.array([leave_after[r] > step + 1 for r in live])
            live = [r for r, k in zip(live, keep) if k]
            if not live:
                break
            if not keep.all():
                cache.keep(keep)
            logits = cache.forward(np.array([nexts[step, r] for r in live]))
        return seen

    together = run(list(range(len(prompts))))
    for r in range(len(prompts)):
        alone = run([r])[r]
        assert len(alone) == len(together[r]) == leave_after[r]
        for a, b in zip(alone, together[r]):
            np.testing.assert_array_equal(a, b)


def _initializers(path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


@pytest.mark.parametrize("variant", ["int8", "int4"])
def test_quantized_graphs_have_no_float_weight_matrix_left_but_the_position_table(exports, variant):
    graph = onnx.load(str(exports[variant] / "model.onnx")).graph
    ops = {n.op_type for n in graph.node}
    assert "MatMul" not in ops and {"int8": "MatMulIntegerToFloat", "int4": "MatMulNBits"}[variant] in ops
    floats = {name: a.shape for name, a in _initializers(exports[variant] / "model.onnx").items()
              if a.dtype == np.float32 and a.ndim == 2 and min(a.shape) > 1 and "scale" not in name}
    assert floats == {"transformer.wpe.weight": (64, 32)}


def _embedding_rows(folder, ids: list[int]) -> np.ndarray:
    """The token embedding the graph computes, read through an extra output of a copy of the graph."""
    model = onnx.load(str(folder / "model.onnx"))
    embedded = next(n for n in model.graph.node if n.name == "wte/dequantize").output[0]
    model.graph.output.append(onnx.helper.make_tensor_value_info(embedded, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([embedded], _decoder_feeds(ids))[0][0]


def test_int8_embedding_is_lm_heads_int8_weight_dequantized(exports):
    """One int8 table for both: embedding row v equals lm_head's dequantized column v."""
    weights = _initializers(exports["int8"] / "model.onnx")
    assert "transformer.wte.weight" not in weights  # the float table is gone
    head = weights["lm_head.weight.T.int8"].astype(np.float32) * weights["lm_head.weight.T.scale"]
    ids = [5, 50256, 1234]
    np.testing.assert_allclose(_embedding_rows(exports["int8"], ids), head[:, ids].T, rtol=1e-6, atol=1e-7)


def test_untied_checkpoint_keeps_its_own_embedding_in_int8(tmp_path):
    """A fine-tune with untied lm_head: the embedding cannot come from lm_head; it is its own table,
    quantized to int8 rows."""
    import torch

    from chatbot_llm.models import ensure_export, resolve_model

    checkpoint = make_checkpoint(tmp_path / "untied", tie_word_embeddings=False)
    torch.manual_seed(1)  # make lm_head really differ from the embedding
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(checkpoint)
    with torch.no_grad():
        model.lm_head.weight.copy_(torch.randn_like(model.lm_head.weight))
    model.save_pretrained(checkpoint)
    wte = model.transformer.wte.weight.detach().numpy()
    folder = ensure_export(resolve_model(str(checkpoint)), "int8", on_stage=lambda s: None)
    weights = _initializers(folder / "model.onnx")
    ids = [5, 50256, 1234]
    step = weights["wte.scale"][ids][:, None]
    assert np.all(np.abs(_embedding_rows(folder, ids) - wte[ids]) <= step * 0.501 + 1e-7)


def test_erf_gelu_checkpoints_get_the_decoder_graph_and_match_pytorch(tmp_path):
    """activation_function "gelu" (erf) instead of GPT-2's tanh approximation: held to opt's 1e-4
    parity bound by the export itself (it fails past it)."""
    import json

    from chatbot_llm.models import ensure_export, resolve_model

    checkpoint = make_checkpoint(tmp_path / "gelu", activation_function="gelu")
    folder = ensure_export(resolve_model(str(checkpoint)), "opt", on_stage=lambda s: None)
    parity = json.loads((folder / "manifest.json").read_text())["parity"]
    assert parity["max_abs_logits_delta"] <= 1e-4 * max(1, parity["max_abs_logits"])
    assert parity["greedy_token_agreement"] == 1.0


@pytest.mark.parametrize("options, message", [
    (dict(activation_function="relu"), "activation 'relu' has no decoder-graph kernel; export --variant fp32"),
    (dict(scale_attn_by_inverse_layer_idx=True), "non-standard attention scaling .* export --variant fp32"),
])
def test_gpt2_options_without_a_decoder_graph_kernel_point_to_fp32(tmp_path, options, message):
    """transformers itself applies scale_attn_by_inverse_layer_idx in eager attention but not in sdpa."""
    from chatbot_llm.errors import UsageError
    from chatbot_llm.models import ensure_export, resolve_model

    checkpoint = make_checkpoint(tmp_path / "odd", **options)
    with pytest.raises(UsageError, match=message):
        ensure_export(resolve_model(str(checkpoint)), "opt", on_stage=lambda s: None)
