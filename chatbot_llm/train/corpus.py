"""A txt corpus -> GPT-2 token blocks for training and a held-out split.

The corpus layout is the one in shared/data/README.md and the seed's "add more data" file: records
separated by a blank line. Each record is tokenized with the standard GPT-2 BPE, EOS (50256) goes
between records, and the token stream is cut into blocks of the model's context length. The
held-out split is made over records (not blocks), after a seeded shuffle, so no record is split
between train and held-out.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chatbot_llm.errors import UsageError
from chatbot_llm.runtime.tokenizer import EOS_TOKEN, load_tokenizer, bundled_tokenizer_dir

HELDOUT_SHARE = 0.05


@dataclass
class Corpus:
    path: Path
    sha256: str
    records: int
    train: np.ndarray  # [n_blocks, block_size] int64
    heldout: np.ndarray  # [n_blocks, block_size] int64
    train_tokens: int  # tokens in the train stream, EOS separators included, before blocking
    heldout_tokens: int


def read_records(path: Path) -> tuple[list[str], str]:
    """The corpus's records and the file's sha256; one clear error for each way a file can be wrong."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"corpus {path} does not exist")
    if path.is_dir():
        raise UsageError(f"corpus {path} is a directory; give a .txt file of records separated by blank lines")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"corpus {path} cannot be read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"corpus {path} is not UTF-8 text (bad byte at offset {exc.start}); convert it with "
            f"iconv -t UTF-8"
        ) from None
    text = text.replace("\r\n", "\n")
    records = [r.strip() for r in text.split("\n\n")]
    records = [r for r in records if r]
    if not records:
        raise UsageError(f"corpus {path} is empty: it holds no text records")
    return records, hashlib.sha256(raw).hexdigest()


def split_records(records: list[str], seed: int) -> tuple[list[str], list[str]]:
    """5% of the records, after a seeded shuffle, are held out (at least one when there are two)."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_heldout = max(1, round(len(records) * HELDOUT_SHARE)) if len(records) > 1 else 0
    heldout = [records[i] for i in order[:n_heldout]]
    train = [records[i] for i in order[n_heldout:]]
    return train, heldout


def token_stream(records: list[str], tokenizer) -> np.ndarray:
    """Every record's ids followed by EOS, as one int64 array."""
    eos = tokenizer.token_to_id(EOS_TOKEN)
    pieces = []
    for encoding in tokenizer.encode_batch(records):
        pieces.append(np.asarray(encoding.ids, dtype=np.int64))
        pieces.append(np.asarray([eos], dtype=np.int64))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)


def blocks(stream: np.ndarray, block_size: int) -> np.ndarray:
    """Non-overlapping blocks of block_size; the last partial block is dropped."""
    n = len(stream) // block_size
    return stream[: n * block_size].reshape(n, block_size)


def load_corpus(path: Path, block_size: int, seed: int) -> Corpus:
    records, sha = read_records(path)
    train_records, heldout_records = split_records(records, seed)
    tokenizer = load_tokenizer(bundled_tokenizer_dir())
    train_stream = token_stream(train_records, tokenizer)
    heldout_stream = token_stream(heldout_records, tokenizer)
    train_blocks = blocks(train_stream, block_size)
    if len(train_blocks) == 0:
        raise UsageError(
            f"corpus {path} is smaller than one context: {len(train_stream):,} training tokens, and the "
            f"model reads {block_size} at a time; add text or pass a smaller --block-size"
        )
    # A held-out split shorter than one block is still measured, as one shorter block.
    heldout_blocks = blocks(heldout_stream, block_size)
    if len(heldout_blocks) == 0 and len(heldout_stream) > 1:
        heldout_blocks = heldout_stream[None, :]
    return Corpus(Path(path), sha, len(records), train_blocks, heldout_blocks, len(train_stream),
                  len(heldout_stream))
