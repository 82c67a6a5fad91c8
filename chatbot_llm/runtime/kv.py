"""The KV cache of a batch being generated, one class per graph layout.

Both give the Generator the same three calls: ``forward(tokens)`` (None the first time: the
prompts) -> float32 logits of the last position of each active row, and ``keep(mask)`` to drop the
rows that finished. Where ``can_join`` is true, ``join(prompts, capacity)`` adds rows to the running
batch (continuous batching: the server's newcomers join between steps).

- ``KVBufferBatch`` for the decoder graph (export/decoder.py): one preallocated buffer per layer,
  (slots, heads, capacity, head_dim), bound as both past and present. Prompts are right-padded, so a
  row's tokens sit at positions 0..n-1 whatever its neighbours; a finished row's slot goes idle
  (query_seqlens 0, length reset to 0) and the buffer is compacted only when at most half its slots
  are live. A joining row takes an idle slot, or new ones (8 at a time); the buffer's capacity grows
  (doubling) when a joining row needs more. Joining runs on the CPU only (numpy buffers).
- ``GrowingCacheBatch`` for Optimum's export (the fp32 reference): left padding, an attention mask,
  and past tensors that the graph concatenates one position longer every step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import onnxruntime as ort

if TYPE_CHECKING:
    from chatbot_llm.runtime.onnx_model import OnnxCausalLM


def right_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """input_ids and position_ids of a right-padded batch (padding gets position 0; it is never read)."""
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), pad_id, np.int64)
    positions = np.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, : len(prompt)] = prompt
        positions[row, : len(prompt)] = np.arange(len(prompt))
    return ids, positions


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """input_ids, attention_mask and position_ids of a left-padded batch, as generate() builds them.

    Position ids count only real tokens; padded positions get 1, as in generate(), and are masked.
    """
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), pad_id, np.int64)
    mask = np.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = prompt
        mask[row, width - len(prompt) :] = 1
    positions = np.cumsum(mask, axis=1) - 1
    positions[mask == 0] = 1
    return ids, mask, positions


class KVBufferBatch:
    SLOT_STEP = 8  # slots added at a time when joining rows find none idle

    def __init__(self, model: "OnnxCausalLM", prompts: Sequence[Sequence[int]], capacity: int):
        self.model, self.prompts, self.capacity = model, prompts, int(capacity)
        self.can_join = model.can_join  # joining copies cache rows between numpy buffers: not OrtValues
        slots = len(prompts)
        self.lengths = np.zeros(slots, np.int32)  # tokens in each slot's cache (0: idle, free to reuse)
        self.active = np.arange(slots)  # the slot of each row still generating, in row order
        self.prefilled = False
        shape = (slots, model.num_heads, self.capacity, model.head_dim)
        if model.io_binding:  # OrtValues where the session runs (CUDA): the cache never leaves the device
            self.buffers = [ort.OrtValue.ortvalue_from_shape_and_type(shape, model.past_dtype, model.device, 0)
                            for _ in model.past_names]
        else:  # numpy arrays that onnxruntime reads and writes in place
            self.buffers = [np.zeros(shape, model.past_dtype) for _ in model.past_names]
        self._bind_buffers()

    def _bind_buffers(self) -> None:
        self.binding = self.model.session.io_binding()
        for name, buffer in zip(self.model.past_names, self.buffers):
            value = buffer if isinstance(buffer, ort.OrtValue) else ort.OrtValue.ortvalue_from_numpy(buffer)
            self.binding.bind_ortvalue_input(name, value)
            self.binding.bind_ortvalue_output(name.replace("past_key_values", "present"), value)

    def forward(self, tokens: np.ndarray | None) -> np.ndarray:
        slots = len(self.lengths)
        new = np.zeros(slots, np.int32)  # tokens each slot takes in this step; 0 leaves a slot idle
        if tokens is None:  # the prompts, all slots at once (less any row dropped before they ran)
            ids, positions = right_pad(self.prompts)
            new[self.active] = [len(self.prompts[slot]) for slot in self.active]
            last = self.active * ids.shape[1] + new[self.active] - 1  # flat index of each last token
        else:  # one token for each active row
            ids, positions = np.zeros((slots, 1), np.int64), np.zeros((slots, 1), np.int64)
            ids[self.active, 0] = tokens
            positions[self.active, 0] = self.lengths[self.active]
            new[self.active] = 1
            last = self.active
        self.lengths += new
        self.prefilled = True
        feeds = {
            "input_ids": ids,
            "position_ids": positions,
            # an idle slot has length 0 (its row left, or never ran), read as 1 and unused
            "seqlens_k": np.maximum(self.lengths - 1, 0),
            "query_seqlens": new,
            "total_sequence_length": np.array(self.capacity, np.int32),
            "logits_index": last.astype(np.int64),
        }
        for name, value in feeds.items():
            self.binding.bind_cpu_input(name, value)
        self.binding.bind_output("logits", "cpu")
        self.model.session.run_with_iobinding(self.binding)
        return self.binding.get_outputs()[-1].numpy()  # bound last: (active rows, vocab) float32

    def keep(self, mask: np.ndarray) -> None:
        """Drop rows (a mask over the active rows), before or after the prompts ran."""
        self.lengths[self.active[~mask]] = 0  # their slots go idle and are free for joining rows
        self.active = self.active[mask]
        live = len(self.active)
        # compacting copies every live slot's buffer: worth it once half the slots are idle, so the
        # copies add up to at most about twice the cache over the whole batch; on a device, idle
        # slots cost little and the cache never leaves it
        if self.prefilled and not self.model.io_binding and 0 < live <= len(self.lengths) // 2:
            self.buffers = [b[self.active] for b in self.buffers]
            self.lengths = self.lengths[self.active]
            self.active = np.arange(live)
            self._bind_buffers()

    def join(self, prompts: Sequence[Sequence[int]], capacity: int, limit: int | None = None) -> np.ndarray:
        """Add rows to the running batch, after the rows already in it: float32 logits of each prompt's
        last position, one row per prompt.

        The prompts run in a pass of their own (a small batch of just them) and their cache rows are
        copied into idle slots: mixing prompts into the decode pass of the others costs more than the
        two passes apart. capacity: the room the new rows need; the buffer grows to it (at least
        doubling, but not past limit, the model's context, when given).
        """
        if not self.can_join:
            raise RuntimeError("this KV cache lives on the device; its batch cannot take new rows")
        if len(self.active) and not self.prefilled:
            raise RuntimeError("run the batch's own prompts (forward(None)) before rows join it")
        width = max(len(p) for p in prompts)
        newcomers = KVBufferBatch(self.model, prompts, capacity=width)
        logits = newcomers.forward(None)
        if capacity > self.capacity:
            grown = max(capacity, min(2 * self.capacity, limit or capacity))
            self._resize(len(self.lengths), grown)
        free = np.setdiff1d(np.arange(len(self.lengths)), self.active)  # sorted: reuse the lowest slots
        if len(free) < len(prompts):
            short = len(prompts) - len(free)
            self._resize(len(self.lengths) + -(-short // self.SLOT_STEP) * self.SLOT_STEP, self.capacity)
            free = np.setdiff1d(np.arange(len(self.lengths)), self.active)
        slots = free[: len(prompts)]
        for buffer, source in zip(self.buffers, newcomers.buffers):  # in place: the binding sees it
            buffer[slots, :, :width] = source
        self.lengths[slots] = newcomers.lengths
        self.active = np.concatenate([self.active, slots])
        self.prefilled = True
        return logits

    def _resize(self, slots: int, capacity: int) -> None:
        """New buffers of this many slots and positions, holding what the old ones held."""
        old = len(self.lengths)
        buffers = [np.zeros((slots, self.model.num_heads, capacity, self.model.head_dim), self.model.past_dtype)
                   for _ in self.buffers]
        for new, buffer in zip(buffers, self.buffers):
            new[:old, :, : self.capacity] = buffer
        self.buffers, self.capacity = buffers, capacity
        self.lengths = np.concatenate([self.lengths, np.zeros(slots - old, np.int32)])
        self._bind_buffers()


class GrowingCacheBatch:
    can_join = False  # left padding: a newcomer's positions would depend on its neighbours

    def __init__(self, model: "OnnxCausalLM", prompts: Sequence[Sequence[int]], pad_id: int):
        self.model = model
        self.ids, self.attention_mask, self.positions = left_pad(prompts, pad_id)
        self.lengths = np.array([len(p) for p in prompts])
        self.cache = model.empty_cache(len(prompts))

    def forward(self, tokens: np.ndarray | None) -> np.ndarray:
        if tokens is None:
            ids, positions = self.ids, self.positions
        else:
            self.attention_mask = np.concatenate(
                [self.attention_mask, np.ones((len(tokens), 1), np.int64)], axis=1)
            ids, positions = tokens[:, None].astype(np.int64), self.lengths[:, None]
            self.lengths = self.lengths + 1
        logits, self.cache = self.model.forward(ids, self.attention_mask, positions, self.cache)
        return logits

    def keep(self, mask: np.ndarray) -> None:
        if not mask.any():  # the batch is over (it takes no new rows)
            return
        self.cache = self.cache.select(mask)
        self.attention_mask = self.attention_mask[mask]
        self.lengths = self.lengths[mask]
        self.ids, self.positions = self.ids[mask], self.positions[mask]  # before the prompts ran
