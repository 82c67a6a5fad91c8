"""The history: every exchange of `serve`, `chat` (and `batch --log`) in one SQLite database.

One row per exchange (a prompt and its reply) with everything needed to redo it: model, variant,
the prompt as typed and as the model saw it (after the template), the reply, every generation
parameter, token counts, seconds, time and conversation id. An FTS5 index over prompt and reply
lets `chatbot-llm logs -q TEXT` search it.

The default file is history.db in the project root (beside onnx_models/; $CHATBOT_LLM_HOME moves
both); --log-db PATH picks another, --no-log writes nothing. Each thread keeps a connection of its
own, so the server's threads and several processes can share one file (WAL mode), and a server
does not open one for every request it logs (0.79 -> 0.60 ms of CPU per exchange written).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from chatbot_llm.errors import UsageError

SCHEMA = """
CREATE TABLE IF NOT EXISTS exchanges (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    conversation TEXT NOT NULL,
    source TEXT NOT NULL,            -- serve, chat or batch
    model TEXT NOT NULL,
    variant TEXT,
    prompt TEXT NOT NULL,
    rendered_prompt TEXT NOT NULL,
    response TEXT NOT NULL,
    params TEXT NOT NULL,            -- JSON: the generation parameters, stop strings, template
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    finish_reason TEXT NOT NULL,
    seconds REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS exchanges_conversation ON exchanges (conversation, id);
CREATE VIRTUAL TABLE IF NOT EXISTS exchanges_fts USING fts5(
    prompt, response, content='exchanges', content_rowid='id');
CREATE TRIGGER IF NOT EXISTS exchanges_fts_insert AFTER INSERT ON exchanges BEGIN
    INSERT INTO exchanges_fts (rowid, prompt, response) VALUES (new.id, new.prompt, new.response);
END;
CREATE TRIGGER IF NOT EXISTS exchanges_fts_delete AFTER DELETE ON exchanges BEGIN
    INSERT INTO exchanges_fts (exchanges_fts, rowid, prompt, response)
    VALUES ('delete', old.id, old.prompt, old.response);
END;
"""


def default_db_path() -> Path:
    from chatbot_llm.models import project_root

    return project_root() / "history.db"


def new_conversation_id() -> str:
    return uuid.uuid4().hex[:16]


@dataclass
class Exchange:
    conversation: str
    source: str
    model: str
    variant: str | None
    prompt: str
    rendered_prompt: str
    response: str
    params: dict[str, Any]
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    seconds: float
    time: float = field(default_factory=time.time)
    id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class History:
    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        self._local = threading.local()
        if self.path.is_dir():
            raise UsageError(f"--log-db {self.path} is a directory; it needs a file")
        try:
            with self._connect() as db:
                db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise UsageError(f"--log-db {self.path} cannot be used as a SQLite history: {exc}") from None

    def _connect(self) -> sqlite3.Connection:
        """This thread's connection (use it as `with db:`, one transaction)."""
        if not self.path.parent.is_dir():
            raise UsageError(f"cannot write --log-db {self.path}: its folder does not exist")
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # with WAL: no fsync per exchange, and never a corrupt file
            self._local.db = db
        return db

    def add(self, *exchanges: Exchange) -> None:
        columns = [f for f in Exchange.__dataclass_fields__ if f != "id"]
        rows = [[json.dumps(e.params) if c == "params" else _storable(getattr(e, c)) for c in columns]
                for e in exchanges]
        with self._connect() as db:
            db.executemany(f"INSERT INTO exchanges ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                           rows)

    def search(self, limit: int = 20, query: str | None = None, model: str | None = None,
               conversation: str | None = None) -> list[Exchange]:
        """The newest exchanges first; query is FTS5 syntax (plain words match all of them)."""
        where, args = [], []
        if query:
            where.append("id IN (SELECT rowid FROM exchanges_fts WHERE exchanges_fts MATCH ?)")
            args.append(query)
        if model:
            where.append("model = ?")
            args.append(model)
        if conversation:
            where.append("conversation = ?")
            args.append(conversation)
        sql = "SELECT * FROM exchanges" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY id DESC LIMIT ?"
        try:
            with self._connect() as db:
                rows = db.execute(sql, [*args, limit]).fetchall()
        except sqlite3.OperationalError as exc:  # an FTS5 query with a syntax error
            raise UsageError(f"cannot search for {query!r}: {exc} (quote the words: -q '\"a phrase\"')") from None
        return [_exchange(row) for row in rows]

    def conversation(self, conversation: str) -> list[Exchange]:
        """Its exchanges, oldest first."""
        return list(reversed(self.search(limit=10_000, conversation=conversation)))

    def last_conversation(self, source: str | None = None) -> str | None:
        sql = "SELECT conversation FROM exchanges" + (" WHERE source = ?" if source else "") + " ORDER BY id DESC LIMIT 1"
        with self._connect() as db:
            row = db.execute(sql, [source] if source else []).fetchone()
        return row["conversation"] if row else None

    def conversations(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest conversations first: id, model, first prompt, turns, last time."""
        sql = """SELECT conversation, model, COUNT(*) AS turns, MAX(time) AS time, MIN(id) AS first
                 FROM exchanges GROUP BY conversation ORDER BY MAX(id) DESC LIMIT ?"""
        with self._connect() as db:
            rows = db.execute(sql, [limit]).fetchall()
            firsts = {r["id"]: r["prompt"] for r in db.execute(
                f"SELECT id, prompt FROM exchanges WHERE id IN ({', '.join('?' * len(rows))})",
                [r["first"] for r in rows]).fetchall()} if rows else {}
        return [{"id": r["conversation"], "model": r["model"], "turns": r["turns"], "time": r["time"],
                 "title": firsts.get(r["first"], "")} for r in rows]


def turns_as_messages(exchanges: list[Exchange]) -> list[dict[str, str]]:
    """A conversation's exchanges as chat messages (user, assistant, user, ...)."""
    messages: list[dict[str, str]] = []
    for e in exchanges:
        messages += [{"role": "user", "content": e.prompt}, {"role": "assistant", "content": e.response}]
    return messages


def _storable(value: Any) -> Any:
    """Text with lone surrogates (a terminal's bytes that are not UTF-8) made valid; SQLite takes only UTF-8."""
    from chatbot_llm.runtime.textgen import valid_text

    return valid_text(value) if isinstance(value, str) else value


def _exchange(row: sqlite3.Row) -> Exchange:
    data = dict(row)
    data["params"] = json.loads(data["params"])
    return Exchange(**data)


def iter_jsonl(exchanges: list[Exchange]) -> Iterator[str]:
    for e in exchanges:
        yield json.dumps(e.to_dict(), ensure_ascii=False)


def open_history(log_db: Path | None, no_log: bool) -> History | None:
    """The history a command writes to: --log-db, else the default file; None with --no-log."""
    if no_log:
        return None
    return History(log_db or default_db_path())
