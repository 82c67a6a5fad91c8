"""The job itself: units of work as a Ray Dataset, map_batches over an actor pool, results back in order."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

from chatbot_llm.scale.cluster import worker_env


@dataclass
class Timing:
    """Where a run's time went, from what the workers report and the driver's clock."""

    workers: int
    started: float = field(default_factory=time.perf_counter)
    units: int = 0
    load_seconds: float = 0.0  # summed over actors (restarted ones included)
    work_seconds: float = 0.0  # generating, summed over actors
    actors: set = field(default_factory=set)
    startup_seconds: float | None = None  # until the first result: actors started, models loaded

    def add(self, payload: dict[str, Any]) -> None:
        if self.startup_seconds is None:
            self.startup_seconds = time.perf_counter() - self.started
        self.units += 1
        self.load_seconds += payload["load_seconds"]
        self.work_seconds += payload["work_seconds"]
        self.actors.add(payload["worker"])

    @property
    def wall_seconds(self) -> float:
        return time.perf_counter() - self.started

    def summary(self, done: int, what: str) -> str:
        wall = self.wall_seconds
        busy = self.workers * wall
        rest = max(0.0, busy - self.load_seconds - self.work_seconds)
        restarts = max(0, len(self.actors) - self.workers)
        startup = self.startup_seconds or 0.0
        # after the first result every actor is up: what is not generating then is Ray's cost per batch
        steady = max(0.0, self.workers * (wall - startup) - self.work_seconds) / max(1, self.units)
        return (f"ray: {self.workers} workers{f' ({restarts} restarted)' if restarts else ''}, "
                f"{done} {what} in {wall:.1f} s = {done / wall if wall else 0:.2f} {what}/s; "
                f"of {busy:.1f} worker-seconds: loading {self.load_seconds:.1f}, generating {self.work_seconds:.1f}, "
                f"Ray (start, scheduling, transfer, idle) {rest:.1f}; first result after {startup:.1f} s, "
                f"then ~{steady * 1000:.0f} ms of Ray per batch of work")


def run_on_pool(ray, units: list[dict[str, Any]], worker_class: type, constructor_kwargs: dict[str, Any],
                workers: int, threads: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """(unit, the worker's payload) for each unit, in the order of `units`.

    An actor that dies has its batches retried on a new actor (max_restarts/max_task_retries), and
    the driver's ordered stream takes each unit's result once: nothing is lost or written twice.
    """
    dataset = ray.data.from_items(units)
    mapped = dataset.map_batches(
        worker_class,
        batch_size=1,  # one unit per call: a window of prompts or a sweep cell is already a batch
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
        fn_constructor_kwargs=constructor_kwargs,
        num_cpus=threads,
        # No max_restarts/max_task_retries here: Ray Data's actor pools default to restarting a dead
        # actor and retrying its tasks without limit (ActorPoolMapOperator._apply_default_remote_args),
        # and passing them as remote args is deprecated in 2.60. tests/test_ray.py kills an actor.
        runtime_env={"env_vars": worker_env()} if worker_env() else None,
    )
    for row in mapped.iter_rows():
        yield int(row["unit"]), json.loads(row["payload"])
