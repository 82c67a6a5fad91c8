"""Prompt files in, result records out: the seed's text format, JSONL and CSV.

A prompt file is checked whole (exists, is a file, readable, UTF-8, has a prompt) before any
model is loaded, then streamed line by line, so a long file never sits in memory. Each record is
written with one write() and flushed as soon as its prompt is done.
"""

from __future__ import annotations

import contextlib
import os
import csv
import io
import itertools
import json
import sys
from pathlib import Path
from typing import IO, Any, Iterator

from chatbot_llm.errors import ChatbotError, UsageError

FORMATS = ("text", "jsonl", "csv")
CSV_FIELDS = ("index", "prompt", "response", "model", "backend", "variant", "new_tokens", "seconds",
              "finish_reason", "params")
SEPARATOR = "=" * 60


def check_prompt_file(path: Path) -> int:
    """Number of prompts (non-empty lines) in the file, or a UsageError saying what is wrong."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"prompt file not found: {path}")
    if path.is_dir():
        raise UsageError(f"prompt file is a directory: {path}")
    count, jsonl = 0, is_jsonl(path)
    try:
        with open(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise UsageError(
                        f"prompt file {path} is not UTF-8 text (line {number}); re-save it as UTF-8"
                    ) from None
                if jsonl:
                    count += bool(line.strip()) and bool(_jsonl_prompt(line, number, path))
                else:
                    count += bool(line.strip())
    except PermissionError:
        raise UsageError(f"prompt file is not readable (permission denied): {path}") from None
    except OSError as exc:
        raise UsageError(f"cannot read prompt file {path}: {exc.strerror}") from None
    if count == 0:
        raise UsageError(f"prompt file {path} has no prompts: every line is empty")
    return count


def read_prompts(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, prompt) for each non-empty line, stripped as the seed strips them.

    A .jsonl file holds one {"prompt": ..., "id": ...} object per line (id optional; a record's
    index is still its line number); an object whose prompt is blank counts as an empty line.
    """
    jsonl = is_jsonl(path)
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            prompt = (_jsonl_prompt(line, number, path) if line.strip() else "") if jsonl else line
            prompt = prompt.strip()
            if prompt:
                yield number, prompt


def is_jsonl(path: Path) -> bool:
    return Path(path).suffix.lower() == ".jsonl"


def _jsonl_prompt(line: str, number: int, path: Path) -> str:
    try:
        row = json.loads(line)
    except ValueError:
        row = None
    if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
        raise UsageError(f"line {number} of {path} is not a JSON object with a \"prompt\" string; a .jsonl "
                         'prompt file holds one {"prompt": "...", "id": ...} per line')
    return row["prompt"].strip()


def prompt_windows(prompt_file: Path, batch_size: int, skip: int = 0, wide: bool = False):
    """(ordinal of the first prompt, windows of (line number, prompt)): the prompts batch hands to
    one generate() call, which runs them max_batch at a time.

    A resumed run starts at the window boundary before the first missing prompt and regenerates
    that window whole (writing only the missing rows): each prompt then sits in the same batch as in
    an uninterrupted run. wide: a seeded sampled run on a graph that batches prompts of equal length
    only (TextGenerator.groups_by_length) reads 8 batches' worth to find them; results are still
    written in file order. A wide window of prompts that are not grouped by length is cut into the
    same batches as 8 narrow ones, so a Ray run, whose driver does not load the model, uses the wide
    window for every seeded sampled run and gets a local run's batches either way.
    """
    window = batch_size * (8 if wide else 1)
    first = skip - skip % window
    return first, _chunks(itertools.islice(read_prompts(prompt_file), first, None), window)


def _chunks(items, size: int):
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def check_output_path(path: Path, option: str = "") -> None:
    """Refuse, before any work, a report path that cannot be written (it is replaced when it exists)."""
    path, name = Path(path), f"{option} {path}".strip()
    if path.is_dir():
        raise UsageError(f"{name} is a directory; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"cannot write {name}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"cannot write {name}: permission denied")


@contextlib.contextmanager
def output_stream(path: Path | None, append: bool, overwrite: bool) -> Iterator[tuple[IO[str], bool]]:
    """The output stream, and whether it already holds records (so a CSV header is not repeated).

    Opened before any work starts, so an unwritable path fails at once. An existing non-empty file
    is never truncated unless --overwrite says so, and a file this run created but never wrote to
    is removed again if the run fails.
    """
    if path is None:
        yield sys.stdout, False
        return
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"--output-file {path} is a directory")
    existed = path.exists()
    has_records = existed and path.stat().st_size > 0
    if has_records and not (append or overwrite):
        raise UsageError(f"{path} already exists; add --append to add to it or --overwrite to replace it")
    try:
        stream = open(path, "w" if overwrite else "a", encoding="utf-8", newline="")
    except PermissionError:
        raise UsageError(f"cannot write --output-file {path}: permission denied") from None
    except OSError as exc:
        raise UsageError(f"cannot write --output-file {path}: {exc.strerror}") from None
    try:
        yield stream, has_records and not overwrite
    except BaseException:
        try:
            stream.close()  # may fail again on what the failed write left in its buffer
        except OSError:
            pass
        if not existed and path.is_file() and path.stat().st_size == 0:
            path.unlink()
        raise
    try:
        stream.close()
    except OSError as exc:
        raise _write_failed(path, exc) from None


