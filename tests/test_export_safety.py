"""Exports are never half-used: hash-checked at load, atomic under kill -9, and one exporter at a time."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from chatbot_llm.export.manifest import check_export
from chatbot_llm.models import resolve_model
from tests.conftest import error_lines, make_checkpoint, run_cli


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stat = path.stat()
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same mtime: only the hash knows


@pytest.mark.parametrize("name", ["model.onnx", "model.onnx.data"])
def test_an_altered_model_or_weights_file_of_the_same_size_is_corrupt(exports, tmp_path, name):
    copy = tmp_path / "opt"
    shutil.copytree(exports["opt"], copy)
    assert check_export(copy, None, "opt").ok
    _flip_a_byte(copy / name)
    (copy / ".verified.json").unlink()  # an edit that even restores the mtime is caught only by hashing
    status = check_export(copy, None, "opt")
    assert status.state == "corrupt" and name in status.reason and "sha256" in status.reason


def test_a_missing_weights_file_is_corrupt(exports, tmp_path):
    copy = tmp_path / "int8"
    shutil.copytree(exports["int8"], copy)
    (copy / "model.onnx.data").unlink()
    status = check_export(copy, None, "int8")
    assert status.state == "corrupt" and "model.onnx.data is missing" in status.reason


def test_an_export_is_as_readable_as_its_parent_folder(exports):
    """Exports are shared between users of a machine: not left with mkdtemp's private 0700."""
    folder = exports["int8"]
    assert folder.stat().st_mode & 0o777 == folder.parent.stat().st_mode & 0o777
    data = folder / "model.onnx.data"
    assert data.stat().st_mode & 0o777 == (folder / "model.onnx").stat().st_mode & 0o777


def test_a_corrupt_export_folder_gets_one_line_saying_how_to_re_export(exports, tmp_path):
    copy = tmp_path / "int8"
    shutil.copytree(exports["int8"], copy)
    _flip_a_byte(copy / "model.onnx")
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    result = run_cli("batch", str(prompts), "--model", str(copy), "--variant", "int8")
    assert result.returncode == 2
    lines = error_lines(result)
    assert len(lines) == 1 and "corrupt" in lines[0] and "chatbot-llm export" in lines[0] and "--force" in lines[0]


def test_a_corrupt_export_of_a_checkpoint_is_redone(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "ckpt", seed=3)
    ref = resolve_model(str(checkpoint))
    result = run_cli("export", str(checkpoint), "--variant", "fp32")
    assert result.returncode == 0, result.stderr
    before = json.loads((ref.export_dir("fp32") / "manifest.json").read_text())["onnx"]["sha256"]
    _flip_a_byte(ref.export_dir("fp32") / "model.onnx")
    (ref.export_dir("fp32") / ".verified.json").unlink(missing_ok=True)
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    again = run_cli("batch", str(prompts), "--model", str(checkpoint), "--variant", "fp32", "--max-new-tokens", "2")
    assert again.returncode == 0, again.stderr
    assert "re-exporting" in again.stderr and "sha256" in again.stderr
    assert ref.status("fp32").ok
    assert json.loads((ref.export_dir("fp32") / "manifest.json").read_text())["onnx"]["sha256"] == before


def test_an_export_killed_midway_is_never_used_and_is_cleaned_up(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "ckpt", seed=4)
    ref = resolve_model(str(checkpoint))
    process = subprocess.Popen([sys.executable, "-m", "chatbot_llm", "export", str(checkpoint), "--variant", "fp32"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(ref.export_root.glob(".fp32.partial-*")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # somewhere inside the export
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not ref.status("fp32").ok  # nothing half-written looks like an export
    result = run_cli("export", str(checkpoint), "--variant", "fp32")
    assert result.returncode == 0, result.stderr
    assert ref.status("fp32").ok and not list(ref.export_root.glob(".fp32.partial-*"))


def test_two_processes_exporting_at_once_both_end_with_one_good_export(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "ckpt", seed=5)
    ref = resolve_model(str(checkpoint))
    command = [sys.executable, "-m", "chatbot_llm", "export", str(checkpoint), "--variant", "opt"]
    first, second = (subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for _ in range(2))
    outputs = [p.communicate(timeout=300) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    assert ref.status("opt").ok
    assert not list(ref.export_root.glob(".opt.partial-*"))
