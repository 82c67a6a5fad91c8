"""A GPT-2 decoder graph written for decoding, from a checkpoint's weights.

Optimum's export computes attention with ~60 small nodes per layer (Transpose, Concat of a growing
KV cache, masks built from Shape/Slice/Where) that ONNX Runtime's optimizer cannot fuse for
transformers 4.57's attention code. This graph is written the way the runtime wants it:

    embeddings:  Gather(wte, input_ids) + Gather(wpe, position_ids)
    per block:   LayerNorm -> packed QKV MatMul + bias -> GroupQueryAttention -> output MatMul
                 -> SkipLayerNorm (adds the residual) -> MatMul + FastGelu -> MatMul -> SkipLayerNorm
    head:        the hidden state of the positions in `logits_index` only -> lm_head

GroupQueryAttention reads and writes one preallocated KV buffer per layer, (batch, heads, capacity,
head_dim), bound as both past and present: no Concat, no growth. Each row carries its own length
(`seqlens_k` = tokens in the cache after this step - 1) and its number of new tokens
(`query_seqlens`, right padding after them; 0 leaves the row idle). So a row's tokens sit at the same
positions whatever else is in the batch, and rows of any lengths prefill together.

Inputs:  input_ids, position_ids (batch, seq) int64; seqlens_k, query_seqlens (batch,) int32;
         total_sequence_length () int32 (an upper bound: the buffer's capacity);
         logits_index (n,) int64: the positions that get logits, as flat indexes into (batch x seq);
         past_key_values.{i}.key / .value (batch, heads, capacity, head_dim).
Outputs: logits (n, vocab) float32; present.{i}.key / .value (the same buffers).

Two layouts of the same graph:
- the CPU provider's (opt, int8, int4): as above.
- the CUDA provider's (fp16, ``cuda_layout``): no ``query_seqlens`` (onnxruntime-gpu 1.31's
  GroupQueryAttention has no such input, so a graph that wires it does not load on a GPU): every
  row takes the same number of new tokens, a prompt step is GQA's first-prompt case (right padding,
  total_sequence_length = the padded width) and a decode step gives every slot one token
  (runtime/static_kv.py). One more output, ``next_token`` (n,) int64: the ArgMax of each logits row
  (the first of equal maxima), so greedy decoding copies one integer per row back to the host
  instead of the whole vocabulary.
Both use opset 18 for the default domain: every op then resolves to a version the CUDA provider
has had kernels for since long before 1.31 (Cast-21 and Reshape-21 are newer). The int8 variant,
which runs on the CPU provider only, moves to opset 21 for its blocked QuantizeLinear (export/graph.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MS = "com.microsoft"
OPSET = 18
GRAPH_INPUTS = ("input_ids", "position_ids", "seqlens_k", "query_seqlens", "total_sequence_length", "logits_index")
# GroupQueryAttention's inputs by position (onnxruntime 1.32 schema); the unused ones stay empty
GQA_QUERY_SEQLENS = 16
ACTIVATIONS = {"gelu_new": "FastGelu", "gelu_pytorch_tanh": "FastGelu", "gelu_fast": "FastGelu", "gelu": "Gelu"}


class DecoderGraph:
    """Builds the graph of one checkpoint; ``weights`` maps Hugging Face GPT-2 names to arrays."""

    def __init__(self, config: dict, weights: dict[str, np.ndarray], dtype=np.float32,
                 lm_head_as_matmul: bool = False, cuda_layout: bool = False):
        activation = config.get("activation_function", "gelu_new")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r} has no decoder-graph kernel; export --variant fp32")
        if config.get("scale_attn_by_inverse_layer_idx") or not config.get("scale_attn_weights", True):
            # transformers 4.57 applies these in its eager attention only, not in sdpa (its default):
            # which scaling the checkpoint means is not clear, so the reference graph it is
            raise ValueError("non-standard attention scaling (scale_attn_by_inverse_layer_idx or "
                             "scale_attn_weights false) has no decoder-graph kernel; export --variant fp32")
        self.config, self.weights, self.dtype = config, weights, np.dtype(dtype)
        self.activation = ACTIVATIONS[activation]
        self.lm_head_as_matmul = lm_head_as_matmul  # a constant MatMul weight, for weight quantization
        self.cuda_layout = cuda_layout  # no query_seqlens; a next_token output (see the module's docstring)
        self.inputs = [n for n in GRAPH_INPUTS if not (cuda_layout and n == "query_seqlens")]
        self.layers, self.heads, self.width = config["n_layer"], config["n_head"], config["n_embd"]
        self.eps = float(config.get("layer_norm_epsilon", 1e-5))
        self.elem = TensorProto.FLOAT16 if self.dtype == np.float16 else TensorProto.FLOAT
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    # ------------------------------------------------------------------ helpers

    def weight(self, name: str, array: np.ndarray | None = None) -> str:
        """An initializer in the graph's float type (or as given, for integers)."""
        value = self.weights[name] if array is None else array
        if value.dtype.kind == "f":
            value = value.astype(self.dtype)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str] | str, name: str, domain: str = "", **attrs):
        outputs = [outputs] if isinstance(outputs, str) else outputs
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, domain=domain, **attrs))
        return outputs[0] if len(outputs) == 1 else outputs

    # ------------------------------------------------------------------ GPT-2, top to bottom

    def embeddings(self) -> str:
        tokens = self.node("Gather", [self.weight("transformer.wte.weight"), "input_ids"], "tok_emb", "wte")
        positions = self.node("Gather", [self.weight("transformer.wpe.weight"), "position_ids"], "pos_emb", "wpe")
        return self.node("Add", [tokens, positions], "h.0.in", "embeddings")

    def attention(self, i: int, normed: str) -> str:
        """Packed QKV projection and fused causal attention over layer i's KV buffer."""
        p = f"transformer.h.{i}.attn"
        qkv = self.node("MatMul", [normed, self.weight(f"{p}.c_attn.weight")], f"h.{i}.qkv_mm", f"h.{i}.c_attn")
        qkv = self.node("Add", [qkv, self.weight(f"{p}.c_attn.bias")], f"h.{i}.qkv", f"h.{i}.c_attn_bias")
        inputs = [qkv, "", "", f"past_key_values.{i}.key", f"past_key_values.{i}.value", "seqlens_k",
                  "total_sequence_length"]
        if not self.cuda_layout:
            inputs += [""] * (GQA_QUERY_SEQLENS - len(inputs)) + ["query_seqlens"]
        attrs = {"num_heads": self.heads, "kv_num_heads": self.heads}
        attrs["scale"] = float(1.0 / np.sqrt(self.width // self.heads))
        out = self.node("GroupQueryAttention", inputs,
                        [f"h.{i}.attn_out", f"present.{i}.key", f"present.{i}.value"], f"h.{i}.attn", MS, **attrs)[0]
        # the output projection's bias is added by the SkipLayerNorm that follows
        return self.node("MatMul", [out, self.weight(f"{p}.c_proj.weight")], f"h.{i}.attn_proj", f"h.{i}.c_proj")

    def mlp(self, i: int, normed: str) -> str:
        p = f"transformer.h.{i}.mlp"
        up = self.node("MatMul", [normed, self.weight(f"{p}.c_fc.weight")], f"h.{i}.fc", f"h.{i}.c_fc")
        if self.activation == "FastGelu":
            act = self.node("FastGelu", [up, self.weight(f"{p}.c_fc.bias")], f"h.{i}.gelu", f"h.{i}.gelu", MS)
        else:
            biased = self.node("Add", [up, self.weight(f"{p}.c_fc.bias")], f"h.{i}.fc_b", f"h.{i}.c_fc_bias")
            act = self.node("Gelu", [biased], f"h.{i}.gelu", f"h.{i}.gelu", MS)
        return self.node("MatMul", [act, self.weight(f"{p}.c_proj.weight")], f"h.{i}.mlp_out", f"h.{i}.mlp_proj")

    def skip_layer_norm(self, name: str, branch: str, residual: str, norm: str, bias: str) -> tuple[str, str]:
        """residual + branch + bias -> (LayerNorm of the sum, the sum), in one kernel."""
        normed, _, _, summed = self.node(
            "SkipLayerNormalization",
            [branch, residual, self.weight(f"{norm}.weight"), self.weight(f"{norm}.bias"), self.weight(bias)],
            [f"{name}.normed", "", "", f"{name}.sum"], name, MS, epsilon=self.eps)
        return normed, summed

    def block(self, i: int, hidden: str, normed: str) -> tuple[str, str]:
        """One transformer block: the residual after attention, and the MLP branch still to be added
        (with its bias) by the next SkipLayerNorm."""
        p = f"transformer.h.{i}"
        attn = self.attention(i, normed)
        normed2, hidden = self.skip_layer_norm(f"h.{i}.ln_2", attn, hidden, f"{p}.ln_2", f"{p}.attn.c_proj.bias")
        return hidden, self.mlp(i, normed2)

    def lm_head(self, final: str) -> str:
        """Logits of the positions in logits_index only (flat indexes into batch x seq): generation
        asks for the last new token of each active row, scoring for every position."""
        flat = self.node("Reshape", [final, self.weight("flat_shape", np.array([-1, self.width], np.int64))],
                         "hidden_2d", "lm_head/flatten")
        picked = self.node("Gather", [flat, "logits_index"], "picked", "lm_head/pick", axis=0)
        tied = "lm_head.weight" not in self.weights  # load_weights drops the tied copy
        head = self.weights["transformer.wte.weight" if tied else "lm_head.weight"]
        out = "logits" if self.dtype == np.float32 else "logits_raw"
        if self.lm_head_as_matmul:
            # a (width, vocab) constant, which weight-only quantization turns into MatMulNBits; the int8
            # export then reads the embedding from the same quantized bytes (graph.shared_int8_embedding)
            logits = self.node("MatMul", [picked, self.weight("lm_head.weight.T", head.T)], out, "lm_head")
        else:
            # Gemm with transB reads the tied (vocab, width) table itself, prepacked: no transposed copy
            table = "transformer.wte.weight" if tied else self.weight("lm_head.weight", head)
            logits = self.node("Gemm", [picked, table], out, "lm_head", transB=1)
        if self.dtype != np.float32:  # the sampler works in float32
            logits = self.node("Cast", [logits], "logits", "logits/float32", to=TensorProto.FLOAT)
        if self.cuda_layout:  # greedy's token, on the device: over the float32 logits the host would see
            self.node("ArgMax", [logits], "next_token", "next_token", axis=-1, keepdims=0)
        return logits

    def build(self) -> onnx.ModelProto:
        hidden = self.embeddings()
        normed = self.node("LayerNormalization", [hidden, self.weight("transformer.h.0.ln_1.weight"),
                                                   self.weight("transformer.h.0.ln_1.bias")],
                           "h.0.ln_1.normed", "h.0.ln_1", axis=-1, epsilon=self.eps)
        for i in range(self.layers):
            hidden, branch = self.block(i, hidden, normed)
            last = i == self.layers - 1
            norm = "transformer.ln_f" if last else f"transformer.h.{i + 1}.ln_1"
            name = "ln_f" if last else f"h.{i + 1}.ln_1"
            normed, hidden = self.skip_layer_norm(name, branch, hidden, norm, f"transformer.h.{i}.mlp.c_proj.bias")
        self.lm_head(normed)
        return self.model()

    def model(self) -> onnx.ModelProto:
        head_dim = self.width // self.heads
        cache = ["batch", self.heads, "capacity", head_dim]
        ints = {"input_ids": TensorProto.INT64, "position_ids": TensorProto.INT64, "logits_index": TensorProto.INT64,
                "seqlens_k": TensorProto.INT32, "query_seqlens": TensorProto.INT32,
                "total_sequence_length": TensorProto.INT32}
        shapes = {"input_ids": ["batch", "seq"], "position_ids": ["batch", "seq"], "logits_index": ["n"],
                  "seqlens_k": ["batch"], "query_seqlens": ["batch"], "total_sequence_length": []}
        inputs = [helper.make_tensor_value_info(n, ints[n], shapes[n]) for n in self.inputs]
        outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", self.config["vocab_size"]])]
        if self.cuda_layout:
            outputs.append(helper.make_tensor_value_info("next_token", TensorProto.INT64, ["n"]))
        for i in range(self.layers):
            for kind in ("key", "value"):
                inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", self.elem, cache))
                outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", self.elem, cache))
        graph = helper.make_graph(self.nodes, "gpt2_decoder", inputs, outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)],
                                  producer_name="chatbot-llm")
        model.ir_version = 9
        return model


def load_weights(checkpoint: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """config.json and float32 numpy weights of a Hugging Face GPT-2 checkpoint (any saved dtype)."""
    import torch
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(str(checkpoint), local_files_only=True, dtype=torch.float32)
    weights = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        weights.pop("lm_head.weight", None)
    return model.config.to_dict(), weights


def build_decoder(checkpoint: Path, dtype=np.float32, lm_head_as_matmul: bool = False,
                  cuda_layout: bool = False) -> onnx.ModelProto:
    config, weights = load_weights(checkpoint)
    return DecoderGraph(config, weights, dtype, lm_head_as_matmul, cuda_layout).build()