def _records(path: Path, fmt: str) -> Iterator[tuple[int | None, str, int]]:
    """(line number or None, prompt, byte offset where the record ends) for each whole record.

    Read line by line in binary, so a long output never sits in memory. A record cut short by a
    kill is not yielded; the caller truncates the file at the last whole record's end.
    """
    offset, pending, start_line = 0, [], True
    with open(path, "rb") as f:
        for raw in f:
            offset += len(raw)
            if not raw.endswith(b"\n"):
                return  # the last line was cut short
            if fmt == "jsonl":
                try:
                    row = json.loads(raw)
                    yield int(row["index"]), str(row["prompt"]), offset
                except (ValueError, KeyError, TypeError):
                    return
            elif fmt == "text":
                pending.append(raw.decode("utf-8", "replace"))
                if raw.rstrip(b"\r\n") == SEPARATOR.encode():
                    first = pending[0]
                    if not first.startswith(" Prompt: "):
                        return
                    yield None, first[len(" Prompt: "):].rstrip("\n"), offset
                    pending = []
            else:  # csv: a record may span lines inside quotes; it is whole once its quotes balance
                pending.append(raw.decode("utf-8", "replace"))
                text = "".join(pending)
                if text.count('"') % 2:
                    continue
                pending = []
                if start_line:  # the header
                    start_line = False
                    if text.rstrip("\r\n") == ",".join(CSV_FIELDS):
                        yield -1, "", offset
                        continue
                    return
                fields = next(csv.reader(io.StringIO(text)), [])
                if len(fields) != len(CSV_FIELDS):
                    return
                row = dict(zip(CSV_FIELDS, fields))
                try:
                    yield int(row["index"]), row["prompt"], offset
                except ValueError:
                    return


def resume_point(output: Path, fmt: str, prompt_file: Path) -> tuple[int, bool]:
    """For --resume: how many prompts the output already holds, and whether it holds a CSV header.

    Records are written in prompt order, so the output must start with the prompt file's first
    prompts, record for record (line number and prompt text); a different file is refused. A last
    record cut short by a kill is cut off, so the rerun writes it again, whole.
    """
    output = Path(output)
    if not output.is_file() or output.stat().st_size == 0:
        return 0, False
    prompts = read_prompts(prompt_file)
    done, header, end = 0, False, 0
    for number, prompt, offset in _records(output, fmt):
        if number == -1:
            header, end = True, offset
            continue
        expected = next(prompts, None)
        if expected is None or (number is not None and number != expected[0]) or prompt != expected[1]:
            where = f"line {expected[0]}" if expected else "the end of the prompt file"
            raise UsageError(
                f"--resume: {output} does not match {prompt_file} at record {done + 1} ({where}); "
                f"it was written from another prompt file or format; use --overwrite to start again"
            )
        done, end = done + 1, offset
    if end < output.stat().st_size:
        with open(output, "r+b") as f:
            f.truncate(end)
    return done, header or (fmt != "csv" and done > 0)


def batch_record(generator, params: dict[str, Any], number: int, prompt: str, completion) -> dict[str, Any]:
    """One prompt's result as batch writes it (jsonl shows every field): the prompt as the file has it
    (not as a --template rendered it). A local run and a Ray worker build it here, so both write the
    same records."""
    from chatbot_llm.runtime.textgen import valid_text

    return {
        "index": number,
        "prompt": valid_text(prompt),
        "response": completion.response,
        "model": generator.model_name,
        "backend": generator.backend,
        "variant": generator.variant,
        "params": params,
        "new_tokens": len(completion.tokens),
        "prompt_tokens": completion.prompt_tokens,
        "finish_reason": completion.finish_reason,
        "seconds": round(completion.seconds, 4),
    }


def format_record(fmt: str, row: dict[str, Any], header: bool) -> str:
    if fmt == "text":
        return f" Prompt: {row['prompt']}\n Response: {row['response']}\n{SEPARATOR}\n"
    if fmt == "jsonl":
        return json.dumps(row, ensure_ascii=False) + "\n"
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerow({**row, "params": json.dumps(row["params"], sort_keys=True)})
    return buffer.getvalue()


def write_record(stream: IO[str], text: str) -> None:
    """One write and a flush: a record is in the file whole as soon as it is done."""
    try:
        stream.write(text)
        stream.flush()
    except BrokenPipeError:  # the reader (head, less) has gone: Click exits quietly
        raise
    except OSError as exc:
        name = getattr(stream, "name", "output")
        raise _write_failed(name, exc) from None


def _write_failed(name: Path | str, exc: OSError) -> ChatbotError:
    return ChatbotError(f"cannot write to {name}: {exc.strerror}; the records before this one are kept")
