"""From a sweep's row to a setting: sweep-preset's TOML, --apply, and the report's own commands give
exactly that row's configuration, checked by regenerating the row's outputs with `batch`."""

from __future__ import annotations

import json
import re
import shlex
import sys

import pytest

from chatbot_llm.config import user_presets_dir
from tests.conftest import make_checkpoint, run_cli

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PROMPTS = "I was walking through my old school\n\nSubject: meeting tomorrow\nThe dog ran\n"


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("preset") / "prompts.txt"
    path.write_text(PROMPTS)
    return path


@pytest.fixture(scope="module")
def swept(tiny_checkpoint, exports, prompts):
    out = prompts.parent / "run"
    result = run_cli("sweep", "--models", str(tiny_checkpoint), "--prompts", str(prompts), "--grid",
                     "temperature=0.8,1.3 top_k=0,30", "--samples", "2", "--max-new-tokens", "8", "--seed", "5",
                     "--out", str(out), "--rank-by", "distinct_2")
    assert result.returncode == 0, result.stderr
    return out


def manifest(out) -> dict:
    return json.loads((out / "sweep.json").read_text())


def cell_of_rank(out, rank: int) -> dict:
    import csv

    key = list(csv.DictReader((out / "summary.csv").open()))[rank - 1]["cell"]
    return next(c for c in manifest(out)["cells"] if c["key"] == key)


def first_samples(out, key: str) -> dict[int, str]:
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return {r["prompt_line"]: r["response"] for r in rows if r["cell"] == key and r["sample"] == 0}


def batch_responses(*args: str) -> tuple[dict[int, str], list[dict]]:
    result = run_cli("batch", *args, "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    return {r["index"]: r["response"] for r in records}, records


def test_a_preset_from_a_rank_gives_that_rows_outputs_again(swept, prompts, tiny_checkpoint, tmp_path):
    cell = cell_of_rank(swept, 3)
    path = tmp_path / "third.toml"
    result = run_cli("sweep-preset", str(swept), "--rank", "3", "-o", str(path))
    assert result.returncode == 0, result.stderr
    written = tomllib.loads(path.read_text())
    assert written == {k: v for k, v in cell["config"].items() if k != "seed" and v is not None}
    responses, records = batch_responses(str(prompts), "--model", str(tiny_checkpoint), "--config", str(path),
                                         "--seed", "5")
    assert responses == first_samples(swept, cell["key"]) and len(responses) == 3
    assert all(r["params"] == cell["config"] for r in records)  # the full configuration, seed included
    assert run_cli("sweep-preset", str(swept), "--rank", "3", "-o", str(path)).returncode == 2  # never replaced silently
    assert run_cli("sweep-preset", str(swept), "--rank", "2", "-o", str(path), "--overwrite").returncode == 0
    assert tomllib.loads(path.read_text())["temperature"] == cell_of_rank(swept, 2)["config"]["temperature"]


def test_a_named_preset_is_found_by_config_on_every_command(swept, prompts, tiny_checkpoint):
    cell = cell_of_rank(swept, 2)
    path = user_presets_dir() / "from-sweep-test.toml"
    try:
        result = run_cli("sweep-preset", str(swept), "--model", str(tiny_checkpoint), "--rank", "2",
                         "--name", "from-sweep-test")
        assert result.returncode == 0, result.stderr
        assert path.is_file() and "--config from-sweep-test" in result.stdout
        responses, _ = batch_responses(str(prompts), "--model", str(tiny_checkpoint), "--config", "from-sweep-test",
                                       "--seed", "5")
        assert responses == first_samples(swept, cell["key"])
    finally:
        path.unlink(missing_ok=True)


def test_the_reports_batch_command_gives_the_rows_outputs(swept):
    html = (swept / "report.html").read_text(encoding="utf-8")
    data = json.loads(re.search(r'<script type="application/json" id="sweep-data">(.*?)</script>', html, re.S).group(1))
    row = data["models"][0]["rows"][3]
    assert row["rank"] == 4
    command = shlex.split(row["batch"])
    assert command[:2] == ["chatbot-llm", "batch"]
    responses, _ = batch_responses(*command[2:])
    assert responses == first_samples(swept, row["cell"])
    assert tomllib.loads(row["toml"]) == {k: v for k, v in cell_of_rank(swept, 4)["config"].items()
                                          if k != "seed" and v is not None}


def test_apply_makes_a_row_the_checkpoints_default(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "mine", seed=3)
    config = json.loads((checkpoint / "generation_config.json").read_text())
    config.update({"note": "kept", "top_k": 7})  # a key of its own, and a default the sweep ran with
    (checkpoint / "generation_config.json").write_text(json.dumps(config))
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello there\nSubject: lunch\n")
    out = tmp_path / "run"
    result = run_cli("sweep", "--models", str(checkpoint), "--prompts", str(prompts), "--grid",
                     "temperature=0.6,1.4 top_p=0.8", "--max-new-tokens", "6", "--out", str(out))
    assert result.returncode == 0, result.stderr
    cell = cell_of_rank(out, 2)
    result = run_cli("sweep-preset", str(out), "--rank", "2", "--apply")
    assert result.returncode == 0, result.stderr
    applied = json.loads((checkpoint / "generation_config.json").read_text())
    assert applied["note"] == "kept" and applied["eos_token_id"] == config["eos_token_id"]
    assert {k: applied.get(k) for k in cell["config"] if k != "seed"} == {k: v for k, v in cell["config"].items() if k != "seed"}
    assert applied["top_k"] == 7 and applied["max_new_tokens"] == 6
    assert [p.name for p in checkpoint.iterdir() if "partial" in p.name] == []
    responses, records = batch_responses(str(prompts), "--model", str(checkpoint), "--seed", "0")
    assert responses == first_samples(out, cell["key"])
    assert all(r["params"] == cell["config"] for r in records)


def test_sweep_report_redraws_the_same_files_from_results(swept, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(swept, copy)
    (copy / "report.html").unlink()
    (copy / "summary.csv").unlink()
    result = run_cli("sweep-report", str(copy))
    assert result.returncode == 0, result.stderr
    assert (copy / "summary.csv").read_text() == (swept / "summary.csv").read_text()
    redrawn = (copy / "report.html").read_text().replace(str(copy), str(swept))  # its own folder in the commands
    assert redrawn == (swept / "report.html").read_text()
