"""The model card (README.md in a trained model's folder), written from train_results.json.

Everything in it is measured or recorded by the training run, except the section between the
NOTES markers, which is kept from the existing card so that hand-written notes (why these
generation defaults) survive a rewrite. Rewrite a card with:  python -m chatbot_llm.train.card FOLDER
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from chatbot_llm.config import GenerationConfig, load_generation_config_json

NOTES_START, NOTES_END = "<!-- notes: kept when the card is rewritten -->", "<!-- /notes -->"
SAMPLE_SEED = 0
SAMPLE_TOKENS = 60


def _kept_notes(card: Path) -> str:
    if card.exists():
        match = re.search(re.escape(NOTES_START) + r"\n(.*?)" + re.escape(NOTES_END), card.read_text(), re.S)
        if match:
            return match.group(1)
    return "_No notes yet._\n"


def default_prompts(results: dict, n: int = 3) -> list[str]:
    """The first words of a few held-out records: prompts in the corpus's own style."""
    from chatbot_llm.train.corpus import read_records, split_records

    records, _ = read_records(Path(results["corpus"]))
    _, heldout = split_records(records, results["recipe"]["seed"])
    return [" ".join(r.split()[:8]) for r in heldout[:n]]


def samples(folder: Path, prompts: list[str], config: GenerationConfig) -> list:
    """Completions at the model's own generation defaults, seeded, on the PyTorch backend."""
    from chatbot_llm.models import load_text_generator

    generator = load_text_generator(str(folder), backend="torch")
    return generator.generate(prompts, config.replace(max_new_tokens=SAMPLE_TOKENS, max_length=None,
                                                      seed=SAMPLE_SEED))


def write_card(folder: Path, prompts: list[str] | None = None) -> Path:
    folder = Path(folder)
    results = json.loads((folder / "train_results.json").read_text())
    recipe = results["recipe"]
    prompts = prompts or default_prompts(results)
    config = GenerationConfig.resolve(load_generation_config_json(folder / "generation_config.json"))
    completions = samples(folder, prompts, config)
    card = folder / "README.md"
    origin = f"fine-tuned from `{recipe['init_from']}`" if recipe["init_from"] else \
        f"trained from scratch (size `{recipe['size']}`)"
    hours = results["training_seconds"] / 3600
    status = "complete" if results["complete"] else f"**paused** at step {results['steps']} of {results['max_steps']}"
    lines = [
        f"# {folder.name}",
        "",
        f"A GPT-2-architecture language model ({results['parameters'] / 1e6:.1f}M parameters, "
        f"{_shape(folder)}), {origin} on `{Path(results['corpus']).name}` with `chatbot-llm train`.",
        _how_to_run(folder),
        "",
        "## Held-out perplexity",
        "",
        f"**{results['heldout_perplexity']:.2f}** (loss {results['heldout_loss']:.4f} nats/token) over "
        f"{results['heldout_tokens']:,} tokens{_before(results)}: 5% of the corpus's records, held out after a shuffle with "
        f"seed {recipe['seed']} and never trained on. Measured with the weights as saved "
        f"({recipe['save_dtype']}).",
        "",
        "## Corpus",
        "",
        f"- file: `{results['corpus']}` ({results['records']:,} records separated by blank lines)",
        f"- sha256: `{recipe['corpus_sha256']}`",
        f"- training tokens: {results['train_tokens']:,} (GPT-2 BPE, EOS between records)",
        "- provenance and licence: see `shared/data/README.md`; the corpus is not part of this repository.",
        "",
        "## Training",
        "",
        "```",
        results["command"] or "(command not recorded)",
        "```",
        "",
        "| | |",
        "| --- | --- |",
        f"| status | {status} |",
        f"| optimizer steps | {results['steps']:,} of {results['max_steps']:,} |",
        f"| tokens seen | {results['tokens_seen']:,} ({results['epochs_seen']} epochs) |",
        f"| batch | {recipe['batch_size']} blocks x {recipe['block_size']} tokens |",
        f"| learning rate | {recipe['learning_rate']:g}, cosine, 3% warm-up, AdamW (wd 0.1, beta2 0.95) |",
        f"| wall time | {hours:.2f} h in {results['sessions']} session(s), {results['threads']} CPU thread(s), "
        f"bf16 autocast {'on' if results['bf16'] else 'off'} |",
        "| versions | " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()) + " |",
        "",
        "Reproduce it from a clean clone with the command above (paths relative to the repository root).",
        "",
        "## Generation defaults",
        "",
        "`generation_config.json` holds this model's defaults; the command line and `--config` override them.",
        "",
        "| parameter | value |",
        "| --- | --- |",
        *[f"| {k} | {v} |" for k, v in config.to_dict().items() if k not in ("seed", "max_length")],
        "",
        NOTES_START,
        _kept_notes(card).rstrip("\n"),
        NOTES_END,
        "",
        "## Samples",
        "",
        f"At the defaults above (max_new_tokens {SAMPLE_TOKENS} here), seed {SAMPLE_SEED}, PyTorch backend:",
        "",
    ]
    for completion in completions:
        lines += [f"> **{completion.prompt}** {completion.response}".replace("\n", " "), ""]
    card.write_text("\n".join(lines))
    return card


def _how_to_run(folder: Path) -> str:
    from chatbot_llm.models import KNOWN_MODELS

    names = {f: n for n, f in KNOWN_MODELS.items()}
    if folder.name in names:
        return f"It ships with chatbot_llm as `{names[folder.name]}`: `chatbot-llm chat --model {names[folder.name]}`."
    return f"Chat with it: `chatbot-llm chat --model {folder}`."


def _before(results: dict) -> str:
    initial = results.get("initial_heldout_perplexity")
    return f" (before training: {initial:,.0f})" if initial else ""


def _shape(folder: Path) -> str:
    config = json.loads((folder / "config.json").read_text())
    return f"{config['n_layer']} layers, {config['n_embd']} wide, {config['n_head']} heads, context {config['n_positions']}"


def main() -> None:
    parser = argparse.ArgumentParser(description="Rewrite a trained model's card from its train_results.json.")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--prompt", action="append", help="A sample prompt (repeatable).")
    args = parser.parse_args()
    print(write_card(args.folder, args.prompt))


if __name__ == "__main__":
    main()
