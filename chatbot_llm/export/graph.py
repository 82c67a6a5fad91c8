"""Rewrites of the exported gpt2 graph that ONNX Runtime's optimizer and quantizer do not make.

Each one changes how the graph computes, never what: the export's parity check against PyTorch
holds every variant to the same logits.

- ``keep_last_logits``: a ``logits_to_keep`` input (default 0 = every position) slices the hidden
  states before lm_head. Generation needs only the last position's logits, so a prefill of a
  20-token prompt no longer runs the largest matmul of the model 20 times, nor allocates
  [batch, 20, 50257] floats; scoring a text (sweep) still asks for all of them.
- ``gemm_to_matmul``: attention's output projection is a Gemm, which weight-only quantization does
  not cover; as MatMul + Add it is quantized like every other projection.
- ``shared_int8_embedding``: after quantization, the token embedding is read from lm_head's int8
  weight (GatherBlockQuantized over the same bytes) instead of a float32 copy of the tied matrix.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

LOGITS_TO_KEEP = "logits_to_keep"
MS_DOMAIN = "com.microsoft"


def _producer(graph: onnx.GraphProto, output: str) -> onnx.NodeProto:
    return next(n for n in graph.node if output in n.output)


def _initializer(graph: onnx.GraphProto, name: str) -> onnx.TensorProto | None:
    return next((t for t in graph.initializer if t.name == name), None)


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _ensure_ms_opset(model: onnx.ModelProto) -> None:
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))


def _lm_head(graph: onnx.GraphProto) -> onnx.NodeProto:
    node = _producer(graph, "logits")
    if node.op_type not in ("MatMul", "MatMulNBits"):
        raise ValueError(f"logits come from a {node.op_type}, not lm_head's MatMul")
    return node


def keep_last_logits(model: onnx.ModelProto) -> None:
    """Add the ``logits_to_keep`` input: logits for the last k positions only (0 keeps them all)."""
    graph = model.graph
    head = _lm_head(graph)
    hidden = head.input[0]
    graph.input.append(helper.make_tensor_value_info(LOGITS_TO_KEEP, TensorProto.INT64, [1]))
    # an initializer of the same name is the input's default (ONNX IR >= 4): full logits, as before
    graph.initializer.extend([
        numpy_helper.from_array(np.array([0], np.int64), LOGITS_TO_KEEP),
        numpy_helper.from_array(np.array([np.iinfo(np.int64).max], np.int64), "logits_to_keep_end"),
        numpy_helper.from_array(np.array([1], np.int64), "logits_to_keep_axis"),
    ])
    start, kept = "logits_to_keep_start", hidden + "_kept"
    index = list(graph.node).index(head)
    graph.node.insert(index, helper.make_node("Neg", [LOGITS_TO_KEEP], [start], name="logits_to_keep/Neg"))
    graph.node.insert(index + 1, helper.make_node(
        "Slice", [hidden, start, "logits_to_keep_end", "logits_to_keep_axis"], [kept], name="logits_to_keep/Slice"
    ))
    head.input[0] = kept


def gemm_to_matmul(model: onnx.ModelProto) -> int:
    """Gemm(A, B, C) with constant B, no transposes and unit alpha/beta -> MatMul + Add."""
    graph = model.graph
    count = 0
    for node in list(graph.node):
        if node.op_type != "Gemm" or len(node.input) != 3 or _initializer(graph, node.input[1]) is None:
            continue
        attrs = _attrs(node)
        if attrs.get("transA", 0) or attrs.get("transB", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            continue
        product = node.output[0] + "_matmul"
        index = list(graph.node).index(node)
        graph.node.insert(index, helper.make_node("MatMul", node.input[:2], [product], name=node.name + "_MatMul"))
        graph.node.insert(index + 1, helper.make_node("Add", [product, node.input[2]], list(node.output),
                                                      name=node.name + "_Add"))
        graph.node.remove(node)
        count += 1
    return count


def shared_int8_embedding(model: onnx.ModelProto) -> bool:
    """Gather(wte fp32) -> GatherBlockQuantized over lm_head's 8-bit weight; the fp32 table goes.

    Only when lm_head's MatMulNBits weight is the quantized tied embedding: same shape, and its
    dequantized values within one quantization step of the float table (the quantizer clips the
    largest positive value of a block by one step).
    """
    graph = model.graph
    head = _lm_head(graph)
    if head.op_type != "MatMulNBits" or len(head.input) != 3:  # symmetric: no zero points input
        return False
    attrs = _attrs(head)
    vocab, width, block, bits = attrs["N"], attrs["K"], attrs["block_size"], attrs["bits"]
    weight, scales = _initializer(graph, head.input[1]), _initializer(graph, head.input[2])
    gathers = [n for n in graph.node if n.op_type == "Gather" and (t := _initializer(graph, n.input[0])) is not None
               and list(t.dims) == [vocab, width]]
    if bits != 8 or weight is None or scales is None or len(gathers) != 1:
        return False
    gather, table = gathers[0], _initializer(graph, gathers[0].input[0])
    blocks = width // block
    q = numpy_helper.to_array(weight).reshape(vocab, blocks, block).astype(np.float32) - 128
    s = numpy_helper.to_array(scales).reshape(vocab, blocks, 1).astype(np.float32)
    dense = numpy_helper.to_array(table).reshape(vocab, blocks, block)
    if not np.all(np.abs(q * s - dense) <= np.abs(s) * 1.001 + 1e-7):  # scales may be negative
        return False  # lm_head is not the tied embedding
    block_scales = numpy_helper.from_array(s, scales.name + "_per_block")
    graph.initializer.extend([block_scales, numpy_helper.from_array(np.array([0, 0, width], np.int64),
                                                                    "embedding_shape")])
    blocked = gather.output[0] + "_blocked"
    index = list(graph.node).index(gather)
    graph.node.insert(index, helper.make_node(
        "GatherBlockQuantized", [weight.name, gather.input[1], block_scales.name], [blocked],
        name=gather.name + "_int8", domain=MS_DOMAIN, gather_axis=0, quantize_axis=2, block_size=block, bits=8,
    ))
    graph.node.insert(index + 1, helper.make_node("Reshape", [blocked, "embedding_shape"], list(gather.output),
                                                  name=gather.name + "_int8_reshape"))
    graph.node.remove(gather)
    if not any(table.name in n.input for n in graph.node):
        graph.initializer.remove(table)
    _ensure_ms_opset(model)
    return True
