"""The README's performance section: run the benchmark, record it, and write the tables.

    python benchmarks/perf_report.py            # bench now (about 10 minutes), then rewrite README
    python benchmarks/perf_report.py --no-run   # redraw the plot and rewrite README from the recorded results

The bench is `chatbot-llm bench` with the issue's settings on the random GPT-2-124M shape: every
backend in its own process, one after the other on the same machine, batch sizes 1, 8 and 32,
20-token prompts, 64 greedy new tokens, median of 5 after a warm-up. CTranslate2 joins when the
`ctranslate2` package is installed (it is a comparator, not a dependency). The results go to
benchmarks/results/bench_gpt2-124m.json and .png; int8 quality comes from the files
benchmarks/int8_quality.py wrote for the shipped models. The section of README.md between the
perf markers is replaced; nothing else in it is touched.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
BENCH_JSON, BENCH_PNG = RESULTS / "bench_gpt2-124m.json", RESULTS / "bench_gpt2-124m.png"
QUALITY = {"dream_gpt2": RESULTS / "int8_quality_dream.json", "email_gpt2": RESULTS / "int8_quality_email.json"}
START, END = "<!-- perf:start (benchmarks/perf_report.py writes this section) -->", "<!-- perf:end -->"
COMMAND = ("chatbot-llm bench --shape gpt2-124m --backends {backends} --batch-sizes 1,8,32 --prompt-tokens 20 "
           "--new-tokens 64 --repeats 5 --cli-path")


def run(backends: list[str]) -> dict:
    from chatbot_llm.bench.report import plot
    from chatbot_llm.bench.run import run_bench
    from chatbot_llm.bench.shapes import shape_checkpoint
    from chatbot_llm.models import resolve_model

    ref = resolve_model(str(shape_checkpoint("gpt2-124m", ROOT)))
    report = run_bench(ref, backends, [1, 8, 32], 20, 64, 5, on_backend=lambda b: print(f"bench: {b}", flush=True),
                       cli_path=True)
    report["command"] = COMMAND.format(backends=",".join(backends))
    report["model"] = "checkpoints/gpt2-124m (random weights, GPT-2 small shape, seed 0)"
    RESULTS.mkdir(parents=True, exist_ok=True)
    BENCH_JSON.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, BENCH_PNG)
    return report


QUANTIZED = ("onnx-int8", "onnx-int4")


def targets(report: dict, quality: dict[str, dict]) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for each of issue 12's CPU targets the figures can speak to."""
    r = report["results"]
    rows = []
    if "onnx-opt" in r:
        x = r["onnx-opt"]["speedup_vs_torch"]
        rows.append(("onnx-opt ≥ 2x PyTorch per token, batch 1", f"{x:.2f}x", x >= 2))
    quantized = [n for n in QUANTIZED if n in r]
    if quantized and "ct2-int8" in r:
        ct2 = r["ct2-int8"]
        fastest = min(quantized, key=lambda n: r[n]["decode_ms_median"])
        a, b = r[fastest]["decode_ms_median"], ct2["decode_ms_median"]
        rows.append(("fastest quantized variant ≥ 1.25x CTranslate2 int8 per token, batch 1",
                     f"{fastest} {a:.2f} vs {b:.2f} ms/token ({b / a:.2f}x)", b / a >= 1.25))
        best = max(quantized, key=lambda n: r[n]["throughput"]["32"])
        a, b = r[best]["throughput"]["32"], ct2["throughput"]["32"]
        rows.append(("fastest quantized variant ≥ 1.5x CTranslate2 int8's throughput, batch 32",
                     f"{best} {a:,.0f} vs {b:,.0f} tok/s ({a / b:.2f}x)", a / b >= 1.5))
    if "onnx-int8" in r:
        share = r["onnx-int8"]["rss_vs_torch"]
        rows.append(("onnx-int8 peak RSS ≤ 40% of PyTorch's (batch 1)", f"{share:.0%}", share <= 0.40))
    for name, q in quality.items():
        for variant, bound in (("int8", 0.01), ("int4", 0.03)):
            if variant in q["variants"]:
                d = q["variants"][variant]["perplexity_vs_fp32"]
                rows.append((f"{variant} held-out perplexity within {bound:.0%} of fp32, {name}", f"{d:+.2%}",
                             abs(d) <= bound))
    return rows


