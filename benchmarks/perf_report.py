"""The README's performance section: run the benchmark, record it, and write the tables.

    python benchmarks/perf_report.py            # bench this machine now (about 10 minutes), then rewrite README
    python benchmarks/perf_report.py --no-run   # redraw the plots and rewrite README from the recorded results

The bench is `chatbot-llm bench` with the issue's settings on the random GPT-2-124M shape: every
backend in its own process, one after the other on the same machine, batch sizes 1, 8 and 32,
20-token prompts, 64 greedy new tokens, median of 3 after a warm-up, and the whole list of backends
three times over (each figure the median of the three rounds). CTranslate2 joins when the
`ctranslate2` package is installed (it is a comparator, not a dependency). The results go to
benchmarks/results/bench_gpt2-124m_KIND.json and .png, one pair per machine kind (amd-epyc,
intel-xeon: ratios measured on one do not carry to the other), beside gemv_bandwidth_KIND.json from
benchmarks/gemv_bandwidth.py when it was run; int8 quality comes from the files
benchmarks/int8_quality.py wrote for the shipped models. The section of README.md between the
perf markers is replaced; nothing else in it is touched.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
QUALITY = {"dream_gpt2": RESULTS / "int8_quality_dream.json", "email_gpt2": RESULTS / "int8_quality_email.json"}
START, END = "<!-- perf:start (benchmarks/perf_report.py writes this section) -->", "<!-- perf:end -->"
COMMAND = ("chatbot-llm bench --shape gpt2-124m --backends {backends} --batch-sizes 1,8,32 --prompt-tokens 20 "
           "--new-tokens 64 --repeats 3 --rounds 3 --cli-path")


def machine_kind(cpu: str) -> str:
    """The kind of machine a CPU name belongs to: one recorded run per kind (ratios differ by kind)."""
    if "AMD" in cpu or "EPYC" in cpu:
        return "amd-epyc"
    if "Intel" in cpu or "Xeon" in cpu:
        return "intel-xeon"
    return "".join(c if c.isalnum() else "-" for c in cpu.lower()).strip("-") or "unknown"


def bench_files(kind: str) -> tuple[Path, Path, Path]:
    """The bench JSON, its plot, and the GEMV bandwidth JSON (benchmarks/gemv_bandwidth.py) of a kind."""
    return (RESULTS / f"bench_gpt2-124m_{kind}.json", RESULTS / f"bench_gpt2-124m_{kind}.png",
            RESULTS / f"gemv_bandwidth_{kind}.json")


def run(backends: list[str]) -> dict:
    from chatbot_llm.bench.report import plot
    from chatbot_llm.bench.run import run_bench
    from chatbot_llm.bench.shapes import shape_checkpoint
    from chatbot_llm.models import resolve_model

    ref = resolve_model(str(shape_checkpoint("gpt2-124m", ROOT)))
    report = run_bench(ref, backends, [1, 8, 32], 20, 64, 3, rounds=3, on_backend=lambda b: print(f"bench: {b}", flush=True),
                       cli_path=True)
    report["command"] = COMMAND.format(backends=",".join(backends))
    report["model"] = "checkpoints/gpt2-124m (random weights, GPT-2 small shape, seed 0)"
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path, png_path, _ = bench_files(machine_kind(report["machine"]["cpu"]))
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, png_path)
    return report


QUANTIZED = ("onnx-int8", "onnx-int4")


def ratio(x: float, bound: float) -> str:
    """x as "1.23x", with a third decimal where two would round it onto the other side of bound."""
    return f"{x:.3f}x" if (round(x, 2) >= bound) != (x >= bound) else f"{x:.2f}x"


def targets(report: dict, quality: dict[str, dict]) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for each of issue 12's CPU targets the figures can speak to."""
    r = report["results"]
    rows = []
    if "onnx-opt" in r:
        x = r["onnx-opt"]["speedup_vs_torch"]
        rows.append(("onnx-opt ≥ 2x PyTorch per token, batch 1", ratio(x, 2), x >= 2))
    quantized = [n for n in QUANTIZED if n in r]
    if quantized and "ct2-int8" in r:
        ct2 = r["ct2-int8"]
        fastest = min(quantized, key=lambda n: r[n]["decode_ms_median"])
        a, b = r[fastest]["decode_ms_median"], ct2["decode_ms_median"]
        rows.append(("fastest quantized variant ≥ 1.25x CTranslate2 int8 per token, batch 1",
                     f"{fastest} {a:.2f} vs {b:.2f} ms/token ({ratio(b / a, 1.25)})", b / a >= 1.25))
        best = max(quantized, key=lambda n: r[n]["throughput"]["32"])
        a, b = r[best]["throughput"]["32"], ct2["throughput"]["32"]
        rows.append(("fastest quantized variant ≥ 1.5x CTranslate2 int8's throughput, batch 32",
                     f"{best} {a:,.0f} vs {b:,.0f} tok/s ({ratio(a / b, 1.5)})", a / b >= 1.5))
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


