"""Quantization of the decoder graph (export/decoder.py) that ONNX Runtime's quantizers do not make.

- ``per_row_int8``: every weight MatMul as uint8 x int8 integer GEMM with one activation scale per
  row, so a row's numbers never depend on its batch (the int8 variant);
- ``int8_embedding``: the token embedding as int8 rows, read from lm_head's quantized weight when
  the two are tied.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from chatbot_llm.export.decoder import MS as MS_DOMAIN

INT8_OPSET = 21  # blocked QuantizeLinear (one scale per row of the activations)


def _initializer(graph: onnx.GraphProto, name: str) -> onnx.TensorProto | None:
    return next((t for t in graph.initializer if t.name == name), None)


def _ensure_ms_opset(model: onnx.ModelProto) -> None:
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))


def per_row_int8(model: onnx.ModelProto) -> int:
    """MatMul(x, W) with a constant float W -> an integer GEMM, uint8 x int8, on MLAS's fast U8S8
    kernels (int8 x int8 runs a slow reference path on the CPU, measured ~50x slower).

    W: int8, symmetric, one scale per output column (once, here). x: one scale per row, max |x| of
    the row / 127, quantized to round(x / scale) + 128 at run time by one blocked QuantizeLinear
    (opset 21: a block as long as the row, so one scale per row). A row's scale depends on that
    row alone, so its result does not change with its batch neighbours (one scale per tensor, as
    DynamicQuantizeMatMul uses, would); and integer sums are exact, so the GEMM kernel's blocking,
    which depends on the batch size, cannot change them either. The model's default-domain opset
    becomes 21 (the int8 variant runs on the CPU provider only, which has QuantizeLinear-21).
    """
    graph = model.graph
    graph.initializer.extend([
        numpy_helper.from_array(np.array([-1], np.int64), "int8/last_axis"),
        numpy_helper.from_array(np.array(1 / 127, np.float32), "int8/inv127"),
        numpy_helper.from_array(np.array(1e-30, np.float32), "int8/tiny"),
        numpy_helper.from_array(np.array([1.0], np.float32), "int8/one"),
        numpy_helper.from_array(np.array([128], np.uint8), "int8/zero_point"),
    ])
    count = 0
    for node in list(graph.node):
        weight = _initializer(graph, node.input[1]) if node.op_type == "MatMul" else None
        if weight is None or len(weight.dims) != 2:
            continue
        w = numpy_helper.to_array(weight).astype(np.float32)
        w_scale = (np.maximum(np.abs(w).max(axis=0), 1e-30) / 127).astype(np.float32)
        w_q = np.clip(np.round(w / w_scale), -127, 127).astype(np.int8)
        p, x = node.name, node.input[0]
        graph.initializer.extend([numpy_helper.from_array(w_q, f"{weight.name}.int8"),
                                  numpy_helper.from_array(w_scale, f"{weight.name}.scale")])
        new = [
            helper.make_node("Abs", [x], [f"{p}/abs"], name=f"{p}/abs"),
            helper.make_node("ReduceMax", [f"{p}/abs", "int8/last_axis"], [f"{p}/max"], name=f"{p}/max", keepdims=1),
            helper.make_node("Mul", [f"{p}/max", "int8/inv127"], [f"{p}/s"], name=f"{p}/s"),
            helper.make_node("Max", [f"{p}/s", "int8/tiny"], [f"{p}/x_scale"], name=f"{p}/x_scale"),
            # the zero point has the scale's shape (x's, with 1 for the last axis), as blocked
            # quantization wants: the integer GEMM's zero point, 128, everywhere
            helper.make_node("Shape", [f"{p}/x_scale"], [f"{p}/scale_shape"], name=f"{p}/scale_shape"),
            helper.make_node("Expand", ["int8/zero_point", f"{p}/scale_shape"], [f"{p}/x_zero_point"],
                             name=f"{p}/x_zero_point"),
            # round(x / scale) + 128 (half to even), in [1, 255]; one block per row
            helper.make_node("QuantizeLinear", [x, f"{p}/x_scale", f"{p}/x_zero_point"], [f"{p}/x_uint8"],
                             name=f"{p}/x_uint8", axis=-1, block_size=int(w.shape[0])),
            helper.make_node("MatMulIntegerToFloat", [f"{p}/x_uint8", f"{weight.name}.int8", "int8/one",
                                                      f"{weight.name}.scale", "int8/zero_point"],
                             [f"{p}/y_rows"], name=f"{p}/int8", domain=MS_DOMAIN),
            helper.make_node("Mul", [f"{p}/y_rows", f"{p}/x_scale"], list(node.output), name=f"{p}/y"),
        ]
        index = list(graph.node).index(node)
        for offset, n in enumerate(new):
            graph.node.insert(index + offset, n)
        graph.node.remove(node)
        graph.initializer.remove(weight)
        count += 1
    _ensure_ms_opset(model)
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = max(opset.version, INT8_OPSET)
    return count


def int8_embedding(model: onnx.ModelProto) -> bool:
    """The token embedding as int8 rows with one scale each, taken from lm_head's quantized weight
    when lm_head is the tied embedding (then the float table goes), else from the table itself."""
    graph = model.graph
    gather = next(n for n in graph.node if n.op_type == "Gather" and n.name == "wte")
    table = _initializer(graph, gather.input[0])
    if table is None:
        return False
    dense = numpy_helper.to_array(table).astype(np.float32)
    head = _initializer(graph, "lm_head.weight.T.int8")
    scale = _initializer(graph, "lm_head.weight.T.scale")
    q = s = None
    if head is not None and scale is not None:
        q, s = numpy_helper.to_array(head).T, numpy_helper.to_array(scale)
        if q.shape != dense.shape or not np.all(np.abs(q * s[:, None] - dense) <= s[:, None] * 0.501 + 1e-7):
            q = None  # an untied lm_head: quantize the table itself
    if q is None:
        s = (np.maximum(np.abs(dense).max(axis=1), 1e-30) / 127).astype(np.float32)
        q = np.clip(np.round(dense / s[:, None]), -127, 127).astype(np.int8)
    graph.initializer.extend([numpy_helper.from_array(np.ascontiguousarray(q), "wte.int8"),
                              numpy_helper.from_array(s.astype(np.float32), "wte.scale"),
                              numpy_helper.from_array(np.array([-1], np.int64), "wte/scale_axis")])
    ids = gather.input[1]
    index = list(graph.node).index(gather)
    new = [
        helper.make_node("Gather", ["wte.int8", ids], ["wte/rows"], name="wte/rows"),
        helper.make_node("Cast", ["wte/rows"], ["wte/rows_float"], name="wte/rows_float", to=TensorProto.FLOAT),
        helper.make_node("Gather", ["wte.scale", ids], ["wte/row_scale"], name="wte/row_scale"),
        helper.make_node("Unsqueeze", ["wte/row_scale", "wte/scale_axis"], ["wte/row_scale_3d"], name="wte/scale_3d"),
        helper.make_node("Mul", ["wte/rows_float", "wte/row_scale_3d"], list(gather.output), name="wte/dequantize"),
    ]
    for offset, n in enumerate(new):
        graph.node.insert(index + offset, n)
    graph.node.remove(gather)
    if not any(table.name in n.input for n in graph.node):
        graph.initializer.remove(table)
    return True
