"""The command line as a user meets it: chat over stdin, batch in every format, the seed's shim."""

from __future__ import annotations

import csv
import json
import re

import pytest

from conftest import REPO, error_lines, run_cli

GREEDY = ("--greedy", "--max-new-tokens", "6")
SEED_RECORD = re.compile(r" Prompt: (.*)\n Response: (.*)\n={60}\n")


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("I was walking through my old school\n\nSubject: meeting tomorrow\n  The end  \n", encoding="utf-8")
    return path


def test_chat_over_stdin(exports, tiny_checkpoint, tmp_path):
    log = tmp_path / "chat.txt"
    script = "hello there\n/set temperature 0.5\n/params\n/set top_p 2\n\nI was walking\nquit\n"
    result = run_cli("chat", "--model", str(tiny_checkpoint), "--max-new-tokens", "5", "--seed", "1",
                     "--output-file", str(log), stdin=script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("You: ") == 7 and result.stdout.count("Bot: ") == 2
    assert "temperature = 0.5" in result.stdout
    assert re.search(r"temperature\s+0\.5", result.stdout)  # /params shows the change
    assert "--top-p must be in (0, 1]" in result.stdout  # a bad /set is refused, the chat goes on
    records = SEED_RECORD.findall(log.read_text())
    assert [p for p, _ in records] == ["hello there", "I was walking"]
    assert "Traceback" not in result.stderr


def test_chat_ends_cleanly_at_end_of_input_and_is_reproducible_with_a_seed(exports, tiny_checkpoint):
    runs = [run_cli("chat", "--model", str(tiny_checkpoint), "--max-new-tokens", "8", "--seed", "7",
                    stdin="Once upon a time\n") for _ in range(2)]
    assert all(r.returncode == 0 for r in runs)
    replies = [r.stdout.split("Bot: ", 1)[1].split("\n")[0] for r in runs]
    assert replies[0] == replies[1] and replies[0].strip()


def test_batch_text_format_is_the_seeds(exports, tiny_checkpoint, prompt_file, tmp_path):
    out = tmp_path / "out.txt"
    result = run_cli("batch", str(prompt_file), "--model", str(tiny_checkpoint), "-o", str(out), *GREEDY)
    assert result.returncode == 0, result.stderr
    records = SEED_RECORD.findall(out.read_text(encoding="utf-8"))
    assert [p for p, _ in records] == ["I was walking through my old school", "Subject: meeting tomorrow", "The end"]
    assert all(r.strip() for _, r in records)


def test_batch_jsonl_rows_and_torch_onnx_agree(exports, tiny_checkpoint, prompt_file, tmp_path):
    rows = {}
    for backend in ("onnx", "torch"):
        out = tmp_path / f"{backend}.jsonl"
        result = run_cli("batch", str(prompt_file), "--model", str(tiny_checkpoint), "--backend", backend,
                         "--format", "jsonl", "-o", str(out), "--batch-size", "2", *GREEDY)
        assert result.returncode == 0, result.stderr
        rows[backend] = [json.loads(line) for line in out.read_text().splitlines()]
    onnx = rows["onnx"]
    assert [r["index"] for r in onnx] == [1, 3, 4]  # 1-based line numbers; the blank line 2 is skipped
    for key in ("prompt", "response", "model", "backend", "variant", "params", "new_tokens", "seconds"):
        assert all(key in r for r in onnx)
    assert onnx[0]["params"]["do_sample"] is False and onnx[0]["params"]["max_new_tokens"] == 6
    assert all(r["new_tokens"] == 6 and r["variant"] == "opt" for r in onnx)
    assert [r["response"] for r in onnx] == [r["response"] for r in rows["torch"]]


def test_batch_csv_to_stdout(exports, tiny_checkpoint, prompt_file):
    result = run_cli("batch", str(prompt_file), "--model", str(tiny_checkpoint), "--format", "csv", *GREEDY)
    assert result.returncode == 0, result.stderr
    table = list(csv.DictReader(result.stdout.splitlines()))
    assert [r["prompt"] for r in table] == ["I was walking through my old school", "Subject: meeting tomorrow", "The end"]
    assert json.loads(table[0]["params"])["max_new_tokens"] == 6


def test_batch_never_truncates_an_existing_output(exports, tiny_checkpoint, prompt_file, tmp_path):
    out = tmp_path / "out.csv"
    args = ("batch", str(prompt_file), "--model", str(tiny_checkpoint), "--format", "csv", "-o", str(out), *GREEDY)
    assert run_cli(*args).returncode == 0
    before = out.read_text()
    refused = run_cli(*args)
    assert refused.returncode == 2 and "--append" in refused.stderr and out.read_text() == before
    assert run_cli(*args, "--append").returncode == 0
    table = list(csv.DictReader(out.read_text().splitlines()))
    assert len(table) == 6 and out.read_text().startswith(before)  # one header, old rows kept


def test_bot_wcorpus_with_its_flags(exports, tiny_checkpoint, prompt_file, tmp_path):
    out = tmp_path / "seed_out.txt"
    out.write_text("kept from an earlier run\n", encoding="utf-8")
    args = ("bot_wcorpus.py", "--model_path", str(tiny_checkpoint), "--prompt_file", str(prompt_file),
            "--output_file", str(out))
    result = run_cli(*args, module=False)
    assert result.returncode == 0, result.stderr
    assert f" Loaded model from {tiny_checkpoint}" in result.stdout
    assert " Prompt 3: Subject: meeting tomorrow" in result.stdout and " Response 4: " in result.stdout
    text = out.read_text(encoding="utf-8")
    assert text.startswith("kept from an earlier run\n") and len(SEED_RECORD.findall(text)) == 3


def test_bot_wcorpus_manual_mode(exports, tiny_checkpoint):
    result = run_cli("bot_wcorpus.py", "--model_path", str(tiny_checkpoint), module=False,
                     stdin="I had a dream\nexit\n")
    assert result.returncode == 0, result.stderr
    assert "Manual mode" in result.stdout and result.stdout.count("DreamBot: ") == 1


def test_export_and_models_commands(exports, tiny_checkpoint):
    again = run_cli("export", str(tiny_checkpoint), "--variant", "all")
    assert again.returncode == 0 and again.stdout.count("up to date") >= 4  # fp16 too once test_device made it
    listing = run_cli("models", "--json")
    rows = json.loads(listing.stdout)
    assert {r["name"] for r in rows} >= {"dream", "email"}
    mine = [r for r in rows if r["folder"] == str(tiny_checkpoint)]
    assert mine and mine[0]["opt"] == "ok"


def test_a_long_prompt_with_truncate_warns_and_still_answers(exports, tiny_checkpoint, tmp_path):
    path = tmp_path / "long.txt"
    path.write_text(" ".join(["dream"] * 500) + "\n")
    result = run_cli("batch", str(path), "--model", str(tiny_checkpoint), "--truncate", *GREEDY)
    assert result.returncode == 0 and "cut from the left" in result.stderr


def _non_utf8(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    return path


def _empty(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("\n  \n\n")
    return path


@pytest.mark.parametrize(
    "args, code, message",
    [
        (("--model", "/no/such/model"), 2, "model folder not found"),
        (("--model", str(REPO / "chatbot_llm")), 2, "no config.json"),
        (("--temperature", "0"), 2, "--temperature must be > 0 when sampling"),
        (("--top-p", "0"), 2, "--top-p must be in (0, 1]"),
        (("--top-p", "1.5"), 2, "--top-p must be in (0, 1]"),
        (("--top-k", "-1"), 2, "--top-k must be >= 0"),
        (("--max-new-tokens", "0"), 2, "--max-new-tokens must be >= 1"),
        (("--temperature", "hot"), 2, "'hot' is not a valid float"),
        (("--variant", "int3"), 2, "'int3' is not one of"),
    ],
)
def test_bad_options_get_one_line(exports, tiny_checkpoint, prompt_file, tmp_path, args, code, message):
    model = () if "--model" in args else ("--model", str(tiny_checkpoint))
    out = tmp_path / "never.jsonl"
    result = run_cli("batch", str(prompt_file), *model, *args, "-o", str(out))
    assert result.returncode == code
    assert len(error_lines(result)) == 1 and message in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()  # a failed run leaves no empty output file behind


@pytest.mark.parametrize(
    "make_file, message",
    [
        (_empty, "has no prompts"),
        (_non_utf8, "is not UTF-8"),
        (lambda tmp: tmp / "missing.txt", "prompt file not found"),
        (lambda tmp: tmp, "is a directory"),
    ],
)
def test_bad_prompt_files_get_one_line(exports, tiny_checkpoint, tmp_path, make_file, message):
    result = run_cli("batch", str(make_file(tmp_path)), "--model", str(tiny_checkpoint))
    assert result.returncode == 2 and len(error_lines(result)) == 1 and message in result.stderr


@pytest.mark.parametrize(
    "target, message",
    [
        (lambda tmp: tmp / "no" / "such" / "dir" / "out.txt", "cannot write --output-file"),
        (lambda tmp: tmp, "is a directory"),
    ],
)
def test_unwritable_output_gets_one_line_and_nothing_runs(exports, tiny_checkpoint, prompt_file, tmp_path,
                                                          target, message):
    result = run_cli("batch", str(prompt_file), "--model", str(tiny_checkpoint), "-o", str(target(tmp_path)))
    assert result.returncode == 2 and len(error_lines(result)) == 1 and message in result.stderr


def test_a_full_disk_keeps_what_was_written(exports, tiny_checkpoint, prompt_file):
    result = run_cli("batch", str(prompt_file), "--model", str(tiny_checkpoint), "-o", "/dev/full", "--append",
                     *GREEDY)
    assert result.returncode == 1 and "No space left on device" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "text, message",
    [("temprature = 1\n", "unknown key 'temprature'"), ("top_p = [\n", "not valid TOML")],
)
def test_bad_config_files(exports, tiny_checkpoint, prompt_file, tmp_path, text, message):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    result = run_cli("batch", str(prompt_file), "--model", str(tiny_checkpoint), "--config", str(config))
    assert result.returncode == 2 and len(error_lines(result)) == 1 and message in result.stderr


def test_config_file_sits_between_model_defaults_and_the_command_line(exports, tiny_checkpoint, prompt_file,
                                                                      tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("do_sample = false\nmax_new_tokens = 3\ntop_k = 7\n")
    result = run_cli("batch", str(prompt_file), "--model", str(tiny_checkpoint), "--config", str(config),
                     "--top-k", "9", "--format", "jsonl")
    params = json.loads(result.stdout.splitlines()[0])["params"]
    assert (params["do_sample"], params["max_new_tokens"], params["top_k"], params["temperature"]) == (False, 3, 9, 1.7)


def test_ctrl_c_at_the_chat_prompt_ends_cleanly(exports, tiny_checkpoint):
    import os
    import signal
    import subprocess
    import sys
    import time

    process = subprocess.Popen(
        [sys.executable, "-m", "chatbot_llm", "chat", "--model", str(tiny_checkpoint)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # not ignored, as in a background job
    )
    deadline = time.monotonic() + 120
    seen = ""
    while "You: " not in seen and time.monotonic() < deadline:  # wait for the prompt
        seen += os.read(process.stdout.fileno(), 100).decode()
    # input() writes the prompt before it blocks in read(): a signal in between is only seen after the
    # next line, so give it the moment a person would
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    process.wait(timeout=60)  # with stdin still open: only the interrupt can end the chat here
    _, stderr = process.communicate()
    assert process.returncode == 0 and "Traceback" not in stderr


def test_chat_on_the_torch_backend_streams_the_same_greedy_reply(exports, tiny_checkpoint):
    replies = []
    for backend in ("onnx", "torch"):
        result = run_cli("chat", "--model", str(tiny_checkpoint), "--backend", backend, *GREEDY,
                         stdin="I was walking through my old school\n")
        assert result.returncode == 0, result.stderr
        replies.append(result.stdout.split("Bot: ", 1)[1].split("\n")[0])
    assert replies[0] == replies[1] and replies[0].strip()


def test_version_and_help():
    from chatbot_llm import __version__

    assert run_cli("--version").stdout.strip().endswith(__version__)
    helped = run_cli("batch", "--help")
    for option in ("--temperature", "--top-p", "--top-k", "--repetition-penalty", "--max-new-tokens",
                   "--max-length", "--no-repeat-ngram-size", "--do-sample / --greedy", "--seed", "--config"):
        assert option in helped.stdout


def test_a_too_long_chat_line_is_an_error_and_the_chat_goes_on(exports, tiny_checkpoint):
    result = run_cli("chat", "--model", str(tiny_checkpoint), *GREEDY, stdin="dream " * 200 + "\nhello\n")
    assert result.returncode == 0 and "Traceback" not in result.stderr
    assert "is longer than the model's context of 64 tokens" in result.stderr
    assert result.stdout.count("You: ") == 3  # the long line, hello, then end of input
