"""The machine's ceiling for a batch-1 decode step: how fast onnxruntime streams float32 weights.

A batch-1 decode step of a float32 GPT-2 reads every weight once and does almost no arithmetic per
byte, so it is bound by memory bandwidth. This times one MatMul of a (1, K) row against a (K, N)
float32 weight of about --mb megabytes (GPT-2-124M's decode step reads ~498 MB), on the CPU provider
with the same thread count as `bench`, and numpy's own GEMV beside it. Weights bigger than the
caches make it a read of main memory, as a decode step is.

    python benchmarks/gemv_bandwidth.py --mb 500 [--threads 2] [--json F]

What it says: if onnxruntime streams 500 MB in X ms, no float32 graph of that size decodes a token
faster than X ms on this machine; opt's ms/token over X is how close the decoder graph is to it.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def matmul_session(weight: np.ndarray, threads: int) -> ort.InferenceSession:
    k, n = weight.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "gemv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
        [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=500.0, help="Weight size in MB (default 500).")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", type=str, default=None)
    args = parser.parse_args()

    k = 768
    n = int(args.mb * 1e6 / 4 / k)
    weight = np.random.default_rng(0).standard_normal((k, n), dtype=np.float32)
    x = np.random.default_rng(1).standard_normal((1, k), dtype=np.float32)
    session = matmul_session(weight, args.threads)
    mb = weight.nbytes / 1e6
    results = {}
    for name, fn in (("onnxruntime MatMul", lambda: session.run(None, {"x": x})),
                     ("numpy x @ w", lambda: x @ weight)):
        times = timed(fn, args.repeats)
        median = float(np.median(times))
        results[name] = {"ms_median": round(median, 3), "ms_min": round(min(times), 3),
                         "gb_per_s": round(mb / median, 1)}
        print(f"{name:20s} {mb:.0f} MB in {median:.2f} ms (min {min(times):.2f}): {mb / median:.1f} GB/s")
    if args.json:
        report = {"cpu": cpu_name(), "threads": args.threads, "weight_mb": round(mb, 1),
                  "onnxruntime": ort.__version__, "numpy": np.__version__, "results": results,
                  "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
