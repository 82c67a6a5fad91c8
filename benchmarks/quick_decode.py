"""Per-token latency of every backend on one checkpoint, side by side in one process run.

    python benchmarks/quick_decode.py checkpoints/gpt2-124m

Batch 1, a 20-token prompt, 64 greedy new tokens, one warm-up then the median of --repeats runs;
the time per token includes the prefill. A first look, not the full benchmark: `chatbot-llm bench`
(load time, time to first token, p95, batch throughput, memory) is the tool for that.
"""

import argparse
import platform
import statistics
import time

from chatbot_llm.config import GenerationConfig
from chatbot_llm.models import load_text_generator

RUNS = (("torch", None), ("onnx", "fp32"), ("onnx", "opt"), ("onnx", "int8"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    config = GenerationConfig(do_sample=False, max_new_tokens=args.new_tokens, repetition_penalty=1.0)
    prompt = [list(range(1000, 1020))]
    medians = {}
    for backend, variant in RUNS:
        generator = load_text_generator(args.model, backend, variant or "opt")
        generator.generate_ids(prompt, config)  # warm-up
        per_token = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            result = generator.generate_ids(prompt, config)[0]
            per_token.append((time.perf_counter() - started) / len(result.tokens) * 1000)
        medians[f"{backend}-{variant or 'eager'}"] = statistics.median(per_token)
    print(f"{args.model} on {platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d')}")
    for name, ms in medians.items():
        print(f"{name:12s} {ms:6.1f} ms/token   {medians['torch-eager'] / ms:4.2f}x torch eager")


if __name__ == "__main__":
    main()
