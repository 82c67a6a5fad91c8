"""One backend measured in a process of its own, so load time and peak memory are its alone.

    python -m chatbot_llm.bench.worker '{"backend": "onnx-int8", "model": ..., ...}'

Prints one JSON object on stdout. Every backend runs the same work: greedy decoding of prompts of
exactly `prompt_tokens` tokens for exactly `new_tokens` tokens (EOS is generated and fed back like
any token, so no row stops early and every backend does the same number of steps). The ONNX
backends run the tool's own Generator; torch runs transformers' generate(), as the seed did.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

# Prompts are windows into this text (written for this benchmark), so they are real English.
TEXT = (
    "I was walking through my old school late at night, and the corridors were longer than I remembered. "
    "Every classroom door was open, and in each one a teacher I had known was writing the same sentence on "
    "the board. My sister called my name from the stairwell, but when I reached the landing there was only a "
    "cat sitting on a pile of letters. I picked one up and it was addressed to me, in my own handwriting, "
    "with a date from next year. Subject: meeting tomorrow. Hi all, the quarterly review has moved to ten "
    "o'clock in the large conference room on the third floor. Please bring the updated forecasts and the "
    "list of open contracts, and let me know by tonight if you cannot attend. We will also go over the gas "
    "trading positions and the schedule for the new office move. Thanks, and see you there. Then the dream "
    "changed and I was on a boat crossing a lake that was perfectly still, with mountains on every side and "
    "a small town on the far shore where all the lights were green."
)


def bench_prompts(prompt_tokens: int, count: int) -> list[list[int]]:
    from chatbot_llm.runtime.tokenizer import bundled_tokenizer_dir, load_tokenizer

    ids = load_tokenizer(bundled_tokenizer_dir()).encode(TEXT).ids
    while len(ids) < prompt_tokens + 7 * count:
        ids = ids + ids
    return [ids[7 * i : 7 * i + prompt_tokens] for i in range(count)]


class OnnxRunner:
    def __init__(self, folder: Path, threads: int | None, device: str = "cpu"):
        from chatbot_llm.config import GenerationConfig
        from chatbot_llm.runtime.onnx_model import OnnxCausalLM, eos_and_context, read_model_config

        self.model = OnnxCausalLM(folder / "model.onnx", device=device, threads=threads)
        _, self.context = eos_and_context(read_model_config(folder))
        self.config = GenerationConfig(do_sample=False, repetition_penalty=1.0)

    def run(self, prompts, new_tokens):
        from chatbot_llm.runtime.generator import Generator

        started = time.perf_counter()
        generator = Generator(self.model, prompts, self.config.replace(max_new_tokens=new_tokens),
                              eos_token_id=-1, context_length=self.context)
        stamps = []
        while not generator.is_done():
            generator.generate_next_token()
            stamps.append(time.perf_counter() - started)
        return stamps, [r.tokens for r in generator.results]


class TorchRunner:
    def __init__(self, checkpoint: Path, threads: int | None, device: str = "cpu"):
        import torch
        from transformers import GPT2LMHeadModel

        if threads:
            torch.set_num_threads(threads)
        self.torch, self.device = torch, device
        self.model = GPT2LMHeadModel.from_pretrained(str(checkpoint), local_files_only=True).eval().to(device)
        # EOS does not stop a row here, as in the other runners; and a blank config, or generate() would
        # fill our greedy settings from the model's generation_config.json
        from transformers import GenerationConfig

        self.model.generation_config = GenerationConfig(eos_token_id=None, pad_token_id=50256)

    def run(self, prompts, new_tokens):
        torch, device = self.torch, self.device
        stamps, started = [], time.perf_counter()

        class Stamps:  # a transformers streamer: put() once for the prompt, then once per step
            seen_prompt = False

            def put(self, value):
                if device == "cuda":
                    torch.cuda.synchronize()  # the step's kernels, not just their launch
                if self.seen_prompt:
                    stamps.append(time.perf_counter() - started)
                self.seen_prompt = True

            def end(self):
                pass

        with torch.inference_mode():
            out = self.model.generate(
                input_ids=torch.tensor(prompts, device=device),
                attention_mask=torch.ones(len(prompts), len(prompts[0]), dtype=torch.long, device=device),
                do_sample=False, max_new_tokens=new_tokens, min_new_tokens=None, streamer=Stamps(),
            )
        return stamps, out[:, len(prompts[0]) :].tolist()


class CT2Runner:
    """CTranslate2's Generator on a conversion of the same checkpoint (optional comparator)."""

    def __init__(self, folder: Path, compute_type: str, threads: int | None, device: str = "cpu"):
        import ctranslate2

        from chatbot_llm.runtime.tokenizer import bundled_tokenizer_dir, load_tokenizer

        self.generator = ctranslate2.Generator(str(folder), device=device, compute_type=compute_type,
                                               intra_threads=threads or 0)
        self.tokenizer = load_tokenizer(bundled_tokenizer_dir())

    def run(self, prompts, new_tokens):
        tokens = [[self.tokenizer.id_to_token(i) for i in p] for p in prompts]
        started = time.perf_counter()
        if len(prompts) == 1:  # step by step, for the per-token figures
            stamps, ids = [], []
            for step in self.generator.generate_tokens(tokens[0], max_length=new_tokens, min_length=new_tokens,
                                                       sampling_topk=1):
                stamps.append(time.perf_counter() - started)
                ids.append(step.token_id)
            return stamps, [ids]
        results = self.generator.generate_batch(tokens, max_length=new_tokens, min_length=new_tokens,
                                                sampling_topk=1, include_prompt_in_result=False)
        return [time.perf_counter() - started], [r.sequences_ids[0] for r in results]


