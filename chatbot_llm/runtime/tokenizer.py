"""GPT-2 byte-level BPE through the `tokenizers` library, and streaming decode."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

from chatbot_llm.errors import UsageError

EOS_TOKEN = "<|endoftext|>"


def bundled_tokenizer_dir() -> Path:
    """The original OpenAI GPT-2 vocab.json and merges.txt, shipped inside the package."""
    return Path(str(resources.files("chatbot_llm") / "assets" / "gpt2"))


def tokenizer_from_bpe_files(vocab: Path, merges: Path) -> Tokenizer:
    """The same tokenizer as transformers' GPT2TokenizerFast, built from vocab.json + merges.txt."""
    tok = Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([EOS_TOKEN])
    return tok


def load_tokenizer(folder: Path) -> Tokenizer:
    """A folder's tokenizer.json, else its vocab.json + merges.txt, else the bundled GPT-2 files."""
    folder = Path(folder)
    if (folder / "tokenizer.json").is_file():
        try:
            return Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as exc:  # tokenizers raises plain Exception subclasses
            raise UsageError(f"{folder / 'tokenizer.json'} cannot be read as a tokenizer: {exc}") from None
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        return tokenizer_from_bpe_files(folder / "vocab.json", folder / "merges.txt")
    bundled = bundled_tokenizer_dir()
    return tokenizer_from_bpe_files(bundled / "vocab.json", bundled / "merges.txt")


class StreamDecoder:
    """Turns one row's tokens, as they arrive, into text deltas.

    A multi-byte character can be split across tokens; its first part decodes to U+FFFD, so text
    is held back while it ends in U+FFFD and released once the character is complete. Leading
    whitespace is dropped, as the seed strips its responses.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = 0

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        return self._delta(final=False)

    def flush(self) -> str:
        """At the end of the row: what is still held back (a character its last token left unfinished
        decodes to U+FFFD, as it does in the whole response)."""
        return self._delta(final=True)

    def _delta(self, final: bool) -> str:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True).lstrip()
        if text.endswith("\ufffd") and not final:
            return ""
        delta, self.emitted = text[self.emitted :], len(text)
        return delta
