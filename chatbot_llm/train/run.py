"""Train a GPT-2 on a txt corpus with transformers' Trainer: from scratch (--size) or on top of an
existing checkpoint (--from), stoppable by wall time and resumable from the Trainer's checkpoint.

The output folder is a standard Hugging Face GPT-2 folder (config.json, model.safetensors,
tokenizer files, generation_config.json) plus train_results.json and a model card. The Trainer's
own checkpoints (optimizer and scheduler state, for --resume) live in OUT/.trainer/.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from chatbot_llm import __version__
from chatbot_llm.config import SEED_DEFAULTS
from chatbot_llm.errors import UsageError
from chatbot_llm.runtime.tokenizer import bundled_tokenizer_dir, tokenizer_from_bpe_files
from chatbot_llm.train.corpus import load_corpus

EOS_ID = 50256

# GPT2LMHeadModel shapes. `small` is what ships (16M parameters, 32 MB in float16).
SIZES = {
    "tiny": dict(n_embd=64, n_layer=2, n_head=2, n_positions=128),
    "small": dict(n_embd=256, n_layer=4, n_head=4, n_positions=512),
    "base": dict(n_embd=768, n_layer=12, n_head=12, n_positions=1024),  # GPT-2 small, 124M
}
LEARNING_RATES = {"tiny": 2e-3, "small": 1e-3, "base": 6e-4}
TRAINER_DIR = ".trainer"
MODEL_FILES = ("config.json", "model.safetensors", "pytorch_model.bin", "generation_config.json", "vocab.json",
               "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               "train_results.json", "README.md")


@dataclass
class Recipe:
    """Everything that decides the weights; --resume refuses to continue a different recipe."""

    corpus_sha256: str
    size: str | None
    init_from: str | None
    seed: int
    block_size: int
    batch_size: int
    learning_rate: float
    epochs: float
    max_steps: int
    save_dtype: str


@dataclass
class Progress:
    """Carried across --resume sessions, for the model card."""

    sessions: list[dict] = field(default_factory=list)
    initial_heldout_loss: float | None = None

    @property
    def wall_seconds(self) -> float:
        return sum(s["seconds"] for s in self.sessions)


def check_out(out: Path, resume: bool, force: bool) -> None:
    """Refuse to write over a different model; --resume needs a Trainer checkpoint to go on from."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder")
    has_content = out.is_dir() and any(out.iterdir())
    if resume:
        if not _last_checkpoint(out):
            raise UsageError(f"--resume: {out} holds no training checkpoint to continue from; drop --resume")
        return
    if has_content and not force:
        what = "a model" if (out / "config.json").exists() else "files"
        raise UsageError(
            f"--out {out} already holds {what}; pass --resume to continue its training or --force to replace it"
        )


def _last_checkpoint(out: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    trainer_dir = out / TRAINER_DIR
    return get_last_checkpoint(str(trainer_dir)) if trainer_dir.is_dir() else None


def bf16_supported() -> bool:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())


