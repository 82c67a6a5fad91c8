"""The checks of the CUDA path that need a GPU, in one run; writes what it found as JSON.

    python benchmarks/cuda_check.py --json OUT/cuda_check.json

On the random GPT-2-124M shape (checkpoints/gpt2-124m, made once) and its fp16 export, the one the
bench uses:
1. placement: the op types after onnxruntime's optimisation and the provider each node ran on (a
   profiled prompt step and decode step, CUDA graphs off: a replay has no per-node events), and
   every node that is not on the CUDA provider;
2. greedy tokens: CUDA graphs on against off, against the CPU provider, and each row alone against
   the rows batched; the device's argmax (next_token) against the host's argmax of the same logits;
3. seeded sampling, alone against batched (not expected to be equal on CUDA: cuBLAS picks GEMM
   kernels by shape, so fp16 logits move in their last bits with the batch size and padded width);
4. a quick decode ms/step at batch 1, graphs on and off (the bench measures it properly).

Each check records its error instead of stopping the others. Needs torch and transformers for the
export (once), and onnxruntime-gpu.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NEW_TOKENS = 32
DEVICE = "cuda"  # --device cpu --shape tiny: a dry run of this script on a machine without a GPU


def agreement(a: list[list[int]], b: list[list[int]]) -> dict:
    same = [x == y for x, y in zip(a, b)]
    prefix = []
    for x, y in zip(a, b):
        n = next((i for i, (s, t) in enumerate(zip(x, y)) if s != t), min(len(x), len(y)))
        prefix.append(n / max(1, len(x), len(y)) if x != y else 1.0)
    return {"rows_identical": sum(same), "rows": len(same), "mean_prefix_share": round(sum(prefix) / len(prefix), 4)}


def run_rows(model, prompts, config, keys=None, alone=False) -> list[list[int]]:
    from chatbot_llm.runtime.generator import generate_ids

    keys = list(range(len(prompts))) if keys is None else keys
    if alone:
        return [generate_ids(model, [p], config, -1, 1024, stream_keys=[k])[0].tokens for p, k in zip(prompts, keys)]
    return [r.tokens for r in generate_ids(model, prompts, config, -1, 1024, stream_keys=keys)]


def check(name: str, report: dict, fn) -> None:
    started = time.perf_counter()
    try:
        report[name] = fn()
    except Exception as exc:  # record it, run the other checks
        report[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
    report[name]["seconds"] = round(time.perf_counter() - started, 2)
    print(f"{name}: {json.dumps(report[name])[:600]}", flush=True)


def placement(model_path: Path) -> dict:
    import onnx
    import onnxruntime as ort

    from chatbot_llm.config import GenerationConfig
    from chatbot_llm.runtime.device import providers_for
    from chatbot_llm.runtime.generator import Generator
    from chatbot_llm.runtime.onnx_model import OnnxCausalLM

    model = OnnxCausalLM(model_path, device=DEVICE, cuda_graph=False)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_profiling = True
    scratch = Path(tempfile.mkdtemp())
    options.profile_file_prefix = str(scratch / "profile")
    model.session = ort.InferenceSession(str(model_path), options, providers=providers_for(DEVICE))
    generator = Generator(model, [[464, 3290, 373, 257]], GenerationConfig(do_sample=False, max_new_tokens=2,
                                                                          repetition_penalty=1.0), -1, 1024)
    while not generator.is_done():
        generator.generate_next_token()
    trace = json.loads(Path(model.session.end_profiling()).read_text())
    nodes = [e for e in trace if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    by_provider = Counter(e["args"].get("provider") for e in nodes)
    off_cuda = sorted({f"{e['args'].get('op_name')} {e['name'][:-len('_kernel_time')]}" for e in nodes
                       if e["args"].get("provider") != "CUDAExecutionProvider"})
    found = {
        "node_runs_by_provider": dict(by_provider),  # a prompt step and a decode step
        "nodes_not_on_cuda": off_cuda,
        "op_types_run": dict(Counter(e["args"].get("op_name") for e in nodes)),
        "all_on_cuda": not off_cuda and by_provider.get("CUDAExecutionProvider", 0) > 0,
    }
    try:  # the graph after optimisation, as the CUDA session sees it
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(scratch / "optimized.onnx")
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "optimized.data")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        ort.InferenceSession(str(model_path), options, providers=providers_for(DEVICE))
        optimized = onnx.load(str(scratch / "optimized.onnx"), load_external_data=False)
        found["optimized_graph_ops"] = dict(Counter(n.op_type for n in optimized.graph.node))
        found["optimized_graph_nodes"] = len(optimized.graph.node)
    except Exception as exc:
        found["optimized_graph_error"] = f"{type(exc).__name__}: {exc}"[:500]
    return found


def greedy(model_path: Path, prompts: list[list[int]]) -> dict:
    import numpy as np

    from chatbot_llm.config import GenerationConfig
    from chatbot_llm.runtime.onnx_model import OnnxCausalLM

    config = GenerationConfig(do_sample=False, max_new_tokens=NEW_TOKENS, repetition_penalty=1.0)
    graph = OnnxCausalLM(model_path, device=DEVICE)
    plain = OnnxCausalLM(model_path, device=DEVICE, cuda_graph=False)
    cpu = OnnxCausalLM(model_path, device="cpu")
    runs = {
        "graph_batched": run_rows(graph, prompts, config),
        "graph_alone": run_rows(graph, prompts, config, alone=True),
        "nograph_batched": run_rows(plain, prompts, config),
        "nograph_alone": run_rows(plain, prompts, config, alone=True),
        "cpu_batched": run_rows(cpu, prompts, config),
        # the host's argmax (repetition penalty 1.0001 makes the Generator read the logits)
        "graph_batched_host_argmax": run_rows(graph, prompts, config.replace(repetition_penalty=1.0001)),
    }
    # the device's argmax against the host's of the same logits, step by step
    cache = graph.start(prompts, capacity=64, pad_id=0)
    logits, mismatches, steps = cache.forward(None), 0, 0
    for _ in range(16):
        device = cache.next_tokens()
        mismatches += int((device != logits.argmax(axis=-1)).sum())
        steps += 1
        logits = cache.forward(device)
    return {
        "graph_on_vs_off": agreement(runs["graph_batched"], runs["nograph_batched"]),
        "graph_vs_cpu_provider": agreement(runs["graph_batched"], runs["cpu_batched"]),
        "graph_alone_vs_batched": agreement(runs["graph_alone"], runs["graph_batched"]),
        "nograph_alone_vs_batched": agreement(runs["nograph_alone"], runs["nograph_batched"]),
        "device_argmax_vs_host_argmax_rows": agreement(runs["graph_batched"], runs["graph_batched_host_argmax"]),
        "device_vs_host_argmax_same_logits": {"steps": steps, "rows": len(prompts), "mismatches": mismatches},
        "buffer_sets_made": graph.static_pool.made,
        "tokens": runs,
        "max_abs_logit": float(np.abs(logits).max()),
    }


def sampling(model_path: Path, prompts: list[list[int]]) -> dict:
    from chatbot_llm.config import GenerationConfig
    from chatbot_llm.runtime.onnx_model import OnnxCausalLM

    config = GenerationConfig(do_sample=True, seed=0, max_new_tokens=NEW_TOKENS, top_k=50, temperature=1.0,
                              repetition_penalty=1.0)
    graph = OnnxCausalLM(model_path, device=DEVICE)
    batched, alone = run_rows(graph, prompts, config), run_rows(graph, prompts, config, alone=True)
    again = run_rows(graph, prompts, config)
    return {"seeded_alone_vs_batched": agreement(alone, batched), "seeded_batched_twice": agreement(batched, again),
            "note": "not expected equal on CUDA: GEMM kernels differ by shape, fp16 logits move in the last bits"}


def speed(model_path: Path, prompt: list[int]) -> dict:
    from chatbot_llm.config import GenerationConfig
    from chatbot_llm.runtime.generator import Generator
    from chatbot_llm.runtime.onnx_model import OnnxCausalLM

    config = GenerationConfig(do_sample=False, max_new_tokens=64, repetition_penalty=1.0)
    out = {}
    for name, cuda_graph in (("graph", True), ("nograph", False)):
        model = OnnxCausalLM(model_path, device=DEVICE, cuda_graph=cuda_graph)
        medians = []
        for _ in range(4):  # the first run captures
            generator = Generator(model, [prompt], config, -1, 1024)
            generator.generate_next_token()  # the prompt
            stamps = [time.perf_counter()]
            while not generator.is_done():
                generator.generate_next_token()
                stamps.append(time.perf_counter())
            medians.append(statistics.median(b - a for a, b in zip(stamps, stamps[1:])) * 1000)
            del generator
        out[f"{name}_ms_per_step_batch1"] = [round(m, 3) for m in medians]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--shape", choices=("gpt2-124m", "tiny"), default="gpt2-124m")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import onnxruntime as ort

    from chatbot_llm.bench.run import machine
    from chatbot_llm.bench.shapes import shape_checkpoint
    from chatbot_llm.bench.worker import bench_prompts
    from chatbot_llm.models import ensure_export, project_root, resolve_model

    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
                    "providers": ort.get_available_providers(), "device": DEVICE, "shape": args.shape}
    started = time.perf_counter()
    folder = ensure_export(resolve_model(str(shape_checkpoint(args.shape, project_root()))), "fp16",
                           on_stage=lambda s: print(s, flush=True))
    report["export_seconds"] = round(time.perf_counter() - started, 1)
    report["export"] = {k: v for k, v in json.loads((folder / "manifest.json").read_text()).items()
                        if k in ("recipe", "opset", "parity", "tools")}
    model_path = folder / "model.onnx"
    # six prompts of different lengths (5 to 20 tokens): right padding and dead slots both matter
    prompts = [p[: 5 + 3 * i] for i, p in enumerate(bench_prompts(20, 6))]
    check("placement", report, lambda: placement(model_path))
    check("greedy", report, lambda: greedy(model_path, prompts))
    check("sampling", report, lambda: sampling(model_path, prompts))
    check("speed", report, lambda: speed(model_path, prompts[-1]))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
