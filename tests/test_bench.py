"""`chatbot-llm bench`: a smoke run on a tiny model produces the table, the JSON and the plot.

Timings are never asserted: benchmarks are not pass/fail tests. What is asserted is that every
figure is there, that the workers really ran each backend, and that bad options are refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import error_lines, run_cli

BACKENDS = ["torch", "onnx-fp32", "onnx-opt", "onnx-int8", "onnx-int4"]


@pytest.fixture(scope="module")
def smoke(tiny_checkpoint, exports, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    result = run_cli("bench", "--model", str(tiny_checkpoint), "--new-tokens", "2", "--repeats", "1",
                     "--batch-sizes", "1,3", "--json", str(out / "bench.json"), "--plot", str(out / "bench.png"),
                     "--cli-path")
    assert result.returncode == 0, result.stderr
    return result, json.loads((out / "bench.json").read_text()), out / "bench.png"


def test_bench_prints_a_table_of_every_backend(smoke):
    result, _, _ = smoke
    for name in BACKENDS:
        assert name in result.stdout
    for column in ("ms/token", "tok/s b1", "tok/s b3", "peak RSS MB", "greedy = torch", "batch path ms/token"):
        assert column in result.stdout
    assert "x torch per decoded token" in result.stdout


def test_bench_json_holds_every_figure(smoke, tiny_checkpoint):
    _, report, _ = smoke
    from chatbot_llm.bench.run import default_threads

    assert report["settings"] == {"batch_sizes": [1, 3], "prompt_tokens": 20, "new_tokens": 2, "repeats": 1,
                                  "rounds": 1, "threads": default_threads(), "device": "cpu", "cli_path": True}
    assert report["machine"]["versions"]["onnxruntime"].startswith("onnxruntime ")  # the module imported
    assert report["model"] == str(tiny_checkpoint) and report["machine"]["cores"] >= 1
    assert list(report["results"]) == BACKENDS
    for name, figures in report["results"].items():
        for key in ("load_seconds", "first_token_ms", "decode_ms_median", "decode_ms_p95", "tokens_per_second",
                    "peak_rss_mb", "disk_mb", "speedup_vs_torch", "rss_vs_torch"):
            assert figures[key] > 0, (name, key)
        assert set(figures["throughput"]) == {"1", "3"}
        assert figures["greedy_agreement"]["rows"] == 3
        # the batch path: TextGenerator with the model's own (sampling) defaults, one prompt at a time
        path = figures["cli_path"]
        assert path["ms_per_token"] > 0 and path["prompts"] == 3 and path["settings"]["do_sample"] is True
        # each backend ran in a process of its own: only the torch worker imported torch
        assert figures["torch_imported"] == (name == "torch")
    assert report["results"]["torch"]["greedy_agreement"]["rows_identical"] == 3
    assert report["results"]["onnx-fp32"]["greedy_agreement"]["rows_identical"] == 3


def test_bench_plot_is_a_png(smoke):
    _, _, plot = smoke
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000


@pytest.mark.parametrize(
    "args, message",
    [
        (["--backends", "torch,onnx-int3"], "unknown backend 'onnx-int3'"),
        (["--backends", ","], "--backends is empty"),
        (["--batch-sizes", "1,x"], "whole numbers"),
        (["--batch-sizes", "0"], "at least 1"),
        (["--shape", "tiny", "--model", "dream"], "not both"),
        (["--json", "/nonexistent-dir/b.json"], "does not exist"),
        (["--prompt-tokens", "60", "--new-tokens", "10"], "exceed the model's context"),
    ],
)
def test_bench_refuses_bad_options_in_one_line(tiny_checkpoint, args, message):
    extra = [] if "--shape" in args else ["--model", str(tiny_checkpoint)]
    result = run_cli("bench", *extra, *args)
    assert result.returncode == 2, result.stderr
    lines = error_lines(result)
    assert len(lines) == 1 and message in lines[0], lines


def test_ct2_backends_say_how_to_install_when_missing(tiny_checkpoint, tmp_path):
    """make setup installs ctranslate2 (the bench extra); a module on the path ahead of it that fails
    to import stands for an environment without it."""
    (tmp_path / "ctranslate2.py").write_text("raise ImportError('No module named ctranslate2')\n")
    result = subprocess.run([sys.executable, "-m", "chatbot_llm", "bench", "--model", str(tiny_checkpoint),
                             "--backends", "ct2-int8"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])})
    assert result.returncode == 2 and "pip install ctranslate2" in error_lines(result)[0], result.stderr


def test_rounds_run_every_backend_again_and_report_the_median_of_each_figure(tiny_checkpoint, exports, tmp_path):
    out = tmp_path / "bench.json"
    result = run_cli("bench", "--model", str(tiny_checkpoint), "--backends", "onnx-opt,onnx-int8", "--new-tokens", "3",
                     "--repeats", "1", "--rounds", "3", "--batch-sizes", "1,2", "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "then of 3 rounds" in result.stdout
    report = json.loads(out.read_text())
    assert report["settings"]["rounds"] == 3
    for figures in report["results"].values():
        rounds = figures["rounds"]
        assert len(rounds) == 3
        assert figures["decode_ms_median"] == sorted(r["decode_ms_median"] for r in rounds)[1]
        for size in ("1", "2"):
            assert figures["throughput"][size] == sorted(r["throughput"][size] for r in rounds)[1]


def test_merged_rounds_keep_the_highest_memory_and_the_first_outputs():
    from chatbot_llm.bench.run import ROUND_MEDIANS, merge_rounds

    def worker(ms: float, rss: float, tokens: list[int]) -> dict:
        return {**{key: ms for key in ROUND_MEDIANS}, "throughput": {"1": 1000 / ms}, "peak_rss_mb": rss,
                "peak_rss_all_mb": rss + 1, "outputs": {"1": [tokens]}, "cli_path": {"ms_per_token": ms, "prompts": 1}}

    merged = merge_rounds([worker(4.0, 200, [1, 2]), worker(9.0, 180, [1, 2]), worker(5.0, 210, [1, 2])])
    assert merged["decode_ms_median"] == 5.0 and merged["first_token_ms"] == 5.0
    assert merged["throughput"]["1"] == 200.0 and merged["cli_path"]["ms_per_token"] == 5.0
    assert merged["peak_rss_mb"] == 210 and merged["peak_rss_all_mb"] == 211
    assert merged["outputs"] == {"1": [[1, 2]]} and len(merged["rounds"]) == 3
    assert merge_rounds([worker(4.0, 200, [3])]) == worker(4.0, 200, [3])  # one round: as the worker said


def test_greedy_agreement_counts_rows_and_the_shared_prefix():
    from chatbot_llm.bench.run import agreement

    result = agreement([[1, 2, 3], [], [1, 2], [5, 6]], [[1, 2, 3], [], [1, 2, 9, 9], [7]])
    assert result["rows_identical"] == 2  # two empty rows (EOS first on both sides) are identical
    assert result["mean_prefix_share"] == (1 + 1 + 0.5 + 0) / 4


def test_fp16_nograph_runs_the_fp16_export_with_cuda_graphs_off(tiny_checkpoint, tmp_path):
    """onnx-fp16-nograph: the same export and buffers as onnx-fp16, its worker with CUDA graphs off
    (on the CPU there are none: the two give the same tokens)."""
    from chatbot_llm.bench.run import DEFAULT_BACKENDS, onnx_variant, parse_backends

    assert parse_backends("onnx-fp16,onnx-fp16-nograph") == ["onnx-fp16", "onnx-fp16-nograph"]
    assert onnx_variant("onnx-fp16-nograph") == onnx_variant("onnx-fp16") == "fp16"
    assert onnx_variant("onnx-int8") == "int8" and "onnx-fp16-nograph" in DEFAULT_BACKENDS["cuda"]
    out = tmp_path / "bench.json"
    result = run_cli("bench", "--model", str(tiny_checkpoint), "--backends", "onnx-fp16,onnx-fp16-nograph",
                     "--new-tokens", "3", "--repeats", "1", "--batch-sizes", "1,3", "--json", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert list(report["results"]) == ["onnx-fp16", "onnx-fp16-nograph"]
    graph, nograph = report["results"]["onnx-fp16"], report["results"]["onnx-fp16-nograph"]
    assert graph["disk_mb"] == nograph["disk_mb"] > 0 and nograph["decode_ms_median"] > 0