def build_model(size: str | None, init_from: Path | None, context: int):
    """A new GPT-2 of this size and context, or the --from checkpoint (already checked by _context_of)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    if init_from is not None:
        try:
            return GPT2LMHeadModel.from_pretrained(str(init_from), local_files_only=True, dtype="float32")
        except Exception as exc:  # transformers raises OSError, ValueError, RuntimeError, safetensors errors
            raise UsageError(f"--from {init_from} cannot be loaded: {str(exc).splitlines()[0]}") from None
    shape = {**SIZES[size], "n_positions": context}
    config = GPT2Config(vocab_size=50257, bos_token_id=EOS_ID, eos_token_id=EOS_ID, **shape)
    return GPT2LMHeadModel(config)


def _context_of(size: str | None, init_from: Path | None, block_size: int | None) -> int:
    """The context length the model will have, known before it is built."""
    if init_from is not None:
        from chatbot_llm.export.pipeline import check_checkpoint

        return int(check_checkpoint(init_from).get("n_positions", 1024))
    return max(SIZES[size]["n_positions"], block_size or 0)


class _Blocks:
    """A torch Dataset over the corpus blocks: each item is one block, labels = inputs (shifted in the model)."""

    def __init__(self, array):
        import torch

        self.tensor = torch.from_numpy(array)

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def __getitem__(self, i: int) -> dict:
        ids = self.tensor[i]
        return {"input_ids": ids, "labels": ids}


def _callbacks(deadline: float | None, tokens_per_step: int, on_progress: Callable | None):
    from transformers import TrainerCallback

    class StopAtDeadline(TrainerCallback):
        """--max-minutes: stop after the step that crosses the deadline, saving a checkpoint to resume."""

        def on_step_end(self, args, state, control, **kwargs):
            if deadline is not None and time.monotonic() >= deadline:
                control.should_save = True
                control.should_training_stop = True

    class ReportProgress(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.start, self.first_step, self.loss = time.monotonic(), state.global_step, None
            if on_progress:
                on_progress(state.global_step, state.max_steps, None, None)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.loss = logs["loss"]

        def on_step_end(self, args, state, control, **kwargs):
            elapsed = time.monotonic() - self.start
            done = state.global_step - self.first_step
            rate = done * tokens_per_step / elapsed if elapsed > 0 else None
            if on_progress:
                on_progress(state.global_step, state.max_steps, self.loss, rate)

    return [StopAtDeadline(), ReportProgress()]


def train(
    corpus_path: Path,
    out: Path,
    *,
    size: str | None = "small",
    init_from: Path | None = None,
    epochs: float = 1.0,
    max_steps: int | None = None,
    max_minutes: float | None = None,
    resume: bool = False,
    force: bool = False,
    seed: int = 0,
    batch_size: int = 16,
    micro_batch: int = 4,
    block_size: int | None = None,
    learning_rate: float | None = None,
    save_dtype: str = "float16",
    bf16: bool | None = None,
    command: str = "",
    on_stage: Callable[[str], None] = lambda m: None,
    on_progress: Callable | None = None,
) -> dict:
    """Train and write the model folder; returns train_results (also written as OUT/train_results.json)."""
    started = time.monotonic()
    out = Path(out)
    check_out(out, resume, force)
    if batch_size % min(micro_batch, batch_size):
        raise UsageError(f"--batch-size {batch_size} is not a multiple of --micro-batch {micro_batch}")
    micro_batch = min(micro_batch, batch_size)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    transformers.logging.set_verbosity_error()
    # Everything the user can get wrong is checked before the first message and the slow work.
    context = _context_of(size, init_from, block_size)
    block_size = block_size or context
    if block_size > context:
        raise UsageError(f"--block-size {block_size} is longer than the model's context ({context})")
    corpus = load_corpus(corpus_path, block_size, seed)
    steps_per_epoch = math.ceil(len(corpus.train) / batch_size)
    total_steps = max_steps or max(1, math.ceil(steps_per_epoch * epochs))
    recipe = Recipe(
        corpus_sha256=corpus.sha256, size=None if init_from else size,
        init_from=str(init_from) if init_from else None, seed=seed, block_size=block_size,
        batch_size=batch_size, learning_rate=learning_rate or LEARNING_RATES.get(size or "", 5e-4),
        epochs=epochs, max_steps=total_steps, save_dtype=save_dtype,
    )
    trainer_dir = out / TRAINER_DIR
    progress = _start_recipe(out, trainer_dir, recipe, resume, force)
    on_stage(f"read {corpus_path}: {corpus.records:,} records, {corpus.train_tokens:,} training tokens")
    on_stage("building the model")
    transformers.set_seed(seed)  # the init draws from torch's global stream, before the Trainer seeds it
    model = build_model(size, init_from, context)
    use_bf16 = bf16_supported() if bf16 is None else bf16

    args = TrainingArguments(
        output_dir=str(trainer_dir),
        # Small micro-batches keep the [tokens x 50257] logits small: about 20% more tokens/s here.
        per_device_train_batch_size=micro_batch,
        gradient_accumulation_steps=batch_size // micro_batch,
        per_device_eval_batch_size=micro_batch,
        learning_rate=recipe.learning_rate,
        weight_decay=0.1,
        adam_beta2=0.95,
        max_grad_norm=1.0,
        lr_scheduler_type="cosine",
        warmup_ratio=0.03,
        max_steps=total_steps,
        bf16=use_bf16,
        use_cpu=not torch.cuda.is_available(),
        logging_steps=max(1, min(10, total_steps // 20)),
        save_strategy="steps",
        save_steps=max(1, total_steps // 10),
        save_total_limit=1,
        eval_strategy="no",
        seed=seed,
        data_seed=seed,
        report_to="none",
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=_Blocks(corpus.train),
        eval_dataset=_Blocks(corpus.heldout),
        callbacks=_callbacks(
            time.monotonic() + max_minutes * 60 if max_minutes else None, batch_size * block_size, on_progress
        ),
    )
    for quiet in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(quiet)
    on_stage(
        f"training {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters: {len(corpus.train):,} "
        f"blocks of {block_size} tokens, {total_steps} steps of {batch_size} blocks"
        + (", bf16 autocast" if use_bf16 else "")
    )
    initial_loss = None
    if not resume and len(corpus.heldout):
        on_stage("measuring held-out perplexity before training")
        initial_loss = trainer.evaluate()["eval_loss"]
    session_start = time.monotonic()
    trainer.train(resume_from_checkpoint=_last_checkpoint(out) if resume else None)
    step = trainer.state.global_step
    complete = step >= total_steps
    if not complete:  # stopped by --max-minutes: the deadline callback already saved a checkpoint
        on_stage(f"stopped at step {step} of {total_steps}; continue with --resume")
    on_stage("measuring held-out perplexity")
    model = trainer.model.to(getattr(torch, save_dtype)).to(torch.float32)  # measure what is saved
    heldout_loss = trainer.evaluate()["eval_loss"] if len(corpus.heldout) else float("nan")
    if initial_loss is not None:
        progress.initial_heldout_loss = initial_loss
    progress.sessions.append(
        {"started_step": progress.sessions[-1]["ended_step"] if progress.sessions else 0,
         "ended_step": step, "seconds": round(time.monotonic() - session_start, 1)}
    )
    results = {
        "complete": complete,
        "steps": step,
        "max_steps": total_steps,
        "tokens_seen": step * batch_size * block_size,
        "epochs_seen": round(step * batch_size / len(corpus.train), 3),
        "parameters": sum(p.numel() for p in model.parameters()),
        "heldout_loss": round(heldout_loss, 4),
        "heldout_perplexity": round(math.exp(heldout_loss), 2),
        "initial_heldout_perplexity": (round(math.exp(progress.initial_heldout_loss), 2)
                                       if progress.initial_heldout_loss is not None else None),
        "heldout_tokens": int(corpus.heldout.size),
        "train_tokens": corpus.train_tokens,
        "records": corpus.records,
        "corpus": str(corpus_path),
        "training_seconds": round(progress.wall_seconds, 1),
        "sessions": len(progress.sessions),
        "bf16": use_bf16,
        "threads": torch.get_num_threads(),
        "recipe": asdict(recipe),
        "command": command,
        "versions": {"chatbot_llm": __version__, "torch": torch.__version__,
                     "transformers": transformers.__version__},
    }
    _save_model(model, out, save_dtype)
    (trainer_dir / "progress.json").write_text(json.dumps(asdict(progress), indent=2) + "\n")
    (out / "train_results.json").write_text(json.dumps(results, indent=2) + "\n")
    on_stage(f"done in {time.monotonic() - started:.0f} s")
    return results


def _start_recipe(out: Path, trainer_dir: Path, recipe: Recipe, resume: bool, force: bool) -> Progress:
    recipe_file = trainer_dir / "recipe.json"
    if resume:
        previous = json.loads(recipe_file.read_text()) if recipe_file.exists() else None
        if previous != asdict(recipe):
            changed = sorted(k for k in asdict(recipe) if not previous or previous.get(k) != asdict(recipe)[k])
            raise UsageError(
                f"--resume: the training in {out} was started with a different recipe ({', '.join(changed)} "
                f"differ); run the same command again with --resume, or use --force to start over"
            )
        progress_file = trainer_dir / "progress.json"
        return Progress(**json.loads(progress_file.read_text())) if progress_file.exists() else Progress()
    if force:  # only what a training run writes: --out may be a folder that holds other things too
        shutil.rmtree(trainer_dir, ignore_errors=True)
        for name in MODEL_FILES:
            (out / name).unlink(missing_ok=True)
    trainer_dir.mkdir(parents=True, exist_ok=True)
    recipe_file.write_text(json.dumps(asdict(recipe), indent=2) + "\n")
    return Progress()


def _save_model(model, out: Path, save_dtype: str) -> None:
    """A standard HF GPT-2 folder: weights (in save_dtype), config, tokenizer, generation defaults."""
    import torch
    from transformers import GenerationConfig, GPT2TokenizerFast

    defaults = out / "generation_config.json"
    chosen = defaults.read_text() if defaults.exists() else None  # kept: defaults chosen for this model
    model.to(getattr(torch, save_dtype)).save_pretrained(str(out), safe_serialization=True)  # rewrites it
    model.to(torch.float32)
    bundled = bundled_tokenizer_dir()
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(bundled / name, out / name)
    tokenizer_from_bpe_files(bundled / "vocab.json", bundled / "merges.txt").save(str(out / "tokenizer.json"))
    GPT2TokenizerFast(tokenizer_file=str(out / "tokenizer.json"), eos_token="<|endoftext|>",
                      bos_token="<|endoftext|>", unk_token="<|endoftext|>").save_pretrained(
        str(out), legacy_format=False)
    if chosen is not None:
        defaults.write_text(chosen)
    else:  # a new model starts from the seed's defaults
        GenerationConfig(bos_token_id=EOS_ID, eos_token_id=EOS_ID, pad_token_id=EOS_ID,
                         **{k: v for k, v in SEED_DEFAULTS.items() if k != "seed" and v is not None}).save_pretrained(str(out))
