"""Fixtures: tiny random GPT-2 checkpoints with the real GPT-2 tokenizer, exported once per session.

Every export lands under a temporary CHATBOT_LLM_HOME, never in the checkout's onnx_models/.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chatbot_llm.runtime.tokenizer import bundled_tokenizer_dir
from chatbot_llm.scale.cluster import keep_ray_on_loopback

keep_ray_on_loopback()  # before any test imports ray: the test cluster listens on 127.0.0.1 only

REPO = Path(__file__).resolve().parent.parent


def make_checkpoint(folder: Path, seed: int = 0, n_positions: int = 64, **overrides) -> Path:
    """A randomly initialised GPT-2 of tiny shape, saved as a Hugging Face checkpoint folder."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    # a wider init than GPT-2's 0.02 gives peaked, varied logits, so greedy tests are not trivial
    settings = dict(n_embd=32, n_layer=2, n_head=2, n_positions=n_positions, vocab_size=50257,
                    initializer_range=0.2)
    settings.update(overrides)
    model = GPT2LMHeadModel(GPT2Config(**settings))
    model.save_pretrained(folder)
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(bundled_tokenizer_dir() / name, folder / name)
    return folder


@pytest.fixture(scope="session", autouse=True)
def chatbot_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("home")
    os.environ["CHATBOT_LLM_HOME"] = str(home)
    os.environ["HF_HUB_OFFLINE"] = "1"
    return home


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny_gpt2")


@pytest.fixture(scope="session")
def exports(tiny_checkpoint, chatbot_home) -> dict[str, Path]:
    """variant -> export folder of tiny_checkpoint, made through the same path the CLI uses."""
    from chatbot_llm.models import ensure_export, resolve_model

    ref = resolve_model(str(tiny_checkpoint))
    return {v: ensure_export(ref, v, on_stage=lambda s: None) for v in ("fp32", "opt", "int8", "int4")}


def run_cli(*args: str, stdin: str | None = None, cwd: Path | None = None, module: bool = True,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real command in a subprocess, as a user would."""
    command = [sys.executable, "-m", "chatbot_llm", *args] if module else [sys.executable, *args]
    return subprocess.run(command, input=stdin, capture_output=True, text=True, cwd=cwd or REPO,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200"})


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]
