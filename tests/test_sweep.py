"""`chatbot-llm sweep`: the grid, the rows and metrics, resume and presets (the report: test_sweep_report.py)."""

from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest

from chatbot_llm.sweep.metrics import distinct, output_metrics, repetition_rate
from tests.conftest import error_lines, run_cli

PROMPTS = "I was walking through my old school\nSubject: meeting tomorrow\n\nThe dog ran\n"
GRID = "temperature=0.7,1.5 top_k=0,20 repetition_penalty=1.0"


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("sweep") / "prompts.txt"
    path.write_text(PROMPTS)
    return path


@pytest.fixture(scope="module")
def swept(tiny_checkpoint, exports, prompts, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep-out") / "run"
    result = run_cli("sweep", "--models", str(tiny_checkpoint), "--prompts", str(prompts), "--grid", GRID,
                     "--samples", "2", "--max-new-tokens", "6", "--out", str(out), "--rank-by", "perplexity")
    assert result.returncode == 0, result.stderr
    return out


def rows_of(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_metrics_on_hand_checked_examples():
    assert distinct([1, 2, 1, 2], 1) == 0.5
    assert distinct([1, 2, 1, 2], 2) == pytest.approx(2 / 3)  # (1,2) (2,1) (1,2)
    assert distinct([7], 2) == 0.0
    assert repetition_rate([1, 2, 3, 4, 1, 2, 3, 4]) == pytest.approx(0.2)  # 5 four-grams, 1 repeats
    assert repetition_rate([1, 2, 3]) == 0.0
    m = output_metrics([5, 6, 5], [math.log(0.5), math.log(0.25), math.log(0.5)], 1.5)
    assert m["tokens"] == 3 and m["distinct_1"] == pytest.approx(2 / 3) and m["distinct_2"] == 1.0
    assert m["mean_logprob"] == pytest.approx(math.log(0.5) * 2 / 3 + math.log(0.25) / 3)
    assert m["perplexity"] == pytest.approx(2 ** (4 / 3)) and m["seconds"] == 1.5


def test_logprobs_match_the_pytorch_model(tiny_checkpoint, exports):
    import torch
    from transformers import GPT2LMHeadModel

    from chatbot_llm.runtime.onnx_model import OnnxCausalLM

    ids = [40, 373, 6155, 832, 616, 1468, 1524, 13, 50256, 464]
    scored = OnnxCausalLM(exports["fp32"] / "model.onnx").token_logprobs(ids, 3)
    with torch.no_grad():
        logits = GPT2LMHeadModel.from_pretrained(tiny_checkpoint).eval()(torch.tensor([ids])).logits[0]
    expected = torch.log_softmax(logits.double(), -1)[torch.arange(2, len(ids) - 1), torch.tensor(ids[3:])]
    np.testing.assert_allclose(scored, expected.numpy(), atol=1e-4)


def test_sweep_writes_one_row_per_model_combination_prompt_and_sample(swept):
    rows = rows_of(swept)
    assert len(rows) == 1 * 4 * 3 * 2  # models x combinations x prompts (blank line skipped) x samples
    assert {r["prompt_line"] for r in rows} == {1, 2, 4}
    assert {(r["params"]["temperature"], r["params"]["top_k"]) for r in rows} == {(0.7, 0), (0.7, 20), (1.5, 0), (1.5, 20)}
    for row in rows:
        assert row["tokens"] <= 6 and 0 <= row["distinct_1"] <= 1 and 0 <= row["repetition_4gram"] <= 1
        assert row["perplexity"] == pytest.approx(math.exp(-row["mean_logprob"]))
        assert row["mean_logprob"] < 0 and row["seconds"] > 0


def test_summary_averages_each_combination_ranked(swept):
    summary = list(csv.DictReader((swept / "summary.csv").open()))
    assert len(summary) == 4
    perplexities = [float(s["perplexity"]) for s in summary]
    assert perplexities == sorted(perplexities)  # --rank-by perplexity: lowest first
    rows = rows_of(swept)
    for entry in summary:
        mine = [r for r in rows if r["cell"] == entry["cell"]]
        assert int(entry["outputs"]) == len(mine) == 6
        assert float(entry["distinct_1"]) == pytest.approx(np.mean([r["distinct_1"] for r in mine]), abs=1e-5)


def test_seeded_outputs_do_not_depend_on_batch_size(tiny_checkpoint, prompts, swept, tmp_path):
    out = tmp_path / "b1"
    result = run_cli("sweep", "--models", str(tiny_checkpoint), "--prompts", str(prompts), "--grid", GRID,
                     "--samples", "2", "--max-new-tokens", "6", "--out", str(out), "--batch-size", "1")
    assert result.returncode == 0, result.stderr
    key = lambda r: (r["cell"], r["prompt_line"], r["sample"])  # noqa: E731
    assert {key(r): r["response"] for r in rows_of(out)} == {key(r): r["response"] for r in rows_of(swept)}


def test_rerun_skips_finished_cells_and_completes_a_killed_one(tiny_checkpoint, prompts, swept, tmp_path):
    out = tmp_path / "resume"
    shutil.copytree(swept, out)
    rows = rows_of(out)
    last_cell = rows[-1]["cell"]
    kept = [r for r in rows if r["cell"] != last_cell]
    # a sweep killed while writing: the last cell is missing and a half line was left behind
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept) + '{"model": "cut sh')
    args = ["sweep", "--models", str(tiny_checkpoint), "--prompts", str(prompts), "--grid", GRID,
            "--samples", "2", "--max-new-tokens", "6", "--out", str(out)]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert "3 of 4 cells already" in result.stderr
    after = rows_of(out)
    assert len(after) == len(rows) and after[: len(kept)] == kept
    assert sorted((r["cell"], r["prompt_line"], r["sample"]) for r in after) == \
        sorted((r["cell"], r["prompt_line"], r["sample"]) for r in rows)
    again = run_cli(*args)
    assert again.returncode == 0 and "4 of 4 cells already" in again.stderr and len(rows_of(out)) == len(rows)


