"""An exported GPT-2 as an onnxruntime InferenceSession.

Three graph layouts, told apart by their inputs:
- the decoder graph (opt, int8, int4; export/decoder.py): ``seqlens_k``, ``query_seqlens`` and a
  fixed KV buffer per layer, generated through runtime.kv.KVBufferBatch;
- its CUDA layout (fp16): no ``query_seqlens``, a ``next_token`` output, generated through
  runtime.static_kv.StaticKVBatch (fixed buffers, every slot steps: a step is one CUDA-graph replay);
- Optimum's ``text-generation-with-past`` export (fp32, the reference): ``attention_mask``,
  ``position_ids`` and past tensors of shape (batch, heads, past_length, head_dim) that grow by
  one position a step, generated through runtime.kv.GrowingCacheBatch.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnxruntime as ort

from chatbot_llm.errors import ChatbotError, UsageError

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
CPU_VARIANTS = ("opt", "int8", "int4")  # the decoder graph's variants for the CPU provider
CUDA_GRAPH_RECIPE = 4  # the first export recipe whose fp16 graph is the CUDA layout
CUDA_GRAPH_ENV = "CHATBOT_LLM_CUDA_GRAPH"  # "0": no CUDA graphs, even where they would be on
_PAST_NAME = re.compile(r"past_key_values\.(\d+)\.(key|value)$")


@dataclass
class KVCache:
    """Keys and values of every layer for the rows still generating, in the graph's input order.

    numpy arrays on the CPU; onnxruntime OrtValues where IO binding keeps them on the device.
    """

    tensors: list[np.ndarray | ort.OrtValue]

    @property
    def length(self) -> int:
        first = self.tensors[0]
        return first.shape[2] if isinstance(first, np.ndarray) else first.shape()[2]

    def select(self, rows: np.ndarray) -> "KVCache":
        """Keep only these rows (rows that finished are dropped from the batch)."""
        if isinstance(self.tensors[0], np.ndarray):
            return KVCache([t[rows] for t in self.tensors])
        # on the device: a round trip through the host, only on the steps where a row finishes
        device = self.tensors[0].device_name().lower()
        return KVCache([ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(t.numpy()[rows]), device, 0)
                        for t in self.tensors])


class OnnxCausalLM:
    """Forward passes of one exported model; the decode loop lives in Generator."""

    def __init__(self, model_path: Path, device: str = "cpu", threads: int | None = None,
                 io_binding: bool | None = None, on_stage: Callable[[str], None] = lambda m: None,
                 cuda_graph: bool | None = None, spinning: bool = True):
        """device: cpu, cuda or auto. io_binding (default: on CUDA) keeps the KV cache where the
        session computed it between steps; only the last position's logits come back to the host.
        cuda_graph (default: on CUDA for an fp16 export of the CUDA layout, unless the environment's
        CHATBOT_LLM_CUDA_GRAPH is 0): capture a decode step once per buffer set and replay it.
        spinning: onnxruntime's intra-op threads busy-wait for the next work (its default), which a
        process that does nothing else between passes can afford; a server cannot (serve passes False)."""
        from chatbot_llm.runtime.device import providers_for, resolve_device, started_on

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: load-time notes are not the user's business
        if threads:
            options.intra_op_num_threads = threads
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        resolved = resolve_device(device, on_stage)
        manifest = _manifest_next_to(model_path)
        if resolved == "cuda" and manifest.get("variant") in CPU_VARIANTS:
            raise _cpu_variant_on_cuda(model_path)  # before onnxruntime-gpu fails to load it
        if cuda_graph is None:  # a session option: decided from the manifest, before the session exists
            cuda_graph = (resolved == "cuda" and manifest.get("variant") == "fp16"
                          and manifest.get("recipe", 0) >= CUDA_GRAPH_RECIPE
                          and os.environ.get(CUDA_GRAPH_ENV, "1") != "0")
        cuda_graph = bool(cuda_graph) and resolved == "cuda"  # the CPU provider has no graphs
        providers = providers_for(resolved, cuda_graph=cuda_graph)
        try:
            self.session = ort.InferenceSession(str(model_path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise ChatbotError(
                f"onnxruntime cannot load {model_path}: {str(exc).splitlines()[0]}; "
                "re-export it with: chatbot-llm export MODEL --force"
            ) from None
        self.device = started_on(self.session, device, on_stage)
        self.io_binding = self.device == "cuda" if io_binding is None else io_binding
        inputs = {i.name: i for i in self.session.get_inputs()}
        past = sorted(
            (int(m.group(1)), m.group(2) == "value", name)
            for name in inputs
            if (m := _PAST_NAME.match(name))
        )
        self.buffered = {"seqlens_k", "logits_index"} <= set(inputs)
        outputs = {o.name: o for o in self.session.get_outputs()}
        # the CUDA layout: every row takes the same number of new tokens, greedy's token comes back
        self.static = self.buffered and "query_seqlens" not in inputs and "next_token" in outputs
        if not past or not (self.buffered or {"input_ids", "attention_mask", "position_ids"} <= set(inputs)):
            raise UsageError(
                f"{model_path} is not a GPT-2 export with past_key_values inputs; "
                "export the checkpoint with: chatbot-llm export MODEL"
            )
        self.past_names = [name for _, _, name in past]
        first = inputs[self.past_names[0]]
        self.num_heads, self.head_dim = int(first.shape[1]), int(first.shape[3])
        self.past_dtype = _ORT_DTYPES[first.type]
        if self.device == "cuda" and self.buffered and self.past_dtype != np.float16:
            raise _cpu_variant_on_cuda(model_path)
        self.cuda_graph = cuda_graph and self.device == "cuda"
        if self.cuda_graph and not self.static:
            raise UsageError(f"{model_path} is not the CUDA layout of the decoder graph, which CUDA graphs need; "
                             "re-export it with: chatbot-llm export MODEL --variant fp16 --force")
        self.vocab_size = int(outputs["logits"].shape[-1]) if self.buffered else None
        # every run but a buffer set's decode step runs uncaptured (onnxruntime's default graph id is 0)
        self.uncaptured = None
        if self.cuda_graph:
            from chatbot_llm.runtime.static_kv import graph_run_options

            self.uncaptured = graph_run_options(-1)
        self._static_pool = None
        # recipe-2 opt/int8 exports (Optimum's graph rewritten) have a logits_to_keep input; a bare
        # export folder of that kind still works, with logits for the last position only
        self.last_only = {"logits_to_keep": np.ones(1, np.int64)} if "logits_to_keep" in inputs else {}
        self.output_names = ["logits"] + [n.replace("past_key_values", "present") for n in self.past_names]

    def start(self, prompts: Sequence[Sequence[int]], capacity: int, pad_id: int):
        """The KV cache of a new batch: prompts, and room for `capacity` tokens in its longest row."""
        from chatbot_llm.runtime.kv import GrowingCacheBatch, KVBufferBatch
        from chatbot_llm.runtime.static_kv import StaticKVBatch

        if self.static:
            return StaticKVBatch(self, prompts, capacity)
        if self.buffered:
            return KVBufferBatch(self, prompts, capacity)
        return GrowingCacheBatch(self, prompts, pad_id)

    @property
    def static_pool(self):
        """The buffer sets of the CUDA layout's batches (runtime/static_kv.py), made on first use."""
        if self._static_pool is None:
            from chatbot_llm.runtime.static_kv import BufferPool

            self._static_pool = BufferPool(self)
        return self._static_pool

    def lease_static(self, rows: int, need: int):
        """A buffer set for a batch of `rows` rows that needs room for `need` tokens in its longest row:
        one no live batch holds, of the shape whose CUDA graph may already be captured."""
        return self.static_pool.lease(rows, need)

    @property
    def can_join(self) -> bool:
        """Can a running batch take new rows (KVBufferBatch.join: the decoder graph's CPU layout, numpy
        buffers)? The CUDA layout's fixed buffers and Optimum's growing cache cannot."""
        return self.buffered and not self.static and not self.io_binding

    def empty_cache(self, batch: int) -> KVCache:
        shape = (batch, self.num_heads, 0, self.head_dim)
        return KVCache([np.zeros(shape, self.past_dtype) for _ in self.past_names])

    def forward(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray, cache: KVCache
    ) -> tuple[np.ndarray, KVCache]:
        """Logits of the last position of each row (float32), and the cache grown by the new tokens."""
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        feeds.update(self.last_only)
        if self.io_binding:
            return self._forward_bound(feeds, cache)
        feeds.update(zip(self.past_names, cache.tensors))
        logits, *present = self.session.run(self.output_names, feeds)
        return np.array(logits[:, -1, :], dtype=np.float32), KVCache(present)

    def _forward_bound(self, feeds: dict[str, np.ndarray], cache: KVCache) -> tuple[np.ndarray, KVCache]:
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for name, value in zip(self.past_names, cache.tensors):
            if isinstance(value, np.ndarray):  # the empty cache of the first step
                value = ort.OrtValue.ortvalue_from_numpy(value, self.device, 0)
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")
        for name in self.output_names[1:]:
            binding.bind_output(name, self.device, 0)
        self.session.run_with_iobinding(binding)
        logits, *present = binding.get_outputs()
        return np.array(logits.numpy()[:, -1, :], dtype=np.float32), KVCache(present)

    def prompt_logits(self, ids: Sequence[int]) -> np.ndarray:
        """Float32 logits of every position of one token sequence, in one pass with an empty cache."""
        x = np.asarray(ids, np.int64)[None, :]
        positions = np.arange(x.shape[1])[None, :]
        if self.buffered:
            length = np.array([x.shape[1]], np.int32)
            feeds = {"input_ids": x, "position_ids": positions, "seqlens_k": length - 1,
                     "total_sequence_length": np.array(x.shape[1], np.int32), "logits_index": positions[0]}
            if not self.static:
                feeds["query_seqlens"] = length
            feeds.update(zip(self.past_names, self.empty_cache(1).tensors))  # present: just these tokens
            return np.asarray(self.session.run(["logits"], feeds, self.uncaptured)[0], np.float32)
        feeds = {"input_ids": x, "attention_mask": np.ones_like(x), "position_ids": positions}
        feeds.update(zip(self.past_names, self.empty_cache(1).tensors))
        return np.asarray(self.session.run(["logits"], feeds)[0][0], np.float32)

    def token_logprobs(self, ids: list[int], start: int) -> np.ndarray:
        """log p(ids[i] | ids[:i]) for i >= start, at temperature 1 with no processors, in one pass."""
        x = np.asarray(ids, np.int64)[None, :]
        logits = self.prompt_logits(ids)[start - 1 : -1].astype(np.float64)
        top = logits.max(axis=-1, keepdims=True)
        log_norm = top[:, 0] + np.log(np.exp(logits - top).sum(axis=-1))
        return logits[np.arange(len(logits)), x[0, start:]] - log_norm


