"""batch --resume: a stopped run, restarted, ends with every prompt exactly once, in every format."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import error_lines, run_cli

PROMPTS = [f"prompt number {i} about {'dreams' if i % 2 else 'emails'}" + " and more" * (i % 4) for i in range(1, 15)]


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("resume") / "prompts.txt"
    lines = []
    for i, prompt in enumerate(PROMPTS):
        lines.append(prompt)
        if i % 5 == 2:
            lines.append("")  # blank lines are skipped, and line numbers still count them
    path.write_text("\n".join(lines) + "\n")
    return path


def _without_timings(data: bytes, fmt: str):
    """The records with their generation seconds left out (the only field that varies between runs)."""
    import csv
    import io
    import json

    text = data.decode("utf-8")
    if fmt == "jsonl":
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in text.splitlines()]
    if fmt == "csv":
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(io.StringIO(text))]
    return text


def _batch(prompt_file, model, out, *extra):
    return run_cli("batch", str(prompt_file), "--model", str(model), "-o", str(out), "--max-new-tokens", "4",
                   "--seed", "7", "--batch-size", "3", *extra)


@pytest.mark.parametrize("fmt", ["text", "jsonl", "csv"])
def test_resume_after_a_cut_record_gives_the_uninterrupted_output(fmt, prompt_file, tiny_checkpoint, exports, tmp_path):
    whole = tmp_path / f"whole.{fmt}"
    assert _batch(prompt_file, tiny_checkpoint, whole, "--format", fmt).returncode == 0
    reference = whole.read_bytes()
    # a run killed in the middle of writing its sixth record
    cut = tmp_path / f"cut.{fmt}"
    marker = {"text": b"=" * 60 + b"\n", "jsonl": b"\n", "csv": b"\n"}[fmt]
    ends = [i + len(marker) for i in range(len(reference)) if reference.startswith(marker, i)]
    cut.write_bytes(reference[: ends[5] + 7])
    result = _batch(prompt_file, tiny_checkpoint, cut, "--format", fmt, "--resume")
    assert result.returncode == 0, result.stderr
    assert "resuming:" in result.stderr
    assert _without_timings(cut.read_bytes(), fmt) == _without_timings(reference, fmt)  # each prompt once, in order
    again = _batch(prompt_file, tiny_checkpoint, cut, "--format", fmt, "--resume")
    assert again.returncode == 0 and _without_timings(cut.read_bytes(), fmt) == _without_timings(reference, fmt)
    assert f"{len(PROMPTS)} of {len(PROMPTS)} prompts are already" in again.stderr


def test_a_killed_run_resumes_to_every_prompt_exactly_once(prompt_file, tiny_checkpoint, exports, tmp_path):
    import json

    out = tmp_path / "killed.jsonl"
    command = [sys.executable, "-m", "chatbot_llm", "batch", str(prompt_file), "--model", str(tiny_checkpoint),
               "-o", str(out), "--format", "jsonl", "--max-new-tokens", "40", "--batch-size", "1", "--seed", "7"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while (not out.exists() or out.read_bytes().count(b"\n") < 2) and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = out.read_bytes().count(b"\n")
    assert 2 <= written < len(PROMPTS)
    resumed = run_cli(*command[3:], "--resume")
    assert resumed.returncode == 0, resumed.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == PROMPTS
    reference = run_cli("batch", str(prompt_file), "--model", str(tiny_checkpoint), "-o", str(tmp_path / "ref.jsonl"),
                        "--format", "jsonl", "--max-new-tokens", "40", "--batch-size", "1", "--seed", "7")
    assert reference.returncode == 0
    expected = [json.loads(line)["response"] for line in (tmp_path / "ref.jsonl").read_text().splitlines()]
    assert [r["response"] for r in rows] == expected  # the same text as a run that was never stopped


def test_resume_refuses_an_output_from_another_prompt_file(prompt_file, tiny_checkpoint, exports, tmp_path):
    out = tmp_path / "other.jsonl"
    other = tmp_path / "other.txt"
    other.write_text("something else entirely\n")
    assert _batch(other, tiny_checkpoint, out, "--format", "jsonl").returncode == 0
    before = out.read_bytes()
    result = _batch(prompt_file, tiny_checkpoint, out, "--format", "jsonl", "--resume")
    assert result.returncode == 2
    lines = error_lines(result)
    assert len(lines) == 1 and "does not match" in lines[0] and "--overwrite" in lines[0]
    assert out.read_bytes() == before


@pytest.mark.parametrize("extra, message", [(["--append"], "contradict"), ([], "needs the --output-file")])
def test_resume_option_errors(prompt_file, tiny_checkpoint, tmp_path, extra, message):
    args = ["batch", str(prompt_file), "--model", str(tiny_checkpoint), "--resume", *extra]
    if extra:
        args += ["-o", str(tmp_path / "o.txt")]
    result = run_cli(*args)
    assert result.returncode == 2 and message in error_lines(result)[0]


def test_ctrl_c_mid_batch_keeps_every_result_and_exits_130(tiny_checkpoint, exports, tmp_path):
    import json

    prompts = [f"prompt number {i} about a dream" for i in range(400)]  # more than a loaded machine finishes
    prompt_file = tmp_path / "many.txt"
    prompt_file.write_text("\n".join(prompts) + "\n")
    out = tmp_path / "stopped.jsonl"
    command = [sys.executable, "-m", "chatbot_llm", "batch", str(prompt_file), "--model", str(tiny_checkpoint),
               "-o", str(out), "--format", "jsonl", "--max-new-tokens", "40", "--batch-size", "1", "--seed", "7"]
    # a shell's background job starts with SIGINT ignored, and Python then never raises KeyboardInterrupt
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while (not out.exists() or out.read_bytes().count(b"\n") < 2) and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in stderr
    assert "continue with --resume" in stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]  # every line whole
    assert 2 <= len(rows) < len(prompts)
    quick = [a for a in command[3:] if a not in ("--max-new-tokens", "40", "--batch-size", "1")]
    resumed = run_cli(*quick, "--max-new-tokens", "2", "--batch-size", "64", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert [json.loads(line)["prompt"] for line in out.read_text().splitlines()] == prompts
