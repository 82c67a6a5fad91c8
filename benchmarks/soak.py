"""Soak a long `batch` run: memory sampled as it goes, and every prompt exactly once at the end.

    python benchmarks/soak.py --lines 100000 --max-new-tokens 2 --json benchmarks/results/soak_100k.json
    python benchmarks/soak.py --lines 2000 --max-new-tokens 48 --json benchmarks/results/soak_2000.json

Writes a prompt file of LINES lines (windows of varied length into a fixed text, so they are real
English and the batches mix lengths), runs `chatbot-llm batch` on it in a child process (the
shipped dream model, int8, JSONL output), and reads the child's resident memory (VmRSS) and the
number of rows written every quarter second. At the end every row is checked: the indexes are
1..LINES once each, in order, and each prompt is the line it says it is. The JSON holds the RSS
samples, the peak, the RSS at each tenth of the run and the growth from the first quarter to the
end; a PNG of RSS against rows goes beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from chatbot_llm.bench.run import machine
from chatbot_llm.bench.worker import TEXT


def write_prompts(path: Path, lines: int) -> list[str]:
    words = TEXT.split()
    prompts = []
    with open(path, "w", encoding="utf-8") as f:
        for i in range(lines):
            start, length = (i * 7) % (len(words) - 40), 3 + (i * 13) % 30
            prompt = f"{i}: " + " ".join(words[start : start + length])
            prompts.append(prompt)
            f.write(prompt + "\n")
    return prompts


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except OSError:
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=2000)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--model", default="dream")
    parser.add_argument("--variant", default="int8")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="soak-"))
    prompt_file, out = work / "prompts.txt", work / "out.jsonl"
    prompts = write_prompts(prompt_file, args.lines)
    command = [sys.executable, "-m", "chatbot_llm", "batch", str(prompt_file), "--model", args.model,
               "--variant", args.variant, "-o", str(out), "--format", "jsonl", "--batch-size", str(args.batch_size),
               "--max-new-tokens", str(args.max_new_tokens), "--seed", "0"]
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples = []  # (seconds, rows written, RSS MB)
    while child.poll() is None:
        rss = rss_mb(child.pid)
        if rss is not None:
            samples.append((round(time.perf_counter() - started, 2), count_lines(out), round(rss, 1)))
        time.sleep(0.25)
    stderr = child.stderr.read()
    wall = time.perf_counter() - started
    if child.returncode != 0:
        raise SystemExit(f"batch failed ({child.returncode}): {stderr.strip().splitlines()[-1:]}")

    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    indexes = [r["index"] for r in rows]
    checks = {
        "rows": len(rows),
        "every_index_once_in_order": indexes == list(range(1, args.lines + 1)),
        "prompts_match_their_lines": all(r["prompt"] == prompts[r["index"] - 1] for r in rows),
        "duplicates": len(indexes) - len(set(indexes)),
    }
    loaded = [s for s in samples if s[1] > 0]  # after the model is loaded and the first rows are out
    by_tenth = {}
    for tenth in range(1, 11):
        target = args.lines * tenth / 10
        at = next((s for s in loaded if s[1] >= target), loaded[-1] if loaded else None)
        if at:
            by_tenth[f"{tenth * 10}%"] = at[2]
    quarter = next((s for s in loaded if s[1] >= args.lines / 4), None)
    report = {
        "command": " ".join(["chatbot-llm", *command[3:]]).replace(str(work), "<tmp>"),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "lines": args.lines,
        "max_new_tokens": args.max_new_tokens,
        "wall_seconds": round(wall, 1),
        "prompts_per_second": round(args.lines / wall, 1),
        "peak_rss_mb": max(s[2] for s in samples),
        "rss_mb_by_progress": by_tenth,
        "rss_growth_from_25pct_to_end_mb": round(loaded[-1][2] - quarter[2], 1) if quarter and loaded else None,
        "checks": checks,
        "samples": samples,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    _plot(report, args.json.with_suffix(".png"))
    print(json.dumps({k: v for k, v in report.items() if k not in ("samples", "machine")}, indent=1))
    os.remove(out)
    os.remove(prompt_file)
    os.rmdir(work)


def _plot(report: dict, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [s[1] for s in report["samples"]]
    rss = [s[2] for s in report["samples"]]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.plot(rows, rss)
    ax.set_xlabel("rows written")
    ax.set_ylabel("resident memory of batch, MB")
    ax.set_ylim(0, max(rss) * 1.15)
    ax.set_title(f"batch over {report['lines']:,} prompts, {report['max_new_tokens']} new tokens each: "
                 f"peak {report['peak_rss_mb']:.0f} MB", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
