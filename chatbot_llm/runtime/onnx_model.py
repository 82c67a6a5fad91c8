"""An exported GPT-2 as an onnxruntime InferenceSession.

Two graph layouts, told apart by their inputs:
- the decoder graph (opt, int8, int4, fp16; export/decoder.py): ``seqlens_k``, ``query_seqlens`` and a
  fixed KV buffer per layer, generated through runtime.kv.KVBufferBatch;
- Optimum's ``text-generation-with-past`` export (fp32, the reference): ``attention_mask``,
  ``position_ids`` and past tensors of shape (batch, heads, past_length, head_dim) that grow by
  one position a step, generated through runtime.kv.GrowingCacheBatch.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnxruntime as ort

from chatbot_llm.errors import ChatbotError, UsageError

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
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
                 io_binding: bool | None = None, on_stage: Callable[[str], None] = lambda m: None):
        """device: cpu, cuda or auto. io_binding (default: on CUDA) keeps the KV cache where the
        session computed it between steps; only the last position's logits come back to the host."""
        from chatbot_llm.runtime.device import providers_for, resolve_device, started_on

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: load-time notes are not the user's business
        if threads:
            options.intra_op_num_threads = threads
        providers = providers_for(resolve_device(device, on_stage))
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
        self.buffered = {"seqlens_k", "query_seqlens", "logits_index"} <= set(inputs)
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
            # GroupQueryAttention has CUDA kernels for float16/bfloat16 only (and the integer GEMMs of
            # int8 none): onnxruntime would run those nodes on the CPU, across the device's KV buffer
            raise UsageError(f"{model_path} is a CPU variant of the decoder graph; on --device cuda run "
                             "--variant fp16 (the default there) or fp32")
        # recipe-2 opt/int8 exports (Optimum's graph rewritten) have a logits_to_keep input; a bare
        # export folder of that kind still works, with logits for the last position only
        self.last_only = {"logits_to_keep": np.ones(1, np.int64)} if "logits_to_keep" in inputs else {}
        self.output_names = ["logits"] + [n.replace("past_key_values", "present") for n in self.past_names]

    def start(self, prompts: Sequence[Sequence[int]], capacity: int, pad_id: int):
        """The KV cache of a new batch: prompts, and room for `capacity` tokens in its longest row."""
        from chatbot_llm.runtime.kv import GrowingCacheBatch, KVBufferBatch

        if self.buffered:
            return KVBufferBatch(self, prompts, capacity)
        return GrowingCacheBatch(self, prompts, pad_id)

    @property
    def can_join(self) -> bool:
        """Can a running batch take new rows (KVBufferBatch.join: the decoder graph, numpy buffers)?"""
        return self.buffered and not self.io_binding

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
            feeds = {"input_ids": x, "position_ids": positions, "seqlens_k": length - 1, "query_seqlens": length,
                     "total_sequence_length": np.array(x.shape[1], np.int32), "logits_index": positions[0]}
            feeds.update(zip(self.past_names, self.empty_cache(1).tensors))  # present: just these tokens
            return np.asarray(self.session.run(["logits"], feeds)[0], np.float32)
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
