"""Load-test `chatbot-llm serve` on 127.0.0.1 against `batch --batch-size 32` on the same prompts.

    python benchmarks/serve_load.py --requests 2000 --clients 64 --json benchmarks/results/serve_load.json

Starts the real server on the shipped dream model (exported on first use) on a free loopback
port, then CLIENTS streaming clients (httpx, one connection each) take the next of REQUESTS
prompts until all are answered. Each request records its time to first token (the first text
delta), its total latency and its tokens (the usage chunk). At the end every prompt index must
have been answered exactly once, with one finish_reason and one [DONE]. The server's resident
memory (VmRSS) is sampled every quarter second. Then `chatbot-llm batch --batch-size 32` runs the
same prompts with the same settings, once before the server and once after it (other work on
the shared cores comes and goes, so the server is compared with the mean of the two); its wall
time, less a one-prompt run's start-up, gives its tokens/s. The machine's load average and each
run's CPU seconds are recorded too.
A PNG beside the JSON shows RSS over the run and the latency distributions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from soak import rss_mb, write_prompts  # noqa: E402  (benchmarks/soak.py: the same prompt file)

from chatbot_llm.bench.run import machine  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


class _Reply:
    """What one streamed request gave: its SSE events, parsed as they come."""

    def __init__(self, index: int):
        self.index, self.start = index, time.perf_counter()
        self.first: float | None = None
        self.text, self.finishes, self.done, self.usage = "", [], 0, None

    def line(self, line: str) -> None:
        if not line.startswith("data: "):
            return
        data = line[6:].strip()
        if data == "[DONE]":
            self.done += 1
            return
        chunk = json.loads(data)
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk["choices"]:
            if choice["text"] and self.first is None:
                self.first = time.perf_counter() - self.start
            self.text += choice["text"]
            if choice["finish_reason"]:
                self.finishes.append(choice["finish_reason"])

    def result(self) -> dict:
        end = time.perf_counter() - self.start
        return {"index": self.index, "ttft": self.first if self.first is not None else end, "latency": end,
                "text": self.text, "finishes": self.finishes, "done": self.done,
                "tokens": self.usage["completion_tokens"] if self.usage else 0, "finished_at": time.perf_counter()}


def _body(prompt: str, settings: dict) -> dict:
    return {"model": "dream", "prompt": prompt, "stream": True, "stream_options": {"include_usage": True}, **settings}


async def load(url: str, prompts: list[str], clients: int, settings: dict,
               client: str = "aiohttp") -> tuple[list[dict], float]:
    """CLIENTS streaming clients, each with one keep-alive connection, take the next prompt until
    none is left. client: aiohttp (the default: it parses a stream with about half httpx's CPU,
    which on two shared cores is the server's) or httpx."""
    queue = list(enumerate(prompts, start=1))
    queue.reverse()
    results: list[dict] = []

    async def with_httpx() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=600) as session:
            while queue:
                index, prompt = queue.pop()
                reply = _Reply(index)
                async with session.stream("POST", "/v1/completions", json=_body(prompt, settings)) as response:
                    response.raise_for_status()
                    async for line in response.aiter_lines():
                        reply.line(line)
                results.append(reply.result())

    async def with_aiohttp() -> None:
        import aiohttp

        async with aiohttp.ClientSession(url, timeout=aiohttp.ClientTimeout(total=600),
                                         connector=aiohttp.TCPConnector(limit=1)) as session:
            while queue:
                index, prompt = queue.pop()
                reply = _Reply(index)
                async with session.post("/v1/completions", json=_body(prompt, settings)) as response:
                    response.raise_for_status()
                    async for line in response.content:
                        reply.line(line.decode())
                results.append(reply.result())

    client_loop = {"aiohttp": with_aiohttp, "httpx": with_httpx}[client]
    start = time.perf_counter()
    await asyncio.gather(*[client_loop() for _ in range(clients)])
    return results, time.perf_counter() - start


