"""Every bad input in docs/errors.md: one line on stderr, the documented exit status, no traceback,
and nothing already written lost. The table in docs/errors.md and CASES below are held together
by test_the_docs_table_and_the_cases_agree.

The commands run in this process through the CLI's real entry point (main), which is what the
chatbot-llm script calls; that makes ~40 cases cheap and lets a case fake what root cannot
(a permission error).
"""

from __future__ import annotations

import ast
import json
import re
import shutil
from pathlib import Path

import onnxruntime as ort
import pytest

from chatbot_llm.cli import main
from tests.conftest import REPO, make_checkpoint

DOCS = REPO / "docs" / "errors.md"


def _file(name: str, content: str | bytes):
    def make(tmp: Path) -> Path:
        path = tmp / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path
    return make


def _folder(files: dict[str, str]):
    def make(tmp: Path) -> Path:
        folder = tmp / "model"
        folder.mkdir()
        for name, text in files.items():
            (folder / name).write_text(text)
        return folder
    return make


def _wrong_weights(tmp: Path) -> Path:
    folder = make_checkpoint(tmp / "wrong", n_embd=16)
    config = json.loads((folder / "config.json").read_text())
    config["n_embd"] = 32  # the weights were saved for 16
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _corrupt_export(tmp: Path, exports) -> Path:
    copy = tmp / "int8"
    shutil.copytree(exports["int8"], copy)
    data = bytearray((copy / "model.onnx.data").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.onnx.data").write_bytes(bytes(data))
    return copy


def _sweep_folder(tmp: Path) -> Path:
    """A finished sweep of model "tiny" over two temperatures, written as sweep would (no generation)."""
    from chatbot_llm.config import GenerationConfig
    from chatbot_llm.sweep.manifest import write_manifest
    from chatbot_llm.sweep.run import Cell, Plan, append_rows

    base = GenerationConfig(max_new_tokens=3, seed=0)
    cells = [Cell("tiny", {"temperature": t}, base.replace(temperature=t), f"cell{i}") for i, t in enumerate((0.7, 1.0))]
    plan = Plan(["tiny"], {"temperature": [0.7, 1.0]}, [(1, "hello")], 1, cells, tmp / "sweep", 0, "p.txt")
    write_manifest(plan, "perplexity", None, "cpu")
    metrics = {"tokens": 3, "distinct_1": 1.0, "distinct_2": 1.0, "repetition_4gram": 0.0, "mean_logprob": -1.0,
               "perplexity": 2.7, "seconds": 0.1}
    append_rows(plan.out / "results.jsonl", [
        {"model": "tiny", "cell": c.key, "params": c.params, "prompt_line": 1, "prompt": "hello", "sample": 0,
         "response": "hi", "finish_reason": "length", **metrics} for c in cells])
    return plan.out


# id: (arguments after "batch PROMPTS --model CKPT" unless they name a command, exit status, message fragment)
# Placeholders: PROMPTS (a good prompt file), CKPT (a tiny checkpoint), TMP (an empty folder), and MAKE, the
# path the case's maker in MAKERS returns.
CASES = {
    "model-missing": (["batch", "PROMPTS", "--model", "/no/such/model"], 2, "model folder not found"),
    "model-is-a-file": (["batch", "PROMPTS", "--model", "PROMPTS"], 2, "is a file; it needs a GPT-2 checkpoint folder"),
    "model-without-config": (["batch", "PROMPTS", "--model", "TMP"], 2, "it has no config.json"),
    "model-not-gpt2": (["batch", "PROMPTS", "--model", "MAKE"], 2, "is not a GPT-2 checkpoint (config.json model_type"),
    "model-config-not-json": (["batch", "PROMPTS", "--model", "MAKE"], 2, "is not valid JSON"),
    "model-without-weights": (["batch", "PROMPTS", "--model", "MAKE"], 2, "has a config.json but no weights"),
    "model-weights-do-not-match": (["batch", "PROMPTS", "--model", "MAKE"], 2, "as a GPT-2 checkpoint:"),
    "export-corrupt": (["batch", "PROMPTS", "--model", "MAKE", "--variant", "int8"], 2,
                       "does not match the sha256 in its manifest"),
    "temperature-zero-sampling": (["--temperature", "0"], 2, "--temperature must be > 0 when sampling"),
    "temperature-negative": (["--temperature", "-1"], 2, "--temperature must be > 0"),
    "temperature-nan": (["--temperature", "nan"], 2, "--temperature must be a finite number"),
    "temperature-not-a-number": (["--temperature", "hot"], 2, "'hot' is not a valid float"),
    "top-p-zero": (["--top-p", "0"], 2, "--top-p must be in (0, 1]"),
    "top-p-above-one": (["--top-p", "1.5"], 2, "--top-p must be in (0, 1]"),
    "top-k-negative": (["--top-k", "-1"], 2, "--top-k must be >= 0 (0 disables it)"),
    "top-k-not-whole": (["--top-k", "2.5"], 2, "'2.5' is not a valid integer"),
    "repetition-penalty-zero": (["--repetition-penalty", "0"], 2, "--repetition-penalty must be > 0"),
    "max-new-tokens-zero": (["--max-new-tokens", "0"], 2, "--max-new-tokens must be >= 1"),
    "max-length-zero": (["--max-length", "0"], 2, "--max-length must be >= 1"),
    "no-repeat-ngram-size-negative": (["--no-repeat-ngram-size", "-1"], 2, "--no-repeat-ngram-size must be >= 0"),
    "seed-negative": (["--seed", "-1"], 2, "--seed must be in [0, 2**63)"),
    "variant-unknown": (["--variant", "int3"], 2, "'int3' is not one of"),
    "device-unknown": (["--device", "tpu"], 2, "'tpu' is not one of"),
    "config-unknown-key": (["--config", "MAKE"], 2, "unknown key 'temprature'"),
    "config-bad-toml": (["--config", "MAKE"], 2, "is not valid TOML"),
    "config-bad-value": (["--config", "MAKE"], 2, "top_k must be an integer"),
    "config-missing": (["--config", "/no/such.toml"], 2, "config file not found"),
    "config-directory": (["--config", "TMP"], 2, "is a directory"),
    "prompts-missing": (["batch", "TMP/missing.txt", "--model", "CKPT"], 2, "prompt file not found"),
    "prompts-directory": (["batch", "TMP", "--model", "CKPT"], 2, "prompt file is a directory"),
    "prompts-empty": (["batch", "MAKE", "--model", "CKPT"], 2, "has no prompts: every line is empty"),
    "prompts-not-utf8": (["batch", "MAKE", "--model", "CKPT"], 2, "is not UTF-8 text"),
    "prompts-jsonl-without-prompt": (["batch", "MAKE", "--model", "CKPT"], 2,
                                     'is not a JSON object with a "prompt" string'),
    "prompts-unreadable": (["batch", "PROMPTS", "--model", "CKPT"], 2, "prompt file is not readable"),
    "prompt-longer-than-context": (["batch", "MAKE", "--model", "CKPT", "-o", "TMP/out.txt"], 2,
                                   "is longer than the model's context of 64 tokens"),
    "prompt-of-one-megabyte": (["batch", "MAKE", "--model", "CKPT"], 2, "is longer than the model's context"),
    "prompt-longer-than-context-truncated": (["batch", "MAKE", "--model", "CKPT", "--truncate"], 0,
                                             "cut from the left"),
    "output-folder-missing": (["-o", "TMP/no/such/dir/out.txt"], 2, "cannot write --output-file"),
    "output-is-a-directory": (["-o", "TMP"], 2, "is a directory"),
    "output-exists": (["-o", "MAKE"], 2, "already exists; add --append"),
    "output-not-writable": (["-o", "/proc/version", "--overwrite"], 1, "cannot write to /proc/version"),
    "output-disk-full": (["-o", "/dev/full", "--append"], 1, "No space left on device"),
    "device-cuda-missing": (["--device", "cuda"], 2, "has no CUDA provider"),
    "ray-address-unreachable": (["--ray", "127.0.0.1:1"], 1, "cannot reach the Ray cluster at "),
    "ray-address-malformed": (["--ray", "nowhere"], 2, "is not an address; give auto, HOST:PORT"),
    "ray-options-without-ray": (["--workers", "2"], 2, "--workers and --threads go with --ray"),
    "ray-with-log": (["--ray", "--log"], 2, "--log does not go with --ray yet"),
    "sweep-preset-rank-out-of-range": (["sweep-preset", "MAKE", "--rank", "9", "--name", "x"], 2,
                                       "has ranks 1 to 2 (best perplexity first)"),
    "sweep-preset-rank-not-a-number": (["sweep-preset", "MAKE", "--rank", "first", "--name", "x"], 2,
                                       "'first' is not a valid integer"),
    "sweep-preset-unknown-model": (["sweep-preset", "MAKE", "--model", "tiyn", "--name", "x"], 2,
                                   "; name one of them"),
    "sweep-preset-no-target": (["sweep-preset", "MAKE"], 2, "give one of --name NAME, --output-file FILE or --apply"),
    "sweep-preset-shipped-name": (["sweep-preset", "MAKE", "--name", "dream"], 2, "is a shipped preset"),
    "sweep-preset-exists": (["sweep-preset", "MAKE", "-o", "MAKE/results.jsonl"], 2,
                            "already exists; add --overwrite"),
    "sweep-not-a-sweep-folder": (["sweep-report", "TMP"], 2, "is not a sweep folder: it has no sweep.json"),
    "template-missing": (["--template", "/no/such.jinja"], 2, "template not found"),
    "template-invalid": (["--template", "MAKE"], 2, "is not a valid Jinja2 template"),
    "template-fails-to-render": (["--template", "MAKE"], 2, "failed to render the messages"),
    "log-db-directory": (["--log", "--log-db", "TMP"], 2, "is a directory"),
}

MAKERS = {
    "model-not-gpt2": _folder({"config.json": '{"model_type": "bert"}'}),
    "model-config-not-json": _folder({"config.json": "{not json"}),
    "model-without-weights": _folder({"config.json": '{"model_type": "gpt2", "n_positions": 64}'}),
    "model-weights-do-not-match": _wrong_weights,
    "config-unknown-key": _file("bad.toml", "temprature = 1\n"),
    "config-bad-toml": _file("bad.toml", "top_p = [\n"),
    "config-bad-value": _file("bad.toml", 'top_k = "many"\n'),
    "prompts-empty": _file("empty.txt", "\n  \n\n"),
    "prompts-not-utf8": _file("latin1.txt", "caf\xe9 au lait\n".encode("latin-1")),
    "prompts-jsonl-without-prompt": _file("prompts.jsonl", '{"prompt": "fine"}\n{"text": "no prompt key"}\n'),
    "prompt-longer-than-context": _file("long.txt", "a short one\n" + " ".join(["dream"] * 200) + "\nnever\n"),
    "prompt-of-one-megabyte": _file("huge.txt", "x" * 1_000_000 + "\n"),
    "prompt-longer-than-context-truncated": _file("long.txt", " ".join(["dream"] * 200) + "\n"),
    "output-exists": _file("out.txt", "earlier results\n"),
    **{case: _sweep_folder for case in CASES if case.startswith("sweep-preset")},
    "template-invalid": _file("bad.jinja", "{% for m in messages %}{{ m.content }}"),
    "template-fails-to-render": _file("bad.jinja", "{{ messages[5].content }}"),
}

GREEDY = ["--greedy", "--max-new-tokens", "3"]  # before a case's own options, which win over them


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, tmp_path, tiny_checkpoint, exports, capsys, monkeypatch):
    argv, code, fragment = CASES[case]
    if case == "device-cuda-missing" and "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("hello there\nhow are you\n")
    made = None
    if case in MAKERS:
        made = MAKERS[case](tmp_path)
    elif case == "export-corrupt":
        made = _corrupt_export(tmp_path, exports)
    if case == "prompts-unreadable":  # root reads any file, so the permission error is faked
        import chatbot_llm.batchio as batchio

        def denied(*args, **kwargs):
            raise PermissionError(13, "Permission denied")
        monkeypatch.setattr(batchio, "open", denied, raising=False)
    if argv[0].startswith("-"):
        sampling = "--temperature" in argv  # these cases are about sampling, so no --greedy
        argv = ["batch", "PROMPTS", "--model", "CKPT", *(GREEDY[1:] if sampling else GREEDY), *argv]
    elif argv[0] == "batch":
        argv = [*argv, *GREEDY]
    replace = {"PROMPTS": str(prompts), "CKPT": str(tiny_checkpoint), "TMP": str(tmp_path), "MAKE": str(made)}
    argv = [re.sub(r"^(PROMPTS|CKPT|TMP|MAKE)", lambda m: replace[m.group(1)], a) for a in argv]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == code, err
    assert fragment in err and "Traceback" not in err
    if code:
        errors = [line for line in err.splitlines() if "error:" in line]
        assert len(errors) == 1, err
    for path, content in before.items():  # nothing that was there is lost or changed
        assert path.read_bytes() == content, path


