"""Start or join the Ray cluster a run uses, with one clear line when that cannot be done."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from typing import Callable, Iterator

from chatbot_llm.errors import ChatbotError, UsageError

LOCAL = "local"  # --ray with no address: a Ray instance started for this run and stopped after it
CONNECT_TIMEOUT_S = 5.0
# Environment variables a worker needs to behave as the driver does (a test's fault injection).
FORWARDED_ENV = ("CHATBOT_LLM_RAY_FAULT",)


def keep_ray_on_loopback() -> None:
    """A Ray instance started on this machine for one run (or a test) listens on 127.0.0.1 only, not on
    the machine's network address, which Ray picks by default. Must run before ray is imported: Ray
    reads it then (the switch is named for Windows and macOS, where loopback is Ray's default)."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UsageError("--ray needs Ray Data: pip install 'chatbot-llm[ray]'") from None
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    """host and port of an address to check before Ray is asked (Ray itself waits a minute or more)."""
    if address == "auto":
        return None
    bare = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = bare.rpartition(":")
    if not sep or not host or not port.isdigit() or "/" in bare:
        raise UsageError(f"--ray {address!r} is not an address; give auto, HOST:PORT or ray://HOST:PORT, "
                         "or --ray alone to start Ray on this machine")
    return host, int(port)


def check_reachable(address: str) -> None:
    """A malformed address (UsageError) or one where nothing answers (ChatbotError), in seconds, not minutes."""
    if address == LOCAL:
        return
    target = _host_port(address)
    if target is None:
        return
    try:
        socket.create_connection(target, timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise ChatbotError(f"cannot reach the Ray cluster at {address} ({reason} within {CONNECT_TIMEOUT_S:.0f} s); "
                           "start one with: ray start --head, and pass the address it prints") from None


def _quiet() -> None:
    """Ray's own log lines are not the user's business unless something goes wrong."""
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    for name in ("ray", "ray.data", "ray._private", "ray.data._internal"):
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """Ray's C++ core prints a line or two on file descriptor 2 as it starts, whatever the log level."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def ray_cluster(address: str, on_stage: Callable[[str], None] = lambda m: None) -> Iterator[object]:
    """ray, connected to the cluster at address (or a local instance for LOCAL), shut down after."""
    if address == LOCAL:
        keep_ray_on_loopback()
    ray = import_ray()
    _quiet()
    check_reachable(address)
    already = ray.is_initialized()  # a caller (a test, a notebook) already holds a connection
    if not already:
        if address == LOCAL:
            on_stage("starting a local Ray instance")
            kwargs = {"address": "local"}  # a new instance, even where a cluster is already running
        else:
            on_stage(f"joining the Ray cluster at {address}")
            kwargs = {"address": address}
        try:
            with _stderr_silenced():
                ray.init(include_dashboard=False if address == LOCAL else None, log_to_driver=False,
                         logging_level=logging.ERROR, configure_logging=True, **kwargs)
        except Exception as exc:  # ConnectionError, an auth refusal, a version mismatch: Ray's own types
            raise ChatbotError(f"cannot join the Ray cluster at {address}: {_why(exc)}") from None
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # results come back in prompt-file order
    context.enable_progress_bars = False  # the command draws its own bar over the whole job
    context.print_on_execution_start = False
    try:
        yield ray
    finally:
        if not already:
            ray.shutdown()


def _why(exc: BaseException) -> str:
    """The reason in Ray's chain of exceptions, put the way a user can act on."""
    chain, seen = [], exc
    while seen is not None and len(chain) < 5:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    text = " ".join(str(e) for e in chain)
    if "AuthenticationError" in text or "InvalidAuthToken" in text:
        return ("the cluster wants its auth token; set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or "
                "~/.ray/auth_token) as on the cluster, or use --ray auto on one of its machines")
    last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return last


def pool_size(ray, workers: int | None, threads: int) -> int:
    """Actors to start: --workers, or as many as the cluster's CPUs hold at --threads each; never
    more than fit, since an actor pool that cannot be placed waits forever."""
    cpus = int(ray.cluster_resources().get("CPU", 0))
    fit = cpus // threads
    if fit < 1:
        raise UsageError(f"the Ray cluster has {cpus} CPUs; one worker at --threads {threads} needs {threads}")
    if workers is None:
        return fit
    if workers > fit:
        raise UsageError(f"--workers {workers} x --threads {threads} needs {workers * threads} CPUs; "
                         f"the Ray cluster has {cpus} (at most --workers {fit})")
    return workers


def worker_env() -> dict[str, str]:
    return {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}