@pytest.mark.parametrize(
    "grid, message",
    [
        ("temprature=0.7,1.0", "unknown parameter 'temprature'"),
        ("top_p=0.9,2", "top-p"),
        ("top_k=", "top_k has an empty value list"),
        ("top_k=1,,2", "empty value"),
        ("top_k=1 top-k=2", "given twice"),
        ("temperature", "is not NAME=V1,V2"),
        ("temperature=hot", "temperature must be a finite number"),
        ("temperature=0,1", "the combination temperature=0.0 is invalid"),
        ("", "--grid is empty"),
    ],
)
def test_bad_grid_is_refused_before_anything_runs(tiny_checkpoint, prompts, tmp_path, grid, message):
    out = tmp_path / "never"
    result = run_cli("sweep", "--models", str(tiny_checkpoint), "--prompts", str(prompts), "--grid", grid,
                     "--out", str(out))
    assert result.returncode == 2, result.stderr
    lines = error_lines(result)
    assert len(lines) == 1 and message in lines[0], lines
    assert not out.exists()


def test_presets_are_usable_by_name_on_every_command(tiny_checkpoint, exports, tmp_path):
    prompt_file = tmp_path / "p.txt"
    prompt_file.write_text("hello\n")
    result = run_cli("batch", str(prompt_file), "--model", str(tiny_checkpoint), "--config", "seed",
                     "--max-new-tokens", "3", "--seed", "1", "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["params"]["temperature"] == 1.7
    missing = run_cli("batch", str(prompt_file), "--model", str(tiny_checkpoint), "--config", "nosuchpreset")
    assert missing.returncode == 2 and "presets: " in error_lines(missing)[0] and "seed" in error_lines(missing)[0]


def test_stop_ends_every_output_before_the_stop_string(tiny_checkpoint, prompts, swept, tmp_path):
    """--stop on sweep as on chat and batch: each output is cut before the string and ends there."""
    plain = rows_of(swept)
    response = next(r["response"] for r in plain if len(r["response"].split(" ")) > 2)
    stop = response.split(" ")[1]  # a word one of the outputs has
    out = tmp_path / "stopped"
    result = run_cli("sweep", "--models", str(tiny_checkpoint), "--prompts", str(prompts), "--grid", GRID,
                     "--samples", "2", "--max-new-tokens", "6", "--out", str(out), "--stop", stop)
    assert result.returncode == 0, result.stderr
    stopped = rows_of(out)
    assert len(stopped) == len(plain) and all(stop not in r["response"] for r in stopped)
    by_place = {(r["params"]["temperature"], r["params"]["top_k"], r["prompt_line"], r["sample"]): r for r in plain}
    cut = [r for r in stopped if r["finish_reason"] == "stop"]
    assert cut  # the output that had the word, at least
    for row in cut:
        before = by_place[(row["params"]["temperature"], row["params"]["top_k"], row["prompt_line"], row["sample"])]
        assert before["response"].startswith(row["response"]) and stop in before["response"]
        assert row["tokens"] <= before["tokens"]  # it ended where the stop string appeared
    assert json.loads((out / "sweep.json").read_text())["stops"] == [stop]
