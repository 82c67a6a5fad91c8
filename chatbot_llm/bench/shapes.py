"""Randomly initialised GPT-2 checkpoints of real shapes: the speed and size of a real fine-tune."""

from __future__ import annotations

import shutil
from pathlib import Path

SHAPES = {
    "gpt2-124m": dict(n_embd=768, n_layer=12, n_head=12, n_positions=1024),  # GPT-2 small
    "tiny": dict(n_embd=64, n_layer=2, n_head=2, n_positions=256),
}


def make_random_checkpoint(out: Path, shape: str = "gpt2-124m", seed: int = 0) -> Path:
    """Write the checkpoint (fixed seed, so every machine gets the same weights); needs torch."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from chatbot_llm.runtime.tokenizer import bundled_tokenizer_dir

    out = Path(out)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50257, **SHAPES[shape]))
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(bundled_tokenizer_dir() / name, partial / name)
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)  # a killed run never leaves a half-written checkpoint that looks complete
    return out


def shape_checkpoint(shape: str, root: Path) -> Path:
    """root/checkpoints/<shape>, made once."""
    folder = Path(root) / "checkpoints" / shape
    if not (folder / "config.json").is_file():
        make_random_checkpoint(folder, shape)
    return folder
