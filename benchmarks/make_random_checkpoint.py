"""Write a randomly initialised GPT-2 checkpoint of a real shape, to try the pipeline without a model.

    python benchmarks/make_random_checkpoint.py checkpoints/gpt2-124m            # GPT-2 small, 124M
    python benchmarks/make_random_checkpoint.py checkpoints/tiny --shape tiny

Fixed seed, so every machine gets the same weights. Its text is gibberish: it has the size and speed
of a real GPT-2 fine-tune, not its quality. Needs the export extra (torch, transformers).
"""

import argparse
import shutil
from pathlib import Path

SHAPES = {
    "gpt2-124m": dict(n_embd=768, n_layer=12, n_head=12, n_positions=1024),
    "tiny": dict(n_embd=64, n_layer=2, n_head=2, n_positions=256),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--shape", choices=SHAPES, default="gpt2-124m")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from chatbot_llm.runtime.tokenizer import bundled_tokenizer_dir

    torch.manual_seed(args.seed)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50257, **SHAPES[args.shape]))
    model.save_pretrained(args.out)
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(bundled_tokenizer_dir() / name, args.out / name)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"{args.out}: random GPT-2 {args.shape}, {params:.1f}M parameters, seed {args.seed}")


if __name__ == "__main__":
    main()
