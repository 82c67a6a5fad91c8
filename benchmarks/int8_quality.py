"""Held-out perplexity of each ONNX variant of a shipped model, and greedy agreement with PyTorch.

    python benchmarks/int8_quality.py models/dream_gpt2 --json benchmarks/results/int8_quality_dream.json

The held-out records are the ones `chatbot-llm train` set aside (same seed, same 5%), read from the
corpus named in the model's train_results.json. Perplexity is measured with the ONNX runtime's own
scoring pass (temperature 1, no processors) over blocks of the model's context, so the figures
compare the exports, not the training-time evaluation.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from chatbot_llm.bench.run import agreement
from chatbot_llm.config import GenerationConfig
from chatbot_llm.models import load_text_generator
from chatbot_llm.runtime.tokenizer import bundled_tokenizer_dir, load_tokenizer
from chatbot_llm.train.corpus import blocks, read_records, split_records, token_stream

VARIANTS = ("fp32", "opt", "int8", "int4")


def heldout_blocks(folder: Path, limit: int) -> np.ndarray:
    results = json.loads((folder / "train_results.json").read_text())
    records, _ = read_records(Path(results["corpus"]))
    _, heldout = split_records(records, results["recipe"]["seed"])
    stream = token_stream(heldout, load_tokenizer(bundled_tokenizer_dir()))
    return blocks(stream, results["recipe"]["block_size"])[:limit]


def perplexity(model, chunks: np.ndarray) -> float:
    total, count = 0.0, 0
    for block in chunks:
        logprobs = model.token_logprobs(block.tolist(), 1)
        total, count = total + float(logprobs.sum()), count + len(logprobs)
    return math.exp(-total / count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--blocks", type=int, default=64, help="Held-out blocks to score (of the context length).")
    parser.add_argument("--prompts", type=int, default=32, help="Held-out record starts for greedy agreement.")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    chunks = heldout_blocks(args.folder, args.blocks)
    results = json.loads((args.folder / "train_results.json").read_text())
    records, _ = read_records(Path(results["corpus"]))
    _, heldout = split_records(records, results["recipe"]["seed"])
    prompts = [" ".join(r.split()[:10]) for r in heldout[: args.prompts]]
    greedy = GenerationConfig.resolve({"do_sample": False, "max_new_tokens": 32, "repetition_penalty": 1.0})
    reference = [c.tokens for c in load_text_generator(str(args.folder), "torch").generate(prompts, greedy)]
    report = {"model": str(args.folder), "heldout_tokens": int(chunks.size), "prompts": len(prompts),
              "date": time.strftime("%Y-%m-%d"), "variants": {}}
    for variant in VARIANTS:
        generator = load_text_generator(str(args.folder), "onnx", variant)
        tokens = [c.tokens for c in generator.generate(prompts, greedy)]
        agree = agreement(tokens, reference)
        report["variants"][variant] = {
            "heldout_perplexity": perplexity(generator.model, chunks),
            "greedy_rows_identical": agree["rows_identical"],
            "greedy_mean_prefix_share": agree["mean_prefix_share"],
        }
    fp32 = report["variants"]["fp32"]["heldout_perplexity"]
    for variant, figures in report["variants"].items():
        figures["perplexity_vs_fp32"] = figures["heldout_perplexity"] / fp32 - 1
        print(f"{variant:5s} perplexity {figures['heldout_perplexity']:8.3f} ({figures['perplexity_vs_fp32']:+.2%} vs fp32)"
              f"  greedy = torch: {figures['greedy_rows_identical']}/{len(prompts)} rows, "
              f"{figures['greedy_mean_prefix_share']:.0%} of tokens before the first difference")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
