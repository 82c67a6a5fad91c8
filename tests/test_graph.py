"""The graph rewrites of opt and int8 (export/graph.py) change how the model computes, not what."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from chatbot_llm.runtime.generator import left_pad
from chatbot_llm.runtime.onnx_model import OnnxCausalLM
from tests.conftest import make_checkpoint


def _feeds(model: OnnxCausalLM) -> dict:
    ids, mask, positions = left_pad([[464, 3290, 373, 257], [40, 1101]], 50256)
    feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
    feeds.update(zip(model.past_names, model.empty_cache(2).tensors))
    return feeds


@pytest.mark.parametrize("variant", ["opt", "int8"])
def test_logits_to_keep_gives_the_last_positions_logits_alone(exports, variant):
    model = OnnxCausalLM(exports[variant] / "model.onnx")
    feeds = _feeds(model)
    full = model.session.run(["logits"], feeds)[0]  # the default keeps every position
    last = model.session.run(["logits"], {**feeds, "logits_to_keep": np.array([1], np.int64)})[0]
    assert full.shape[1] == 4 and last.shape[1] == 1
    np.testing.assert_allclose(last[:, 0], full[:, -1], atol=1e-5)
    # and forward(), which generation uses, asks for the last position only
    logits, _ = model.forward(feeds["input_ids"], feeds["attention_mask"], feeds["position_ids"], model.empty_cache(2))
    np.testing.assert_allclose(logits, full[:, -1], atol=1e-5)


def _initializers(path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def test_int8_has_no_float_weight_matrix_left_but_the_position_table(exports):
    graph = onnx.load(str(exports["int8"] / "model.onnx")).graph
    ops = {n.op_type for n in graph.node}
    assert "GatherBlockQuantized" in ops and "Gemm" not in ops
    floats = {name: a.shape for name, a in _initializers(exports["int8"] / "model.onnx").items()
              if a.dtype == np.float32 and a.ndim == 2 and min(a.shape) > 1 and "scales" not in name}
    assert floats == {"transformer.wpe.weight": (64, 32)}


def test_int8_embedding_is_lm_heads_int8_weight_dequantized(exports):
    """The shared table: embedding row v equals lm_head's dequantized row v."""
    weights = _initializers(exports["int8"] / "model.onnx")
    q = weights["transformer.wte.weight_transposed_Q8"].reshape(50257, -1).astype(np.float32) - 128
    scales = np.repeat(weights["transformer.wte.weight_transposed_scales"].reshape(50257, -1), 32, axis=1)
    # read the embedding through an extra output of a copy of the graph
    model = onnx.load(str(exports["int8"] / "model.onnx"))
    gather = next(n for n in model.graph.node if n.op_type == "GatherBlockQuantized")
    embedded = next(n for n in model.graph.node if gather.output[0] in n.input).output[0]  # after its Reshape
    model.graph.output.append(onnx.helper.make_tensor_value_info(embedded, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    feeds = {"input_ids": np.array([[5, 50256, 1234]]), "attention_mask": np.ones((1, 3), np.int64),
             "position_ids": np.arange(3)[None]}
    feeds.update({n: np.zeros((1, 2, 0, 16), np.float32) for n in names if n.startswith("past")})
    out = session.run([embedded], feeds)[0]
    np.testing.assert_allclose(out[0], (q * scales)[[5, 50256, 1234]], rtol=1e-6, atol=1e-7)


def test_untied_checkpoint_keeps_its_own_embedding_in_int8(tmp_path):
    """A fine-tune with untied lm_head: the embedding cannot come from lm_head, and is kept."""
    from chatbot_llm.models import ensure_export, resolve_model

    checkpoint = make_checkpoint(tmp_path / "untied", tie_word_embeddings=False)
    folder = ensure_export(resolve_model(str(checkpoint)), "int8", on_stage=lambda s: None)
    graph = onnx.load(str(folder / "model.onnx")).graph
    assert "GatherBlockQuantized" not in {n.op_type for n in graph.node}
    assert _initializers(folder / "model.onnx")["transformer.wte.weight"].shape == (50257, 32)