def make_runner(spec: dict):
    backend, threads, device = spec["backend"], spec.get("threads"), spec.get("device", "cpu")
    if backend == "torch":
        return TorchRunner(Path(spec["checkpoint"]), threads, device)
    if backend.startswith("onnx-"):
        return OnnxRunner(Path(spec["folder"]), threads, device)
    if backend.startswith("ct2-"):
        return CT2Runner(Path(spec["folder"]), {"ct2-int8": "int8", "ct2-fp32": "float32"}[backend], threads,
                         device)
    raise ValueError(f"unknown backend {backend}")


def cli_path(spec: dict, prompts: list[list[int]]) -> dict:
    """ms per token through the code `batch --batch-size 1` runs (TextGenerator: tokenize, generate with
    the model's own generation defaults and processors, decode), one prompt at a time: the user's path."""
    from chatbot_llm.cli.app import resolve_generation_config
    from chatbot_llm.models import load_text_generator, model_defaults, resolve_model

    from chatbot_llm.bench.run import onnx_variant

    backend = spec["backend"]
    ref = resolve_model(spec["checkpoint"] if backend == "torch" else spec["folder"])
    generator = load_text_generator(ref, "torch" if backend == "torch" else "onnx",
                                    None if backend == "torch" else onnx_variant(backend),
                                    device=spec.get("device", "cpu"), threads=spec.get("threads"))
    config = resolve_generation_config(model_defaults(ref), {"max_new_tokens": spec["new_tokens"], "seed": 0})
    texts = [generator.tokenizer.decode(p) for p in prompts[:8]]
    generator.generate(texts[:1], config)  # warm-up
    started, tokens = time.perf_counter(), 0
    for text in texts:
        tokens += len(generator.generate([text], config)[0].tokens)
    seconds = time.perf_counter() - started
    return {"ms_per_token": seconds * 1000 / max(1, tokens), "tokens": tokens, "prompts": len(texts),
            "settings": config.to_dict()}


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the
    parent across fork and exec, so a worker would report the bench process's own peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(spec: dict) -> dict:
    new_tokens, repeats = spec["new_tokens"], spec["repeats"]
    prompts = bench_prompts(spec["prompt_tokens"], max(spec["batch_sizes"]))
    started = time.perf_counter()
    runner = make_runner(spec)
    load_seconds = time.perf_counter() - started
    runner.run(prompts[:1], new_tokens)  # warm-up
    first_tokens, steps, per_token = [], [], []
    for _ in range(repeats):
        stamps, tokens = runner.run(prompts[:1], new_tokens)
        first_tokens.append(stamps[0])
        steps += [b - a for a, b in zip(stamps, stamps[1:])]  # decode steps, after the first token
        per_token.append(stamps[-1] / len(stamps))  # prefill included: what a user waits per token
    peak_batch_1 = peak_rss_mb()  # the figure the targets are about: one prompt at a time
    throughput, outputs = {}, {}
    for size in spec["batch_sizes"]:
        runner.run(prompts[:size], min(new_tokens, 4))  # warm-up at this shape
        walls = []
        for _ in range(repeats):
            stamps, tokens = runner.run(prompts[:size], new_tokens)
            walls.append(stamps[-1])
        throughput[str(size)] = size * new_tokens / statistics.median(walls)
        outputs[str(size)] = tokens
    steps.sort()
    user_path = cli_path(spec, prompts) if spec.get("cli_path") and not spec["backend"].startswith("ct2-") else None
    return {
        "cli_path": user_path,
        "backend": spec["backend"],
        "load_seconds": load_seconds,
        "first_token_ms": statistics.median(first_tokens) * 1000,
        "decode_ms_median": statistics.median(steps) * 1000,
        "decode_ms_p95": steps[min(len(steps) - 1, int(0.95 * len(steps)))] * 1000,
        "per_token_ms": statistics.median(per_token) * 1000,
        "tokens_per_second": 1000 / (statistics.median(steps) * 1000),
        "throughput": throughput,
        "peak_rss_mb": peak_batch_1,
        "peak_rss_all_mb": peak_rss_mb(),  # after the largest batch too
        "outputs": outputs,
        "torch_imported": "torch" in sys.modules,
    }


def main() -> None:
    from chatbot_llm.bench.run import NO_GRAPH
    from chatbot_llm.runtime.onnx_model import CUDA_GRAPH_ENV

    spec = json.loads(sys.argv[1])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if spec["backend"].endswith(NO_GRAPH):  # this process's sessions, the batch path's too
        os.environ[CUDA_GRAPH_ENV] = "0"
    print(json.dumps(measure(spec)))


if __name__ == "__main__":
    main()
