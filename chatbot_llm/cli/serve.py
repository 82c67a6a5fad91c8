"""serve and logs: the OpenAI-compatible HTTP server, and the history it (and chat) writes."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import click

from chatbot_llm.cli.app import cli, device_option, err, generation_options, split_generation_args, stage, warn
from chatbot_llm.cli.dialogue import history_options, template_option
from chatbot_llm.errors import UsageError
from chatbot_llm.models import DEFAULT_MODEL, DEFAULT_VARIANT, VARIANTS


@cli.command()
@click.option("--model", "-m", "models", multiple=True, default=(DEFAULT_MODEL,), show_default=True,
              help="A known name (dream, email), a checkpoint folder or an export folder; repeat to serve several "
                   "(each request's model field picks one).")
@click.option("--variant", type=click.Choice(VARIANTS), help=f"Default: {DEFAULT_VARIANT} on the CPU, fp16 on CUDA.")
@device_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback is reachable from other machines.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--api-key", envvar="CHATBOT_LLM_API_KEY",
              help="Require this key (Authorization: Bearer KEY) on /v1, the page and its history "
                   "[env: CHATBOT_LLM_API_KEY].")
@click.option("--max-batch", type=click.IntRange(min=1), default=32, show_default=True,
              help="Rows generated together at most; more requests wait in the queue.")
@click.option("--lanes", type=click.IntRange(min=1), metavar="N",
              help="Worker threads that step batches side by side, each with its share of --max-batch (default: 2 "
                   "on the CPU where there are 2 or more cores, so one lane's forward pass runs while the other "
                   "is in Python; 1 on CUDA).")
@click.option("--max-queue", type=click.IntRange(min=1), default=256, show_default=True,
              help="Rows waiting at most; beyond it a request gets 503 with Retry-After.")
@click.option("--stream-interval", type=click.IntRange(min=0), default=0, show_default=True, metavar="MS",
              help="A stream's text waits up to MS milliseconds to go out with the next tokens' (fewer, larger "
                   "events under load); 0 sends every token's text at once. First text and the end go at once.")
@click.option("--max-body", type=click.IntRange(min=1024), default=1 << 20, show_default=True,
              help="Largest request body in bytes (413 beyond).")
@template_option
@history_options
@generation_options
def serve(models: tuple[str, ...], variant: str | None, device: str, host: str, port: int, api_key: str | None,
          max_batch: int, lanes: int | None, max_queue: int, stream_interval: int, max_body: int, template: str | None, log_db: Path | None, no_log: bool,
          **kwargs: Any) -> None:
    """Serve models over the OpenAI API (/v1/completions, /v1/chat/completions, /v1/models), with a chat page at /.

    The generation options are the server's defaults: a request's own fields win over them, then
    the model's generation_config.json, then the seed's defaults.
    """
    try:
        import uvicorn

        from chatbot_llm.serve.app import Limits, ServedModel, ServerSettings, create_app
        from chatbot_llm.serve.scheduler import Scheduler
    except ImportError as exc:
        raise UsageError(f"serve needs the [serve] extra ({exc.name} is missing): pip install 'chatbot-llm[serve]'") \
            from None
    from chatbot_llm.cli.app import resolve_generation_config
    from chatbot_llm.history import open_history
    from chatbot_llm.models import default_variant, load_text_generator, model_defaults, resolve_model
    from chatbot_llm.templates import DEFAULT_TEMPLATE, load_template

    generation_args = split_generation_args(kwargs)
    chat_template = load_template(template)
    history = open_history(log_db, no_log)
    refs = [resolve_model(m) for m in dict.fromkeys(models)]
    names = [ref.name for ref in refs]
    if len(set(names)) < len(names):
        raise UsageError(f"two --model values share the name {max(names, key=names.count)!r}; "
                         "serve folders with different names")
    defaults = {ref.name: resolve_generation_config(model_defaults(ref), dict(generation_args)) for ref in refs}
    _check_port(host, port)
    variant = variant or default_variant(device)
    lanes, threads = _lanes_and_threads(lanes, device, max_batch)
    served = {}
    for ref in refs:
        with err.status(f"preparing {ref.name} (onnx, {variant})"):
            # no busy-waiting threads: the event loop and the clients' connections need the cores too
            tg = load_text_generator(ref, "onnx", variant, on_stage=stage, on_warning=warn, device=device,
                                     threads=threads, spinning=False)
        served[ref.name] = ServedModel(ref.name, tg, defaults[ref.name])
    settings = ServerSettings(served, Scheduler(max_batch=max_batch, max_queue=max_queue,
                                                  stream_interval=stream_interval / 1000, lanes=lanes), chat_template,
                              template or DEFAULT_TEMPLATE, api_key, history, Limits(max_body_bytes=max_body))
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        warn(f"listening on {host} without --api-key: anyone who can reach this machine can use the models")
    err.print(f"serving {', '.join(served)} at http://{host}:{port}/ (OpenAI API under /v1; "
              f"history: {'off' if history is None else history.path}); Ctrl-C stops")
    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)


def _lanes_and_threads(lanes: int | None, device: str, max_batch: int) -> tuple[int, int | None]:
    """The scheduler's lanes, and onnxruntime's intra-op threads (None: its default) for the one
    session per model that the lanes share. Two lanes' passes at once run on their own two threads
    and share the pool's others: cores - lanes + 1 threads keep every core busy and none
    oversubscribed (on 2 cores: 1, each lane's pass on its own thread)."""
    import onnxruntime as ort

    from chatbot_llm.runtime.device import CUDA, default_threads

    cores = default_threads()
    on_cpu = device == "cpu" or (device == "auto" and CUDA not in ort.get_available_providers())
    if lanes is None:
        lanes = 2 if on_cpu and cores >= 2 and max_batch >= 2 else 1
    if lanes > max_batch:
        raise UsageError(f"--lanes {lanes} is more than --max-batch {max_batch}: each lane needs a row at least")
    return lanes, (max(1, cores - lanes + 1) if lanes > 1 else None)


def _check_port(host: str, port: int) -> None:
    """A taken port is one clear line, before minutes of loading."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UsageError(f"--host {host} is not an address here: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port") from None


@cli.command()
@click.option("-n", "--count", type=click.IntRange(min=1), default=10, show_default=True,
              help="How many exchanges (the newest).")
@click.option("-q", "--query", help="Full-text search of prompts and replies (SQLite FTS5 syntax: words, \"a phrase\", "
                                    "OR, prefix*).")
@click.option("-m", "--model", help="Only this model's exchanges.")
@click.option("--conversation", "-c", help="Only this conversation's exchanges.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, with every field.")
@click.option("--log-db", type=click.Path(dir_okay=False, path_type=Path),
              help="The SQLite history to read (default: history.db in the project root).")
def logs(count: int, query: str | None, model: str | None, conversation: str | None, as_json: bool,
         log_db: Path | None) -> None:
    """List and search the history of exchanges (serve, chat, batch --log), oldest of the N first."""
    from chatbot_llm.history import History, default_db_path, iter_jsonl

    path = log_db or default_db_path()
    if not path.exists():
        raise UsageError(f"no history at {path} yet: serve and chat write it (unless --no-log)")
    exchanges = list(reversed(History(path).search(count, query, model, conversation)))
    if as_json:
        for line in iter_jsonl(exchanges):
            click.echo(line)
        return
    if not exchanges:
        err.print("no exchanges match")
    for e in exchanges:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.time))
        click.echo(f"# {when}  {e.model}{'/' + e.variant if e.variant else ''}  {e.source}  "
                   f"conversation {e.conversation}  {e.completion_tokens} tokens, {e.seconds:.2f} s, {e.finish_reason}")
        click.echo(f"You: {e.prompt}")
        click.echo(f"Bot: {e.response}\n")

