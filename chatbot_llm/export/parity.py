"""How close an export is to the PyTorch checkpoint it came from.

Two figures go into the manifest:
- logits: max |delta| between PyTorch and ONNX over every real position of a left-padded batch
  (the prefill path) and over one decode step through the KV cache (the past path);
- greedy agreement: the share of greedy tokens that are identical, generated both ways for the
  same prompts, and how many prompts came out identical end to end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from chatbot_llm.config import GenerationConfig
from chatbot_llm.runtime.generator import generate_ids, left_pad
from chatbot_llm.runtime.onnx_model import OnnxCausalLM, eos_and_context, read_model_config
from chatbot_llm.runtime.tokenizer import load_tokenizer
from chatbot_llm.torch_backend import TorchBaseline

PROMPTS = (
    "I was walking through my old school and the hallways were",
    "Subject: meeting tomorrow",
    "The",
    "We need to talk about the quarterly numbers before Friday, because the board",
)
GREEDY_TOKENS = 16


def measure_parity(checkpoint: Path, export_dir: Path) -> dict[str, Any]:
    import torch

    eos, context = eos_and_context(read_model_config(checkpoint))
    tokenizer = load_tokenizer(export_dir)
    prompts = [tokenizer.encode(p).ids[: max(2, context // 4)] for p in PROMPTS]
    baseline = TorchBaseline(checkpoint, eos, context)
    onnx = OnnxCausalLM(export_dir / "model.onnx")

    # prefill: every real position of a left-padded batch
    ids, mask, positions = left_pad(prompts, eos)
    with torch.inference_mode():
        reference = baseline.model(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            position_ids=torch.from_numpy(positions),
        ).logits.float().numpy()
    feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
    feeds.update(zip(onnx.past_names, onnx.empty_cache(len(prompts)).tensors))
    ours = onnx.session.run(["logits"], feeds)[0].astype(np.float32)
    real = mask.astype(bool)
    prefill_delta = float(np.abs(ours[real] - reference[real]).max())

    # decode: the last token of each prompt through the KV cache of the others
    heads = [p[:-1] or [eos] for p in prompts]
    ids, mask, positions = left_pad(heads, eos)
    _, cache = onnx.forward(ids, mask, positions, onnx.empty_cache(len(prompts)))
    lengths = np.array([len(h) for h in heads])
    step_mask = np.concatenate([mask, np.ones((len(prompts), 1), np.int64)], axis=1)
    step, _ = onnx.forward(
        np.array([[p[-1]] for p in prompts], np.int64), step_mask, lengths[:, None], cache
    )
    with torch.inference_mode():
        full = [
            baseline.model(input_ids=torch.tensor([h + [p[-1]]])).logits[0, -1].float().numpy()
            for h, p in zip(heads, prompts)
        ]
    decode_delta = float(np.abs(step - np.stack(full)).max())

    greedy = GenerationConfig(do_sample=False, max_new_tokens=GREEDY_TOKENS, repetition_penalty=1.0)
    ours_tokens = generate_ids(onnx, prompts, greedy, eos, context)
    torch_tokens = [baseline.generate_ids([p], greedy)[0] for p in prompts]
    same = total = identical = 0
    for a, b in zip(ours_tokens, torch_tokens):
        length = max(len(a.tokens), len(b.tokens))
        same += sum(x == y for x, y in zip(a.tokens, b.tokens))
        total += length
        identical += a.tokens == b.tokens
    return {
        "max_abs_logits_delta": max(prefill_delta, decode_delta),
        "prefill_max_abs_delta": prefill_delta,
        "decode_max_abs_delta": decode_delta,
        "max_abs_logits": float(np.abs(reference[real]).max()),
        "greedy_token_agreement": same / total if total else 1.0,
        "greedy_identical_prompts": f"{identical}/{len(prompts)}",
        "greedy_new_tokens": GREEDY_TOKENS,
        "prompts": list(PROMPTS),
    }