def machine_table(kind: str, report: dict, gemv: dict | None) -> list[str]:
    r, m = report["results"], report["machine"]
    lines = [
        f"### {m['cpu']} ({kind})", "",
        f"Measured {report['date']} ({m['cores']} cores, {m['memory_gb']} GB), "
        f"{m['versions'].get('onnxruntime')}, torch {m['versions'].get('torch')}"
        + (f", ctranslate2 {m['versions']['ctranslate2']}" if "ctranslate2" in m["versions"] else "")
        + (f", {report['settings']['repeats']} repeats in each of {report['settings']['rounds']} rounds"
           if report["settings"].get("rounds", 1) > 1 else f", median of {report['settings']['repeats']}") + ", with",
        "", f"    {report['command']}", "",
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
    lines += ["", f"![latency and throughput on {kind}](benchmarks/results/{bench_files(kind)[1].name})", ""]
    if gemv and "onnx-opt" in r:
        ort_gemv = gemv["results"]["onnxruntime MatMul"]
        opt_ms = r["onnx-opt"]["decode_ms_median"]
        floor = ort_gemv["ms_median"] * 498 / gemv["weight_mb"]  # GPT-2-124M's decode step reads ~498 MB
        lines += [f"The float32 ceiling on this machine (`python benchmarks/gemv_bandwidth.py --mb "
                  f"{gemv['weight_mb']:.0f}`, {gemv['date']}): onnxruntime streams a {gemv['weight_mb']:.0f} MB "
                  f"float32 weight through one batch-1 MatMul in {ort_gemv['ms_median']:.2f} ms "
                  f"({ort_gemv['gb_per_s']} GB/s), so reading GPT-2-124M's 498 MB of float32 weights once takes "
                  f"at least {floor:.1f} ms. onnx-opt's {opt_ms:.2f} ms/token is {floor / opt_ms:.0%} of that "
                  f"ceiling, which puts a float32 graph at about {r['torch']['decode_ms_median'] / floor:.2f}x "
                  "PyTorch at most here"
                  + (" (a ceiling taken at another minute on this shared host: its memory bandwidth moves by "
                     "10% and more between runs, and part of the weights can stay in cache)." if opt_ms < floor
                     else "."), ""]
    elif "onnx-opt" in r:
        lines += ["The float32 ceiling (`benchmarks/gemv_bandwidth.py`) was not measured on this machine kind.", ""]
    return lines


def section(reports: list[tuple[str, dict, dict | None]], quality: dict[str, dict]) -> str:
    lines = [
        START, "",
        "Every figure below comes from one `bench` run per machine kind: each backend in its own process, one",
        "after the other on the same machine, on checkpoints/gpt2-124m (random weights, GPT-2 small shape,",
        "seed 0); every figure is a median of the repeats after a warm-up, and where the run went over the list of",
        "backends several times (`--rounds`), the median of the rounds. ms/token is a decode step (batch 1) after the",
        "first token; tok/s is generated tokens per second of wall time at that batch size, prefill included;",
        "batch path is ms/token through the code `batch --batch-size 1` runs, with the model's own sampling",
        "defaults (tokenizer, processors, sampler and decoding included). Every backend ran with the same",
        "thread count. Ratios measured on one machine kind do not carry to the other. Written by",
        "`python benchmarks/perf_report.py`; the JSON and the plots are in `benchmarks/results/`.", "",
    ]
    for kind, report, gemv in reports:
        lines += machine_table(kind, report, gemv)
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
    kinds = [kind for kind, _, _ in reports]
    by_kind = {kind: {t: (v, ok) for t, v, ok in targets(report, quality)} for kind, report, _ in reports}
    names = list(dict.fromkeys(t for kind in kinds for t in by_kind[kind]))
    lines += ["The CPU targets of issue 12, per machine kind:", "",
              "| target | " + " | ".join(kinds) + " |", "| --- |" + " --- |" * len(kinds)]
    for name in names:
        cells = []
        for kind in kinds:
            if name not in by_kind[kind]:
                cells.append("not measured")
            else:
                value, ok = by_kind[kind][name]
                cells.append(f"{value}: {'met' if ok else '**not met**'}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["| batch invariance: greedy and seeded output identical at every batch size, every variant | "
              + " | ".join(["tests/test_generation.py, tests/test_graph.py (bit-identical logits per row): met"]
                           * len(kinds)) + " |"]
    lines += ["", "No GPU figure of the current code is recorded yet: the CUDA path is tested on the CPU provider "
              "here (see `--device` under Commands), and its GPU targets are pending a session with a GPU."]
    return "\n".join(lines + ["", END])


def recorded() -> list[tuple[str, dict, dict | None]]:
    """Every machine kind's recorded run, newest first."""
    reports = []
    for path in RESULTS.glob("bench_gpt2-124m_*.json"):
        kind = path.stem.removeprefix("bench_gpt2-124m_")
        gemv_path = bench_files(kind)[2]
        gemv = json.loads(gemv_path.read_text()) if gemv_path.is_file() else None
        reports.append((kind, json.loads(path.read_text()), gemv))
    return sorted(reports, key=lambda r: r[1]["date"], reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-run", action="store_true",
                        help="Redraw the plots and rewrite README from the recorded results of every machine kind.")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = parser.parse_args()
    if args.no_run:
        from chatbot_llm.bench.report import plot

        for kind, report, _ in recorded():
            plot(report, bench_files(kind)[1])
    else:
        backends = ["torch", "onnx-fp32", "onnx-opt", "onnx-int8", "onnx-int4"]
        try:
            import ctranslate2  # noqa: F401

            backends += ["ct2-int8", "ct2-fp32"]
        except ImportError:
            print("ctranslate2 is not installed: the table leaves out the CTranslate2 comparator")
        run(backends)
    reports = recorded()
    if not reports:
        raise SystemExit(f"no recorded bench in {RESULTS}; run without --no-run first")
    quality = {name: json.loads(p.read_text()) for name, p in QUALITY.items() if p.is_file()}
    text = args.readme.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise SystemExit(f"{args.readme} has no perf markers; add {START!r} and {END!r} where the section goes")
    before, rest = text.split(START, 1)
    after = rest.split(END, 1)[1]
    args.readme.write_text(before + section(reports, quality) + after, encoding="utf-8")
    for kind, report, _ in reports:
        for target, measured, met in targets(report, quality):
            print(f"{kind:12s} {'met' if met else 'NOT MET':8s} {target}: {measured}")


if __name__ == "__main__":
    main()
