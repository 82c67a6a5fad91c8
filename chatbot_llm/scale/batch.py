"""batch --ray: the prompt file's windows spread over an actor pool, records written in file order.

The driver cuts the file into the windows a local run generates together (batchio.prompt_windows)
and writes each window's records as it comes back, in order, so the output file is at every moment
what a local run would have written so far: --resume works the same, and only `seconds` differs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Callable

from chatbot_llm.errors import UsageError
from chatbot_llm.scale.cluster import pool_size, ray_cluster
from chatbot_llm.scale.export import ship_export
from chatbot_llm.scale.runner import Timing, run_on_pool
from chatbot_llm.scale.workers import BatchWorker


def run_batch_on_ray(address: str, workers: int | None, threads: int, ref, export_dir: Path, variant: str,
                     device: str, config, prompt_file: Path, total: int, out: IO[str], fmt: str,
                     batch_size: int, truncate: bool, has_records: bool, output_file: Path | None, skip: int,
                     progress: Callable[[int], None], on_stage: Callable[[str], None],
                     on_warning: Callable[[str], None], render: Callable[[str], str] | None = None,
                     stops: list[str] | None = None) -> tuple[int, str]:
    """(records written, the summary line); progress(n) advances the job's bar by n prompts.

    render: --template, applied here (the workers get each prompt as typed and as rendered);
    stops: --stop strings, handed to generate() in the worker as a local run hands them.
    """
    from chatbot_llm.batchio import format_record, prompt_windows, write_record

    # wide when the local run might be (batchio.prompt_windows): the same batches either way
    first, windows = prompt_windows(prompt_file, batch_size, skip, wide=config.do_sample and config.seed is not None)
    units = [{"unit": n, "first": ordinal,
              "chunk": json.dumps([[number, prompt, render(prompt) if render else prompt] for number, prompt in chunk],
                                  ensure_ascii=False)}
             for n, (ordinal, chunk) in enumerate(_with_ordinals(first, windows))]
    with ray_cluster(address, on_stage) as ray:
        size = pool_size(ray, workers, threads)
        on_stage(f"{size} workers x {threads} thread(s), {len(units)} windows of up to "
                 f"{len(json.loads(units[0]['chunk'])) if units else 0} prompts")
        timing = Timing(size)
        shipped = ship_export(ray, ref.name, export_dir, variant)
        constructor = {"shipped": shipped, "config": config, "batch_size": batch_size, "truncate": truncate,
                       "stops": stops or [], "threads": threads, "device": device}
        done = 0
        for unit, payload in run_on_pool(ray, units, BatchWorker, constructor, size, threads):
            timing.add(payload)
            for message in payload["warnings"]:
                on_warning(message)
            if payload["error"]:
                kept = f"; the {skip + done} results before it are in {output_file}, continue with --resume" \
                    if output_file else ""
                raise UsageError(f"line {payload['error']['line']} of {prompt_file}: "
                                 f"{payload['error']['message']}{kept}")
            ordinal = units[unit]["first"]
            for row in payload["records"]:
                if ordinal >= skip:
                    write_record(out, format_record(fmt, row, header=(fmt == "csv" and not has_records)))
                    has_records = True
                    done += 1
                ordinal += 1
            progress(len(payload["records"]) - max(0, skip - units[unit]["first"]))
    return done, timing.summary(done, "prompts")


def _with_ordinals(first: int, windows):
    for chunk in windows:
        yield first, chunk
        first += len(chunk)