def _cpu_variant_on_cuda(model_path: Path) -> UsageError:
    # GroupQueryAttention has CUDA kernels for float16/bfloat16 only (and the integer GEMMs of int8
    # none): onnxruntime would run those nodes on the CPU, across the device's KV buffer
    return UsageError(f"{model_path} is a CPU variant of the decoder graph; on --device cuda run "
                      "--variant fp16 (the default there) or fp32")


def _manifest_next_to(model_path: Path) -> dict:
    """The export's manifest.json, or {} for a model file without one (checked by models.py, not here)."""
    try:
        manifest = json.loads((Path(model_path).parent / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def read_model_config(folder: Path) -> dict:
    """config.json of a checkpoint or an export, checked to be a GPT-2 causal LM."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise UsageError(f"{folder} is not a GPT-2 checkpoint: it has no config.json")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict) or config.get("model_type") != "gpt2":
        kind = config.get("model_type") if isinstance(config, dict) else None
        raise UsageError(f"{folder} is not a GPT-2 checkpoint (config.json model_type is {kind!r}, not 'gpt2')")
    return config


def eos_and_context(config: dict) -> tuple[int, int]:
    """The EOS token id and the context length (n_positions) of a GPT-2 config."""
    return int(config.get("eos_token_id", 50256)), int(config["n_positions"])