def test_a_too_long_prompt_keeps_the_results_before_it(tmp_path, tiny_checkpoint, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("one\ntwo\n" + "dream " * 200 + "\nfour\n")
    out = tmp_path / "out.jsonl"
    with pytest.raises(SystemExit) as exit_info:
        main(["batch", str(prompts), "--model", str(tiny_checkpoint), "-o", str(out), "--format", "jsonl",
              "--batch-size", "2", *GREEDY])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "line 3 of" in err and "continue with --resume" in err
    assert [json.loads(line)["index"] for line in out.read_text().splitlines()] == [1, 2]


def _docs_rows() -> dict[str, dict[str, str]]:
    rows = {}
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) == 5 and cells[0].startswith("`") and not cells[0].startswith("`case"):
            rows[cells[0].strip("`")] = {"message": cells[2], "exit": cells[3], "test": cells[4].strip("`")}
    return rows


def test_the_docs_table_and_the_cases_agree():
    """Each row of docs/errors.md names a test that exists; each case here has its row, same fragment and exit."""
    rows = _docs_rows()
    for case, (_, code, fragment) in CASES.items():
        assert case in rows, f"docs/errors.md has no row for {case}"
        assert fragment.replace("|", "\\|") in rows[case]["message"], case
        assert rows[case]["exit"] == str(code), case
        assert rows[case]["test"] == f"tests/test_bad_input.py::test_bad_input[{case}]", case
    for case, row in rows.items():
        path, _, name = row["test"].partition("::")
        function = name.split("[")[0]
        tree = ast.parse((REPO / path).read_text())
        assert function in {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}, row["test"]
        if path == "tests/test_bad_input.py" and "[" in name:
            assert name.split("[")[1].rstrip("]") in CASES, row["test"]