def section(report: dict, quality: dict[str, dict]) -> str:
    r, m = report["results"], report["machine"]
    lines = [
        START, "",
        f"Measured {report['date']} on {m['cpu']} ({m['cores']} cores, {m['memory_gb']} GB), "
        f"{m['versions'].get('onnxruntime')}, torch {m['versions'].get('torch')}"
        + (f", ctranslate2 {m['versions']['ctranslate2']}" if "ctranslate2" in m["versions"] else "") + ", with",
        "", f"    {report['command']}", "",
        f"on {report['model']}. Each backend ran in its own process, one after the other; every figure is",
        "a median of 5 after a warm-up. ms/token is a decode step (batch 1) after the first token; tok/s is",
        "generated tokens per second of wall time at that batch size, prefill included; batch path is",
        "ms/token through the code `batch --batch-size 1` runs, with the model's own sampling defaults",
        "(tokenizer, processors, sampler and decoding included). Every backend ran with the same thread",
        "count. Written by `python benchmarks/perf_report.py`; the JSON and the plot are in",
        "`benchmarks/results/`.", "",
        "| backend | ms/token (p95) | vs torch | first token ms | tok/s b1 | tok/s b8 | tok/s b32 "
        "| b32 vs torch loop | peak RSS MB b1 (vs torch) | disk MB | greedy = torch, b32 | batch path ms/token |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, x in r.items():
        agree = x.get("greedy_agreement")
        agree = f"{agree['rows_identical']}/{agree['rows']} rows, {agree['mean_prefix_share']:.0%} of tokens" \
            if agree else "-"
        path = f"{x['cli_path']['ms_per_token']:.2f}" if x.get("cli_path") else "-"
        lines.append(
            f"| {name} | {x['decode_ms_median']:.2f} ({x['decode_ms_p95']:.2f}) | {x.get('speedup_vs_torch', 1):.2f}x "
            f"| {x['first_token_ms']:.1f} | {x['throughput']['1']:,.0f} | {x['throughput']['8']:,.0f} "
            f"| {x['throughput']['32']:,.0f} | {x.get('throughput_vs_torch_loop', {}).get('32', 0):.1f}x "
            f"| {x['peak_rss_mb']:,.0f} ({x.get('rss_vs_torch', 1):.0%}) | {x['disk_mb']:,.0f} | {agree} | {path} |"
        )
    lines += ["", f"![latency and throughput](benchmarks/results/{BENCH_PNG.name})", ""]
    if quality:
        lines += ["Quality of the quantized variants on the shipped models (`python benchmarks/int8_quality.py "
                  "models/NAME --json ...`): held-out perplexity scored by each ONNX variant, and greedy agreement "
                  "with PyTorch on held-out prompt starts (32 tokens each).", "",
                  "| model | variant | held-out perplexity | vs fp32 | greedy = torch | tokens before the first difference |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for name, q in quality.items():
            for variant, v in q["variants"].items():
                lines.append(f"| {name} | {variant} | {v['heldout_perplexity']:.3f} | {v['perplexity_vs_fp32']:+.2%} "
                             f"| {v['greedy_rows_identical']}/{q['prompts']} | {v['greedy_mean_prefix_share']:.0%} |")
        lines.append("")
    lines += [f"The CPU targets of issue 12, from the figures above ({m['cpu']}):", "",
              "| target | measured | met |", "| --- | --- | --- |"]
    lines += [f"| {t} | {v} | {'yes' if ok else '**no**'} |" for t, v, ok in targets(report, quality)]
    lines += ["| batch invariance: greedy and seeded output identical at every batch size, every variant "
              "| tests/test_generation.py, tests/test_graph.py (bit-identical logits per row) | yes |", "",
              "Machine kinds: this run is the only one of the decoder graph so far. It has not been measured on "
              "the AMD EPYC machines, where the earlier graph was (2026-11-25, in git history), nor on a GPU: "
              "the GPU targets are pending."]
    return "\n".join(lines + ["", END])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-run", action="store_true", help="Rewrite the README from the recorded results.")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = parser.parse_args()
    if args.no_run:
        from chatbot_llm.bench.report import plot

        report = json.loads(BENCH_JSON.read_text())
        plot(report, BENCH_PNG)
    else:
        backends = ["torch", "onnx-fp32", "onnx-opt", "onnx-int8", "onnx-int4"]
        try:
            import ctranslate2  # noqa: F401

            backends += ["ct2-int8", "ct2-fp32"]
        except ImportError:
            print("ctranslate2 is not installed: the table leaves out the CTranslate2 comparator")
        report = run(backends)
    quality = {name: json.loads(p.read_text()) for name, p in QUALITY.items() if p.is_file()}
    text = args.readme.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise SystemExit(f"{args.readme} has no perf markers; add {START!r} and {END!r} where the section goes")
    before, rest = text.split(START, 1)
    after = rest.split(END, 1)[1]
    args.readme.write_text(before + section(report, quality) + after, encoding="utf-8")
    for target, measured, met in targets(report, quality):
        print(f"{'met' if met else 'NOT MET':8s} {target}: {measured}")


if __name__ == "__main__":
    main()