def sample_rss(pid: int, samples: list, stop: threading.Event, t0: float) -> None:
    while not stop.is_set():
        rss = rss_mb(pid)
        if rss is not None:
            samples.append((round(time.perf_counter() - t0, 2), round(rss, 1)))
        stop.wait(0.25)


def run_batch(prompt_file: Path, out: Path, max_tokens: int, batch_size: int) -> tuple[float, float]:
    """Wall seconds and CPU seconds of one `batch` run."""
    import resource

    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "chatbot_llm", "batch", str(prompt_file), "--model", "dream",
                    "--batch-size", str(batch_size), "--max-new-tokens", str(max_tokens), "--format", "jsonl",
                    "-o", str(out), "--overwrite"], cwd=REPO, check=True, stderr=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter() - start, after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime


def batch_figures(prompt_file: Path, work: Path, prompts: list[str], max_tokens: int, name: str) -> dict:
    one = work / "one.txt"
    one.write_text(prompts[0] + "\n")
    startup, _ = run_batch(one, work / "one.jsonl", max_tokens, 32)
    out = work / f"{name}.jsonl"
    wall, cpu = run_batch(prompt_file, out, max_tokens, 32)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    tokens = sum(r["new_tokens"] for r in rows)
    seconds = wall - startup  # less start-up and loading, as the server's figure has none
    return {"batch_size": 32, "wall_seconds": round(wall, 2), "startup_seconds_one_prompt_run": round(startup, 2),
            "generation_seconds": round(seconds, 2), "rows": len(rows), "completion_tokens": tokens,
            "tokens_per_second": round(tokens / seconds, 1), "cpu_seconds": round(cpu, 1),
            "load_average_after": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--client", choices=["aiohttp", "httpx"], default="aiohttp",
                        help="the load test's HTTP client (default aiohttp: the lighter on the shared cores)")
    parser.add_argument("--lanes", type=int, help="serve --lanes N (default: serve's own)")
    parser.add_argument("--stream-interval", type=int, default=0, help="serve --stream-interval MS (default 0)")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "serve_load.json")
    args = parser.parse_args()
    settings = {"max_tokens": args.max_tokens}  # the rest: dream's generation_config.json, as batch uses
    work = Path(tempfile.mkdtemp(prefix="serve_load-"))
    prompt_file = work / "prompts.txt"
    prompts = write_prompts(prompt_file, args.requests)
    load_before = os.getloadavg()
    batch_before = batch_figures(prompt_file, work, prompts, args.max_tokens, "batch_before")

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(work / "serve.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "chatbot_llm", "serve", "--model", "dream", "--port", str(port),
                               "--max-batch", str(args.max_batch), "--stream-interval", str(args.stream_interval), "--log-db", str(work / "history.db"),
                               *(["--lanes", str(args.lanes)] if args.lanes else [])],
                              cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 900  # a first run exports dream
        while time.time() < deadline:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                if server.poll() is not None:
                    sys.exit(f"serve exited: {(work / 'serve.log').read_text()}")
                time.sleep(0.5)
        # one request first, so the start RSS is that of a server that has generated
        httpx.post(url + "/v1/completions", json={"model": "dream", "prompt": "warm up", **settings}, timeout=60)
        rss_start = rss_mb(server.pid)
        server_cpu_start, client_cpu_start = cpu_seconds(server.pid), time.process_time()
        samples: list = []
        stop = threading.Event()
        t0 = time.perf_counter()
        sampler = threading.Thread(target=sample_rss, args=(server.pid, samples, stop, t0), daemon=True)
        sampler.start()
        results, wall = asyncio.run(load(url, prompts, args.clients, settings, args.client))
        stop.set()
        sampler.join()
        rss_end = rss_mb(server.pid)
        server_cpu = cpu_seconds(server.pid) - server_cpu_start
        client_cpu = time.process_time() - client_cpu_start
    finally:
        server.terminate()
        server.wait(timeout=60)
    load_during = os.getloadavg()

    answered = [r["index"] for r in results]
    exactly_once = (sorted(answered) == list(range(1, args.requests + 1))
                    and all(len(r["finishes"]) == 1 and r["done"] == 1 for r in results))
    tokens = sum(r["tokens"] for r in results)

    batch_after = batch_figures(prompt_file, work, prompts, args.max_tokens, "batch_after")

    server_tps = tokens / wall
    batch_tps = (batch_before["tokens_per_second"] + batch_after["tokens_per_second"]) / 2
    report = {
        "command": " ".join(["python benchmarks/serve_load.py", *sys.argv[1:]]),
        "machine": machine(),
        "load_average_1_5_15": {"before": load_before, "after_server_run": load_during},
        "settings": {"model": "dream", "variant": "opt (default)", "requests": args.requests, "clients": args.clients, "client": args.client,
                     "max_tokens": args.max_tokens, "max_batch": args.max_batch, "stream_interval_ms": args.stream_interval,
                     "lanes": args.lanes or "serve's default",
                     "sampling": "dream's generation_config.json (temperature 0.7, top_k 50, top_p 0.9, "
                                 "repetition_penalty 1.2), unseeded"},
        "server": {
            "wall_seconds": round(wall, 2), "requests": len(results), "completion_tokens": tokens,
            "tokens_per_second": round(server_tps, 1),
            "ttft_ms": {"p50": round(1000 * percentile([r["ttft"] for r in results], 50), 1),
                        "p95": round(1000 * percentile([r["ttft"] for r in results], 95), 1)},
            "latency_ms": {"p50": round(1000 * percentile([r["latency"] for r in results], 50), 1),
                           "p95": round(1000 * percentile([r["latency"] for r in results], 95), 1)},
            "rss_mb": {"start": rss_start, "end": rss_end, "peak": max(s[1] for s in samples) if samples else None},
            "every_request_answered_exactly_once": exactly_once,
            "cpu_seconds": {"server": round(server_cpu, 1), "load_test_clients": round(client_cpu, 1)},
        },
        "batch_before_server": batch_before,
        "batch_after_server": batch_after,
        "batch_tokens_per_second_mean": round(batch_tps, 1),
        "server_vs_batch_tokens_per_second": round(server_tps / batch_tps, 3),
        "tokens_per_cpu_second": {
            "server": round(tokens / server_cpu, 1),
            "batch": round((batch_before["completion_tokens"] + batch_after["completion_tokens"])
                           / (batch_before["cpu_seconds"] + batch_after["cpu_seconds"]), 1)},
        "rss_samples": samples,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    plot(report, results, args.json.with_suffix(".png"))
    print(json.dumps({k: v for k, v in report.items() if k != "rss_samples"}, indent=1))


def plot(report: dict, results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (rss, latency, throughput) = plt.subplots(1, 3, figsize=(15, 4.2))
    times, values = zip(*report["rss_samples"]) if report["rss_samples"] else ((), ())
    rss.plot(times, values)
    rss.set(title="server RSS during the load test", xlabel="seconds", ylabel="MB")
    rss.set_ylim(0, max(values or [1]) * 1.2)
    latency.hist([1000 * r["ttft"] for r in results], bins=40, alpha=0.7, label="time to first token")
    latency.hist([1000 * r["latency"] for r in results], bins=40, alpha=0.7, label="total latency")
    latency.set(title=f"{len(results)} requests, {report['settings']['clients']} streaming clients",
                xlabel="ms", ylabel="requests")
    latency.legend()
    names = [f"serve\n{report['settings']['clients']} clients", "batch before\n--batch-size 32",
             "batch after\n--batch-size 32"]
    rates = [report["server"]["tokens_per_second"], report["batch_before_server"]["tokens_per_second"],
             report["batch_after_server"]["tokens_per_second"]]
    throughput.bar(names, rates, color=["tab:blue", "tab:gray", "tab:gray"])
    throughput.set(title=f"tokens/s (serve = {report['server_vs_batch_tokens_per_second']:.0%} of batch's mean)",
                   ylabel="tokens/s")
    figure.suptitle(f"chatbot-llm serve, dream, max_tokens {report['settings']['max_tokens']}: "
                    f"{report['machine']['cpu']}, {report['machine']['cores']} cores", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
