"""How close an export is to the PyTorch checkpoint it came from.

Two figures go into the manifest:
- logits: max |delta| between PyTorch and ONNX over every position of each prompt, the last
  position of each in one padded batch (the prefill path), and one decode step through the KV cache
  of a batch (the past path);
- greedy agreement: the share of greedy tokens that are identical, generated both ways for the
  same prompts, and how many prompts came out identical end to end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from chatbot_llm.config import GenerationConfig
from chatbot_llm.runtime.generator import generate_ids
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

    # prefill: every position of each prompt, and the last position of each in one padded batch
    with torch.inference_mode():
        reference = [baseline.model(input_ids=torch.tensor([p])).logits[0].float().numpy() for p in prompts]
    prefill_delta = max(float(np.abs(onnx.prompt_logits(p) - r).max()) for p, r in zip(prompts, reference))
    batched = onnx.start(prompts, context, pad_id=eos).forward(None)
    prefill_delta = max(prefill_delta, float(np.abs(batched - np.stack([r[-1] for r in reference])).max()))

    # decode: the last token of each prompt through the KV cache of the others, in one batch
    heads = [p[:-1] or [eos] for p in prompts]
    cache = onnx.start(heads, context, pad_id=eos)
    cache.forward(None)
    step = cache.forward(np.array([p[-1] for p in prompts], np.int64))
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
        "max_abs_logits": max(float(np.abs(r).max()) for r in reference),
        "greedy_token_agreement": same / total if total else 1.0,
        "greedy_identical_prompts": f"{identical}/{len(prompts)}",
        "greedy_new_tokens": GREEDY_TOKENS,
        "prompts": list(PROMPTS),
    }
