"""The actors: each loads its export once, in its constructor, then generates batch after batch.

A Ray Data batch here is one window of prompts (batch) or one cell (sweep): the same unit of work a
local run does in one step, so a worker's output for it is the local run's output for it. What a
worker sends back is JSON text: the records, and where its time went.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np

from chatbot_llm.scale.export import load_shipped


def _maybe_fail(unit: int) -> None:
    """Fault injection for the tests: CHATBOT_LLM_RAY_FAULT="UNIT:MARKER" makes the worker that gets
    batch UNIT exit at once, the first time only (MARKER records that it happened)."""
    spec = os.environ.get("CHATBOT_LLM_RAY_FAULT")
    if not spec:
        return
    number, _, marker = spec.partition(":")
    if int(number) == unit and not Path(marker).exists():
        Path(marker).write_text(str(os.getpid()))
        os._exit(1)


class _Worker:
    def __init__(self, threads: int | None, device: str):
        self.threads, self.device = threads, device
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.warnings: list[str] = []
        self.load_seconds = 0.0

    def _payload(self, started: float, **fields: Any) -> str:
        warnings, self.warnings = self.warnings, []
        load, self.load_seconds = self.load_seconds, 0.0  # reported once, with the first batch
        return json.dumps({"worker": self.name, "load_seconds": load, "warnings": warnings,
                           "work_seconds": time.perf_counter() - started, **fields}, ensure_ascii=False)


class BatchWorker(_Worker):
    """One window of prompts in, its records out (generate's own batching and random streams)."""

    def __init__(self, shipped, config, batch_size: int, truncate: bool, stops: list[str], threads: int | None,
                 device: str):
        super().__init__(threads, device)
        self.stops = stops
        started = time.perf_counter()
        self.generator = load_shipped(shipped, threads, device, on_warning=self.warnings.append)
        self.generator.truncate = truncate
        self.config, self.batch_size, self.params = config, batch_size, config.to_dict()
        self.load_seconds = time.perf_counter() - started

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        from chatbot_llm.batchio import batch_record
        from chatbot_llm.errors import PromptTooLong

        out: dict[str, list] = {"unit": [], "payload": []}
        for unit, chunk in zip(batch["unit"], batch["chunk"]):
            _maybe_fail(int(unit))
            started = time.perf_counter()
            rows = json.loads(chunk)  # [line number, prompt, prompt rendered through --template]
            numbers = [number for number, _, _ in rows]
            records, error = [], None
            try:
                completions = self.generator.generate([rendered for _, _, rendered in rows], self.config,
                                                      stream_keys=numbers, max_batch=self.batch_size,
                                                      stops=self.stops)
                records = [batch_record(self.generator, self.params, number, prompt, completion)
                           for (number, prompt, _), completion in zip(rows, completions)]
            except PromptTooLong as exc:  # the driver stops at it, as a local run does
                error = {"line": numbers[exc.row], "message": str(exc)}
            out["unit"].append(int(unit))
            out["payload"].append(self._payload(started, records=records, error=error))
        return out


class SweepWorker(_Worker):
    """One cell of a sweep in, its rows out; every model of the sweep is loaded once per actor."""

    def __init__(self, shipped: dict, plan, batch_size: int, threads: int | None, device: str):
        """shipped: the plan's model name (as --models gave it) -> ShippedExport."""
        super().__init__(threads, device)
        started = time.perf_counter()
        self.generators = {model: load_shipped(s, threads, device, on_warning=self._warn_once)
                           for model, s in shipped.items()}
        self.plan, self.batch_size = plan, batch_size
        self.load_seconds = time.perf_counter() - started

    def _warn_once(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        from chatbot_llm.sweep.run import run_cell

        out: dict[str, list] = {"unit": [], "payload": []}
        for unit in batch["unit"]:
            _maybe_fail(int(unit))
            started = time.perf_counter()
            cell = self.plan.cells[int(unit)]
            rows = run_cell(self.generators[cell.model], cell, self.plan, self.batch_size)
            out["unit"].append(int(unit))
            out["payload"].append(self._payload(started, rows=rows))
        return out
