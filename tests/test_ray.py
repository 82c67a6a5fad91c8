"""batch --ray and sweep --ray on a real local Ray cluster: the same records as a local run, in the
same order, with nothing lost or written twice when an actor or the whole run is killed.

One cluster (ray.init(num_cpus=2) in this process) serves every test; the CLI runs in subprocesses
that join it by address, as a user's command joins a cluster started with `ray start --head`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, error_lines, run_cli

ray = pytest.importorskip("ray", reason="the Ray tests need the [ray] extra (make setup installs it)")

# lengths vary, so a seeded run's equal-length grouping matters; a blank line shifts the line numbers
PROMPTS = [f"prompt {i} about {'dreams' if i % 2 else 'emails'}" + " and more" * (i % 4) for i in range(1, 21)]


@pytest.fixture(scope="module")
def ray_address(tmp_path_factory):
    os.environ["RAY_AUTH_MODE"] = "disabled"  # a test cluster on 127.0.0.1; the subprocesses join without a token
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    address = ray.get_runtime_context().gcs_address
    assert address.startswith("127.0.0.1:"), address  # nothing listens beyond the loopback address
    yield address
    ray.shutdown()
    os.environ.pop("RAY_AUTH_MODE", None)


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ray") / "prompts.txt"
    lines = PROMPTS[:7] + [""] + PROMPTS[7:]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def jsonl_prompt_file(tmp_path_factory):
    """The same prompts as JSON objects with an id, the other prompt-file format batch reads."""
    path = tmp_path_factory.mktemp("ray") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "id": f"p{i}"}) + "\n" for i, p in enumerate(PROMPTS)))
    return path


def _batch(prompt_file, model, out, *extra, ray_at=None):
    where = ["--ray", ray_at, "--workers", "2"] if ray_at else []
    result = run_cli("batch", str(prompt_file), "--model", str(model), "-o", str(out), "--max-new-tokens", "6",
                     "--batch-size", "3", *extra, *where)
    assert result.returncode == 0, result.stderr
    return result


def _records(path, fmt):
    """The records without `seconds`, the one field that may differ between runs."""
    import csv
    import io

    text = path.read_text(encoding="utf-8")
    if fmt == "jsonl":
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in text.splitlines()]
    if fmt == "csv":
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(io.StringIO(text))]
    return text


@pytest.mark.parametrize("fmt,sampling,source", [("text", "greedy", "txt"), ("jsonl", "greedy+template+stop", "txt"),
                                                 ("csv", "greedy", "jsonl"), ("jsonl", "seeded", "jsonl"),
                                                 ("text", "seeded", "txt")])
def test_a_ray_run_writes_what_a_local_run_writes(fmt, sampling, source, ray_address, prompt_file, jsonl_prompt_file,
                                                  tiny_checkpoint, exports, tmp_path):
    prompt_file = jsonl_prompt_file if source == "jsonl" else prompt_file
    generation = ["--greedy"] if sampling.startswith("greedy") else ["--seed", "11", "--temperature", "1.3"]
    if sampling.endswith("stop"):  # rendered on the driver, stopped on the workers: still the local run's records
        generation += ["--template", "question", "--stop", "e"]
    local, on_ray = tmp_path / f"local.{fmt}", tmp_path / f"ray.{fmt}"
    _batch(prompt_file, tiny_checkpoint, local, "--format", fmt, *generation)
    result = _batch(prompt_file, tiny_checkpoint, on_ray, "--format", fmt, *generation, ray_at=ray_address)
    assert _records(on_ray, fmt) == _records(local, fmt)
    assert len(_records(local, "jsonl" if fmt == "jsonl" else "text")) > 0
    if sampling.endswith("stop"):
        assert any(row["finish_reason"] == "stop" for row in _records(on_ray, fmt))
        assert [row["prompt"] for row in _records(on_ray, fmt)] == PROMPTS  # as typed, not as rendered
    summary = [line for line in result.stderr.splitlines() if line.startswith("ray: ")]
    assert summary and "2 workers" in summary[0] and "prompts/s" in summary[0], result.stderr


def test_an_actor_killed_mid_run_loses_and_duplicates_nothing(ray_address, prompt_file, tiny_checkpoint, exports,
                                                             tmp_path, monkeypatch):
    local, on_ray, marker = tmp_path / "local.jsonl", tmp_path / "ray.jsonl", tmp_path / "killed"
    _batch(prompt_file, tiny_checkpoint, local, "--format", "jsonl", "--greedy")
    monkeypatch.setenv("CHATBOT_LLM_RAY_FAULT", f"3:{marker}")  # the actor that gets window 3 exits
    _batch(prompt_file, tiny_checkpoint, on_ray, "--format", "jsonl", "--greedy", ray_at=ray_address)
    assert marker.exists(), "no actor was killed: the test proved nothing"
    assert _records(on_ray, "jsonl") == _records(local, "jsonl")
    indexes = [row["index"] for row in _records(on_ray, "jsonl")]
    assert len(indexes) == len(set(indexes)) == len(PROMPTS)


def test_a_killed_ray_run_resumes_to_every_prompt_exactly_once(ray_address, tiny_checkpoint, exports, tmp_path):
    prompts = tmp_path / "many.txt"
    prompts.write_text("\n".join(f"line {i} of a longer file" + " again" * (i % 5) for i in range(240)) + "\n")
    local, on_ray = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    args = ["batch", str(prompts), "--model", str(tiny_checkpoint), "--max-new-tokens", "12", "--batch-size", "1",
            "--format", "jsonl", "--seed", "5"]
    assert run_cli(*args, "-o", str(local)).returncode == 0
    process = subprocess.Popen([sys.executable, "-m", "chatbot_llm", *args, "-o", str(on_ray), "--ray", ray_address],
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and process.poll() is None:
        if on_ray.exists() and on_ray.read_bytes().count(b"\n") >= 10:
            break
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # the driver and anything it started, at once
    process.wait()
    written = on_ray.read_bytes().count(b"\n")
    assert 10 <= written < 240, f"the run was not cut in the middle ({written} records)"
    result = run_cli(*args, "-o", str(on_ray), "--resume", "--ray", ray_address)
    assert result.returncode == 0, result.stderr
    assert "resuming:" in result.stderr
    assert _records(on_ray, "jsonl") == _records(local, "jsonl")


def test_more_workers_than_the_cluster_holds_is_one_line(ray_address, prompt_file, tiny_checkpoint, exports,
                                                        tmp_path):
    result = run_cli("batch", str(prompt_file), "--model", str(tiny_checkpoint), "--greedy", "--ray", ray_address,
                     "--workers", "3")
    assert result.returncode == 2
    assert error_lines(result)[-1].startswith("chatbot-llm: error: --workers 3 x --threads 1 needs 3 CPUs; "
                                              "the Ray cluster has 2"), result.stderr
    assert "Traceback" not in result.stderr


def test_a_sweep_on_ray_writes_what_a_local_sweep_writes(prompt_file, tiny_checkpoint, exports, tmp_path):
    """--ray alone: a Ray instance started for this run, and stopped after it."""
    common = ["sweep", "--models", str(tiny_checkpoint), "--prompts", str(prompt_file), "--grid",
              "temperature=0.7,1.2 top_k=0,20", "--samples", "2", "--max-new-tokens", "5", "--batch-size", "4"]
    assert run_cli(*common, "--out", str(tmp_path / "local")).returncode == 0
    result = run_cli(*common, "--out", str(tmp_path / "ray"), "--ray", "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert "starting a local Ray instance" in result.stderr

    def rows(folder):  # timing metrics aside, every field of every row in the same order
        return [{k: v for k, v in json.loads(line).items() if k not in {"seconds", "tokens_per_second"}}
                for line in (folder / "results.jsonl").read_text().splitlines()]
    assert rows(tmp_path / "ray") == rows(tmp_path / "local")
    assert len(rows(tmp_path / "ray")) == 4 * len(PROMPTS) * 2


def test_a_worker_without_the_export_path_loads_the_shipped_copy_after_checking_it(ray_address, exports, tmp_path,
                                                                                    monkeypatch):
    from chatbot_llm.errors import ChatbotError
    from chatbot_llm.scale.export import ShippedExport, ship_export, worker_folder

    monkeypatch.setenv("CHATBOT_LLM_RAY_CACHE", str(tmp_path / "cache"))
    shipped = ship_export(ray, "tiny", exports["int8"], "int8")
    elsewhere = ShippedExport(shipped.name, "int8", str(tmp_path / "not-on-this-machine"), shipped.manifest_sha256,
                              shipped.files)
    folder = worker_folder(elsewhere)
    assert folder.parent.parent == tmp_path / "cache"
    assert (folder / "model.onnx").read_bytes() == (exports["int8"] / "model.onnx").read_bytes()
    # a copy damaged on the way (or in the cache) is fetched again, and a bad one is refused
    data = folder / "model.onnx"
    data.write_bytes(data.read_bytes()[:-1] + b"\0")
    assert worker_folder(elsewhere) == folder and (folder / "model.onnx").read_bytes()[-1:] != b"\0"
    files = ray.get(shipped.files)
    bad = ray.put({**files, "model.onnx": files["model.onnx"][:-1] + b"\0"})
    damaged = ShippedExport("other", "int8", elsewhere.path, "0" * 64, bad)
    with pytest.raises(ChatbotError, match="does not match the sha256 in its manifest"):
        worker_folder(damaged)


def test_a_local_run_never_imports_ray(prompt_file, tiny_checkpoint, exports):
    code = ("import sys\nfrom chatbot_llm.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            "assert not [m for m in sys.modules if m == 'ray' or m.startswith('ray.')], 'ray was imported'\n")
    result = subprocess.run([sys.executable, "-c", code, "batch", str(prompt_file), "--model", str(tiny_checkpoint),
                             "--greedy", "--max-new-tokens", "2"], capture_output=True, text=True, cwd=REPO,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(" Prompt: ") == len(PROMPTS)
