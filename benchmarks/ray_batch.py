"""prompts/s through `batch --ray` with 1 and 2 workers against the local `batch`, on the same prompts.

    python benchmarks/ray_batch.py --lines 2000 --max-new-tokens 8 --json benchmarks/results/ray_batch.json

One Ray instance (num_cpus = this machine's cores) is started here, before the timed runs, and each
`chatbot-llm batch --ray ADDRESS` joins it, as a command joins a cluster started with `ray start
--head`; its start-up is reported on its own. Every run is the real command in a child process on
the same prompt file (the shipped dream model, opt, greedy, JSONL), timed end to end; the local run
goes first and last, so drift from other load on the machine shows. Each Ray run's own summary line
(workers, prompts/s, where the worker-seconds went) is kept, and every output is checked to hold the
local run's records. From these the JSON gets Ray's overhead per batch of work and an estimate, with
its arithmetic, of N machines.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from chatbot_llm.bench.run import machine
from chatbot_llm.scale.cluster import keep_ray_on_loopback

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from soak import write_prompts  # noqa: E402  same prompt text as the soak benchmark

SUMMARY = re.compile(r"ray: (\d+) workers.*?, (\d+) prompts in ([\d.]+) s = ([\d.]+) prompts/s; of ([\d.]+) "
                     r"worker-seconds: loading ([\d.]+), generating ([\d.]+), Ray .*? ([\d.]+); first result after ([\d.]+) s, "
                     r"then ~(\d+) ms of Ray per batch")


def run(args: list[str], out: Path) -> dict:
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(ROOT)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "chatbot_llm", "batch", *args, "-o", str(out), "--overwrite"],
                            capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the command's own process (Ray's workers are not its children)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if result.returncode:
        raise SystemExit(result.stderr)
    entry = {"command": "chatbot-llm batch " + " ".join(args), "wall_s": round(wall, 2), "process_cpu_s": round(cpu, 2)}
    match = SUMMARY.search(result.stderr)
    if match:
        workers, prompts, seconds, rate, busy, load, work, ray_s, startup, per_batch = match.groups()
        entry["ray_summary"] = {"workers": int(workers), "job_s": float(seconds), "prompts_per_s": float(rate),
                                "worker_s": float(busy), "load_s": float(load), "generating_s": float(work),
                                "ray_overhead_s": float(ray_s), "first_result_s": float(startup),
                                "overhead_ms_per_batch": int(per_batch)}
    return entry


def records(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in path.read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=2000)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", type=Path)
    options = parser.parse_args()

    keep_ray_on_loopback()  # the cluster listens on 127.0.0.1 only (before ray is imported)
    import ray

    work = Path(tempfile.mkdtemp(prefix="ray_bench_"))
    prompts = work / "prompts.txt"
    write_prompts(prompts, options.lines)
    common = [str(prompts), "--model", "dream", "--variant", "opt", "--greedy", "--format", "jsonl",
              "--max-new-tokens", str(options.max_new_tokens), "--batch-size", str(options.batch_size)]
    # the export is made (or checked) once, before anything is timed
    (work / "one.txt").write_text("warming up\n")
    run([str(work / "one.txt"), *common[1:]], work / "warm.jsonl")

    started = time.perf_counter()
    os.environ["RAY_AUTH_MODE"] = "disabled"  # a cluster on this machine only; the children join without a token
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - started
    address = ray.get_runtime_context().gcs_address

    runs = {"local": run(common, work / "local.jsonl")}
    reference = records(work / "local.jsonl")
    for workers in (1, 2):
        out = work / f"ray{workers}.jsonl"
        runs[f"ray_{workers}_workers"] = run([*common, "--ray", address, "--workers", str(workers)], out)
        assert records(out) == reference, f"--ray with {workers} workers wrote other records than the local run"
    runs["local_again"] = run(common, work / "local2.jsonl")
    ray.shutdown()

    lines = options.lines
    for entry in runs.values():
        entry["prompts_per_s"] = round(lines / entry["wall_s"], 1)
    local_rate = lines / min(runs["local"]["wall_s"], runs["local_again"]["wall_s"])
    one, two = runs["ray_1_workers"]["ray_summary"], runs["ray_2_workers"]["ray_summary"]
    per_machine = two["prompts_per_s"]  # 2 workers on this 2-core machine, after the first result
    driver_cpu = runs["ray_2_workers"]["process_cpu_s"]  # the driver's CPU, start-up included: an upper bound
    driver_limit = lines / driver_cpu
    startup = two["first_result_s"]
    estimate = {
        "assumptions": "N machines like this one (2 cores: 2 workers x 1 thread each), the export on a shared path "
                       "or shipped with the job, one driver writing the records in file order",
        "per_machine_prompts_per_s": per_machine,
        "ray_overhead_ms_per_batch": two["overhead_ms_per_batch"],
        "driver_cpu_s_per_prompt": round(driver_cpu / lines, 5),
        "driver_limit_prompts_per_s": round(driver_limit, 1),
        "arithmetic": (f"one machine measured {per_machine} prompts/s with 2 workers (Ray's cost "
                       f"~{two['overhead_ms_per_batch']} ms per batch of {options.batch_size} against "
                       f"{options.batch_size / (lines / one['generating_s']) * 1000:.0f} ms of generation, so it "
                       f"scales with workers); N machines give min(N x {per_machine}, driver limit) where the driver "
                       f"spent {driver_cpu:.1f} CPU-s on {lines} prompts = {driver_cpu / lines * 1000:.2f} ms each, "
                       f"a limit of {driver_limit:.0f} prompts/s; plus ~{startup:.0f} s to the first result"),
        "prompts_per_s": {str(n): round(min(n * per_machine, driver_limit), 1) for n in (1, 4, 16, 64)},
        "hours_for_1M_prompts": {str(n): round(1e6 / min(n * per_machine, driver_limit) / 3600, 2) for n in (1, 4, 16, 64)},
    }
    report = {
        "machine": machine(),
        "note": "one run, one machine, shared with other work: compare the figures with each other, not with other runs",
        "lines": lines, "max_new_tokens": options.max_new_tokens, "batch_size": options.batch_size,
        "ray_start_s": round(ray_start, 2),
        "runs": runs,
        "local_prompts_per_s_best": round(local_rate, 1),
        "speedup_2_workers_vs_local": round(runs["ray_2_workers"]["prompts_per_s"] / local_rate, 2),
        "same_records_as_local": True,
        "n_machine_estimate": estimate,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if options.json:
        options.json.parent.mkdir(parents=True, exist_ok=True)
        options.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
