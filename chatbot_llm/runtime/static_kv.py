"""Fixed buffers for the CUDA provider's layout of the decoder graph (fp16): a decode step is one
CUDA-graph replay.

A CUDA graph replays the kernels it captured, on the same device addresses, with the same shapes and
the same CPU-side inputs. So everything a decode step reads or writes lives in a *buffer set* made
once and bound once: the KV buffer of every layer (bound as both past and present), the step's
inputs (input_ids, position_ids, seqlens_k, logits_index) and outputs (logits, next_token). A step
only writes new values into its inputs, in place (``OrtValue.update_inplace``), and runs the same
binding with the set's own ``gpu_graph_id``: onnxruntime captures the step the first time it sees
that id and replays it after.

Shapes are frozen too, so:
- a set has ``slots`` rows (a power of two >= the batch) and room for ``capacity`` tokens each (a
  power of two >= the longest row's need, at least 64); total_sequence_length is the capacity, a
  CPU input the capture keeps.
- every slot steps every time. A row that finished (or a slot no row uses) steps on a dummy token
  at position 0 of its own slot, which only ever overwrites that dead slot; its logits are never
  read. Each row's numbers depend on its own slot alone, as in runtime/kv.py.
- the prompts run uncaptured (gpu_graph_id -1), as GroupQueryAttention's first-prompt case: right
  padding, total_sequence_length = the padded width, each row's own seqlens_k.

A batch leases a set from the model's pool and gives it back when it is dropped (weakref.finalize),
so the next batch of that shape replays the graph already captured; two batches alive at once (the
server runs several) never share a set. The pool keeps every set it made: one per shape and per
batch alive at once.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Sequence

import numpy as np
import onnxruntime as ort

from chatbot_llm.runtime.kv import right_pad

if TYPE_CHECKING:
    from chatbot_llm.runtime.onnx_model import OnnxCausalLM

MIN_CAPACITY = 64
DUMMY_TOKEN = 0  # what a dead slot steps on; its logits are never read


def power_of_two(n: int, least: int = 1) -> int:
    """The smallest power of two >= max(n, least)."""
    return 1 << (max(int(n), least) - 1).bit_length()


def graph_run_options(graph_id: int) -> ort.RunOptions:
    """Run options naming the CUDA graph a run is captured as or replays (-1: run it uncaptured)."""
    options = ort.RunOptions()
    options.add_run_config_entry("gpu_graph_id", str(graph_id))
    return options


class BufferSet:
    """Everything one decode step reads and writes, where the session runs, bound once."""

    def __init__(self, model: "OnnxCausalLM", slots: int, capacity: int, graph_id: int):
        self.slots, self.capacity, self.graph_id = slots, capacity, graph_id
        self.device = model.device
        kv_shape = (slots, model.num_heads, capacity, model.head_dim)
        # zeroed: attention reads only each row's own positions, but no kernel should ever meet NaN
        zeros = np.zeros(kv_shape, model.past_dtype)  # copied to a device; on the CPU, one array each
        self.kv = [self._value(zeros.copy() if self.device == "cpu" else zeros) for _ in model.past_names]
        self.input_ids = self._value(np.zeros((slots, 1), np.int64))
        self.position_ids = self._value(np.zeros((slots, 1), np.int64))
        self.seqlens_k = self._value(np.zeros(slots, np.int32))
        self.logits_index = self._value(np.arange(slots, dtype=np.int64))  # one logits row per slot
        self.total = np.array(capacity, np.int32)  # a CPU input: the capture keeps its value
        self.logits = self._value(np.zeros((slots, model.vocab_size), np.float32))
        self.next_token = self._value(np.zeros(slots, np.int64))

        self.decode = model.session.io_binding()
        for name in ("input_ids", "position_ids", "seqlens_k", "logits_index"):
            self.decode.bind_ortvalue_input(name, getattr(self, name))
        self.decode.bind_cpu_input("total_sequence_length", self.total)
        self.bind_cache_and_outputs(self.decode, model)
        self.run_options = graph_run_options(graph_id) if model.cuda_graph else None

    def _value(self, array: np.ndarray) -> ort.OrtValue:
        """A copy on the device; on the CPU, the array itself (the OrtValue keeps it alive)."""
        return ort.OrtValue.ortvalue_from_numpy(array, self.device, 0)

    def bind_cache_and_outputs(self, binding, model: "OnnxCausalLM") -> None:
        for name, value in zip(model.past_names, self.kv):
            binding.bind_ortvalue_input(name, value)
            binding.bind_ortvalue_output(name.replace("past_key_values", "present"), value)
        binding.bind_ortvalue_output("logits", self.logits)
        binding.bind_ortvalue_output("next_token", self.next_token)


class BufferPool:
    """The buffer sets of one model, by (slots, capacity); each leased to one batch at a time."""

    def __init__(self, model: "OnnxCausalLM"):
        self._model = weakref.ref(model)  # the model owns the pool
        self._free: dict[tuple[int, int], list[BufferSet]] = {}
        self._lock = threading.Lock()  # a finalizer may give a set back from another thread
        self._graph_ids = 0  # 0 is onnxruntime's default id: each set gets its own, from 1
        self.made = 0

    def lease(self, rows: int, need: int) -> BufferSet:
        key = (power_of_two(rows), power_of_two(need, MIN_CAPACITY))
        with self._lock:
            free = self._free.get(key)
            if free:
                return free.pop()
            self._graph_ids += 1
            graph_id = self._graph_ids
            self.made += 1
        return BufferSet(self._model(), *key, graph_id=graph_id)

    def give_back(self, buffers: BufferSet) -> None:
        with self._lock:
            self._free.setdefault((buffers.slots, buffers.capacity), []).append(buffers)


class StaticKVBatch:
    """The Generator's cache over a leased buffer set: ``forward(tokens)`` and ``keep(mask)`` as in
    runtime/kv.py, and ``next_tokens()``: the device's argmax of each active row's last logits."""

    read_logits = True  # the Generator turns this off when it reads next_tokens() instead
    can_join = False  # fixed shapes: a captured graph cannot take rows mid-batch

    def __init__(self, model: "OnnxCausalLM", prompts: Sequence[Sequence[int]], capacity: int):
        if max(len(p) for p in prompts) > capacity:
            raise ValueError("a prompt is longer than the capacity asked for")
        self.model, self.prompts = model, [list(p) for p in prompts]
        self.buffers = model.lease_static(len(prompts), capacity)
        self.release = weakref.finalize(self, model.static_pool.give_back, self.buffers)
        self.release.atexit = False
        self.lengths = np.zeros(self.buffers.slots, np.int32)  # tokens in each slot's cache
        self.active = np.arange(len(prompts))  # the slot of each row still generating, in row order

    def forward(self, tokens: np.ndarray | None) -> np.ndarray | None:
        """Float32 logits of each active row's last token (None when read_logits is off)."""
        if tokens is None:
            self._prompts()
        else:
            self._step(np.asarray(tokens, np.int64))
        return self.buffers.logits.numpy()[self.active] if self.read_logits else None

    def next_tokens(self) -> np.ndarray:
        """The last step's greedy token of each active row (first of equal maxima), from the device."""
        return self.buffers.next_token.numpy()[self.active]

    def keep(self, mask: np.ndarray) -> None:
        """Drop rows (a mask over the active rows); their slots step on dummy tokens from now on."""
        self.active = self.active[mask]

    def _prompts(self) -> None:
        b, model = self.buffers, self.model
        prompts = [[DUMMY_TOKEN]] * b.slots  # dead and unused slots: one dummy token
        for slot in self.active:
            prompts[slot] = self.prompts[slot]
        ids, positions = right_pad(prompts, DUMMY_TOKEN)
        width = ids.shape[1]
        self.lengths[:] = [len(p) for p in prompts]
        feeds = {
            "input_ids": ids,
            "position_ids": positions,
            "seqlens_k": self.lengths - 1,
            "total_sequence_length": np.array(width, np.int32),  # the first-prompt case: the padded width
            "logits_index": np.arange(b.slots) * width + self.lengths - 1,  # each slot's last token
        }
        binding = model.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        b.bind_cache_and_outputs(binding, model)
        model.session.run_with_iobinding(binding, model.uncaptured)

    def _step(self, tokens: np.ndarray) -> None:
        b, live = self.buffers, self.active
        ids = np.full((b.slots, 1), DUMMY_TOKEN, np.int64)
        positions = np.zeros((b.slots, 1), np.int64)
        seqlens = np.zeros(b.slots, np.int32)  # a dead slot: position 0, one token in its cache
        ids[live, 0] = tokens
        positions[live, 0] = seqlens[live] = self.lengths[live]  # the new token goes after the cache
        self.lengths[live] += 1
        b.input_ids.update_inplace(ids)
        b.position_ids.update_inplace(positions)
        b.seqlens_k.update_inplace(seqlens)
        # update_inplace copies on the default CUDA stream, the session runs on its own
        b.decode.synchronize_inputs()
        self.model.session.run_with_iobinding(b.decode, b.run_options)
