"""A bench report as a rich table, and as a PNG for people who would rather look than read."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from chatbot_llm.errors import UsageError


def table(report: dict) -> Table:
    settings = report["settings"]
    sizes = [str(s) for s in settings["batch_sizes"]]
    title = (f"{report['model']}: {settings['prompt_tokens']}-token prompts, {settings['new_tokens']} greedy "
             f"new tokens, median of {settings['repeats']}"
             + (f", then of {settings['rounds']} rounds" if settings.get("rounds", 1) > 1 else ""))
    caption = f"{device_words(report)}, {report['date']}"
    out = Table(title=title, caption=caption)
    for column in ("backend", "load s", "first token ms", "ms/token", "p95 ms", "vs torch"):
        out.add_column(column, justify="right" if column != "backend" else "left", no_wrap=column == "backend")
    for size in sizes:
        out.add_column(f"tok/s b{size}", justify="right")
    for column in ("peak RSS MB b1", f"peak RSS MB b{sizes[-1]}", "disk MB", "greedy = torch"):
        out.add_column(column, justify="right")
    with_path = any(r.get("cli_path") for r in report["results"].values())
    if with_path:
        out.add_column("batch path ms/token", justify="right")
    for name, r in report["results"].items():
        agreement = r.get("greedy_agreement")
        agree = f"{agreement['rows_identical']}/{agreement['rows']} ({agreement['mean_prefix_share']:.0%})" \
            if agreement else "-"
        speedup = f"{r['speedup_vs_torch']:.2f}x" if "speedup_vs_torch" in r else "-"
        out.add_row(
            name, f"{r['load_seconds']:.2f}", f"{r['first_token_ms']:.1f}", f"{r['decode_ms_median']:.2f}",
            f"{r['decode_ms_p95']:.2f}", speedup, *[f"{r['throughput'][s]:,.0f}" for s in sizes],
            f"{r['peak_rss_mb']:,.0f}", f"{r.get('peak_rss_all_mb', r['peak_rss_mb']):,.0f}",
            f"{r['disk_mb']:,.0f}", agree,
            *([f"{r['cli_path']['ms_per_token']:.2f}" if r.get("cli_path") else "-"] if with_path else []),
        )
    return out


def device_words(report: dict) -> str:
    """The machine a report ran on, as a caption: the GPU on CUDA, the CPU always, and onnxruntime."""
    m = report["machine"]
    words = f"{m['cpu']}, {m['cores']} cores"
    if report["settings"].get("device") == "cuda":
        words = f"{m.get('gpu') or 'an unnamed GPU'}; {words}"
    return f"{words}; {m['versions'].get('onnxruntime', '')}"


def summary_lines(report: dict) -> list[str]:
    """The ratios a user asks first: how much faster than PyTorch, and how much smaller."""
    results, lines = report["results"], []
    if "torch" not in results:
        return lines
    largest = str(max(report["settings"]["batch_sizes"]))
    for name, r in results.items():
        if name == "torch":
            continue
        loop = r.get("throughput_vs_torch_loop", {}).get(largest)
        lines.append(
            f"{name}: {r['speedup_vs_torch']:.2f}x torch per decoded token"
            + (f", batch {largest} {loop:.1f}x the one-prompt-at-a-time torch loop" if loop else "")
            + f", peak RSS {r['rss_vs_torch']:.0%} of torch at batch 1"
            + (f" ({r['rss_all_vs_torch']:.0%} at batch {largest})" if "rss_all_vs_torch" in r else "")
        )
    return lines


def check_plotting() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'chatbot-llm[bench]'") from None


def plot(report: dict, path: Path) -> None:
    check_plotting()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    results = report["results"]
    names = list(results)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    medians = [results[n]["decode_ms_median"] for n in names]
    p95 = [results[n]["decode_ms_p95"] - results[n]["decode_ms_median"] for n in names]
    bars = left.bar(names, medians, yerr=[[0] * len(names), p95], capsize=4,
                    color=["#888888" if n == "torch" else "#2b7bba" for n in names])
    for bar, name, whisker in zip(bars, names, p95):
        ratio = results[name].get("speedup_vs_torch")
        label = f"{bar.get_height():.1f} ms" + (f"\n{ratio:.2f}x" if ratio and name != "torch" else "")
        left.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height() + whisker), ha="center",
                      va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    left.set_ylabel("ms per decoded token (batch 1; whisker: p95)")
    left.set_title("Latency, lower is better")
    left.tick_params(axis="x", rotation=20)
    for name in names:
        sizes = sorted(int(s) for s in results[name]["throughput"])
        right.plot(sizes, [results[name]["throughput"][str(s)] for s in sizes], marker="o", label=name)
    right.set_xscale("log", base=2)
    right.set_yscale("log")
    right.set_xlabel("batch size (prompts at once)")
    right.set_ylabel("generated tokens per second")
    right.set_title("Throughput, higher is better")
    right.legend()
    right.grid(True, which="both", alpha=0.3)
    settings = report["settings"]
    fig.suptitle(f"{Path(report['model']).name}: {settings['prompt_tokens']}-token prompts, "
                 f"{settings['new_tokens']} new tokens; {device_words(report)}, {report['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
