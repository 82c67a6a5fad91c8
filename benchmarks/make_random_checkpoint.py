"""Write a randomly initialised GPT-2 checkpoint of a real shape, to try the pipeline without a model.

    python benchmarks/make_random_checkpoint.py checkpoints/gpt2-124m            # GPT-2 small, 124M
    python benchmarks/make_random_checkpoint.py checkpoints/tiny --shape tiny

Fixed seed, so every machine gets the same weights. Its text is gibberish: it has the size and speed
of a real GPT-2 fine-tune, not its quality. Needs the export extra (torch, transformers).
"""

import argparse
from pathlib import Path

from chatbot_llm.bench.shapes import SHAPES, make_random_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--shape", choices=SHAPES, default="gpt2-124m")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    make_random_checkpoint(args.out, args.shape, args.seed)
    print(f"{args.out}: random GPT-2 {args.shape}, seed {args.seed}")


if __name__ == "__main__":
    main()
