"""The HTTP app: OpenAI's /v1 routes over the scheduler, the chat page, and its history routes.

The event loop only parses, checks and forwards: rows go to the Scheduler's worker thread, and
their text comes back through an asyncio.Queue per request, so a forward pass never blocks another
request's I/O. The worker hands a step's events to the loop through one Mailbox: one wake-up of the
loop for all the rows of a step, not one per token.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from chatbot_llm.config import GenerationConfig
from chatbot_llm.history import Exchange, History, new_conversation_id
from chatbot_llm.runtime.textgen import valid_text
from chatbot_llm.serve import protocol
from chatbot_llm.serve.protocol import ApiError, ChatRequest, CompletionRequest
from chatbot_llm.serve.scheduler import QueueFull, Row, RowEvent, Scheduler
from chatbot_llm.templates import ChatTemplate, TemplateError

KEY_COOKIE = "chatbot_llm_key"
STATIC_FILES = {"app.js": "text/javascript", "style.css": "text/css"}


class Mailbox:
    """Events from the worker thread to the event loop's queues. The first event after a delivery
    wakes the loop (call_soon_threadsafe writes to its self-pipe); the rest of the step's events ride
    along, so a step of 32 rows costs one wake-up instead of 32."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[asyncio.Queue, RowEvent]] = []

    def post(self, queue: asyncio.Queue, event: RowEvent) -> None:  # on the worker thread
        with self._lock:
            self._pending.append((queue, event))
            wake = len(self._pending) == 1
        if wake:
            self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:  # on the loop
        with self._lock:
            pending, self._pending = self._pending, []
        for queue, event in pending:
            queue.put_nowait(event)


_mailboxes: dict[asyncio.AbstractEventLoop, Mailbox] = {}


def mailbox() -> Mailbox:
    """The running loop's Mailbox."""
    loop = asyncio.get_running_loop()
    if loop not in _mailboxes:
        for old in [old for old in _mailboxes if old.is_closed()]:  # a test's server that stopped
            del _mailboxes[old]
        _mailboxes[loop] = Mailbox(loop)
    return _mailboxes[loop]


@dataclass
class ServedModel:
    name: str
    text_generator: Any  # chatbot_llm.runtime.textgen.TextGenerator on the onnx backend
    defaults: GenerationConfig  # the server's command line > generation_config.json > the seed's


@dataclass
class Limits:
    max_body_bytes: int = 1 << 20
    max_tokens: int | None = None  # None: the model's context


@dataclass
class ServerSettings:
    models: dict[str, ServedModel]
    scheduler: Scheduler
    template: ChatTemplate
    template_name: str
    api_key: str | None = None
    history: History | None = None
    limits: Limits = field(default_factory=Limits)


def create_app(settings: ServerSettings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_app):
        settings.scheduler.start()
        yield
        settings.scheduler.stop()

    app = FastAPI(title="chatbot-llm", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings

    @app.exception_handler(ApiError)
    async def api_error(_request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(ApiError(exc.status_code, str(exc.detail), kind).body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def internal_error(_request, exc: Exception):
        return JSONResponse(ApiError(500, f"internal error: {type(exc).__name__}: {exc}", "server_error").body(),
                            status_code=500)

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": list(settings.models), **settings.scheduler.stats()}

    @app.get("/v1/models")
    async def list_models(request: Request):
        _authorize(request, settings)
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "chatbot-llm"} for name in settings.models]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        _authorize(request, settings)
        body = protocol.parse(CompletionRequest, await _read_json(request, settings.limits))
        served = _model(body.model, settings)
        prompts = [valid_text(p) for p in body.prompts()]
        return await _respond(request, settings, served, body, prompts, prompts, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        _authorize(request, settings)
        body = protocol.parse(ChatRequest, await _read_json(request, settings.limits))
        served = _model(body.model, settings)
        try:
            template = ChatTemplate(body.chat_template, "chat_template") if body.chat_template else settings.template
            rendered = valid_text(template.render(body.message_dicts()))
        except TemplateError as exc:
            raise ApiError(400, str(exc), param="chat_template" if body.chat_template else "messages",
                           code="invalid_template") from None
        users = [m.text() for m in body.messages if m.role == "user"]
        return await _respond(request, settings, served, body, [rendered], [users[-1] if users else rendered],
                              chat=True)

    # ------------------------------------------------------------ the page and its history

    @app.get("/", response_class=HTMLResponse)
    async def page(request: Request, key: str | None = None):
        if settings.api_key and key is not None and _same(key, settings.api_key):
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(KEY_COOKIE, key, httponly=True, samesite="strict")
            return response
        if settings.api_key and not _has_key(request, settings.api_key):
            return HTMLResponse(_LOGIN_PAGE, status_code=401)
        return HTMLResponse(_static("index.html"))

    @app.get("/static/{name}")
    async def static(request: Request, name: str):
        _authorize(request, settings)
        if name not in STATIC_FILES:
            raise ApiError(404, f"no static file {name}", "not_found_error")
        return Response(_static(name), media_type=STATIC_FILES[name])

    @app.get("/api/conversations")
    async def conversations(request: Request, limit: int = 50):
        _authorize(request, settings)
        if settings.history is None:
            return {"data": [], "logging": False}
        return {"data": await asyncio.to_thread(settings.history.conversations, limit), "logging": True}

    @app.get("/api/conversations/{conversation}")
    async def conversation(request: Request, conversation: str):
        _authorize(request, settings)
        exchanges = await asyncio.to_thread(settings.history.conversation, conversation) if settings.history else []
        if not exchanges:
            raise ApiError(404, f"no conversation {conversation}", "not_found_error", code="conversation_not_found")
        return {"id": conversation, "exchanges": [e.to_dict() for e in exchanges]}

    return app


# ---------------------------------------------------------------- one generation request

async def _respond(request: Request, settings: ServerSettings, served: ServedModel, body, prompts: list[str],
                   shown_prompts: list[str], chat: bool):
    tg = served.text_generator
    config = body.config(served.defaults, settings.limits.max_tokens or tg.context_length)
    encoded = []
    for i, prompt in enumerate(prompts):
        ids = tg.tokenizer.encode(prompt).ids or [tg.eos_token_id]
        if len(ids) >= tg.context_length:
            raise ApiError(400, f"prompt{'' if len(prompts) == 1 else f' {i}'} is {len(ids)} tokens; the model's "
                                f"context is {tg.context_length} tokens, and the reply needs room in it",
                           param="messages" if chat else "prompt", code="context_length_exceeded")
        encoded.append(ids)
    queue: asyncio.Queue[RowEvent] = asyncio.Queue()
    post = mailbox().post

    def deliver(event: RowEvent) -> None:  # called on the worker thread
        post(queue, event)

    rows = [Row(tg, ids, config, index=p * body.n + c, stream_key=c, stops=body.stop or [], deliver=deliver)
            for p, ids in enumerate(encoded) for c in range(body.n)]
    if len(rows) > settings.scheduler.max_queue:  # it would never fit: not worth a retry
        raise ApiError(400, f"this request asks for {len(rows)} rows (prompts x n); the server queues at most "
                            f"{settings.scheduler.max_queue}", param="n", code="too_many_rows")
    try:
        settings.scheduler.submit(rows)
    except QueueFull as exc:
        raise ApiError(503, f"the server is busy: {exc}; retry shortly", "server_error", code="queue_full",
                       headers={"Retry-After": "1"}) from None
    exchange = _ExchangeLog(settings, served, body, config, prompts, shown_prompts, encoded, chat)
    if body.stream:
        return StreamingResponse(_stream(settings, rows, queue, exchange, body, served.name, chat),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    texts = [""] * len(rows)
    finished: dict[int, RowEvent] = {}
    collect = asyncio.ensure_future(_collect(queue, texts, finished, len(rows)))
    watch = asyncio.ensure_future(_until_disconnected(request))
    try:
        await asyncio.wait({collect, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not collect.done():  # the client went away: stop its rows
            collect.cancel()
            settings.scheduler.cancel(rows)
    if not collect.done() or collect.cancelled():
        return Response(status_code=499)
    _raise_row_error(finished)
    await exchange.write(texts, finished)
    make = protocol.chat_choice if chat else protocol.completion_choice
    choices = [make(i, texts[i], finished[i].finish_reason) for i in range(len(rows))]
    return protocol.envelope("chat.completion" if chat else "text_completion", protocol.new_id(
        "chatcmpl" if chat else "cmpl"), served.name, choices, usage=exchange.usage(finished),
        conversation_id=exchange.conversation)


async def _collect(queue, texts: list[str], finished: dict[int, RowEvent], count: int) -> None:
    while len(finished) < count:
        event = await queue.get()
        texts[event.index] += event.text
        if event.finish_reason:
            finished[event.index] = event


async def _ready(queue: asyncio.Queue) -> list[RowEvent]:
    """The next event and every other one already waiting."""
    events = [await queue.get()]
    while not queue.empty():
        events.append(queue.get_nowait())
    return events


async def _until_disconnected(request: Request) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(0.25)


def _raise_row_error(finished: dict[int, RowEvent]) -> None:
    for event in finished.values():
        if event.finish_reason.startswith("error:"):
            raise ApiError(500, f"generation failed: {event.finish_reason[6:]}", "server_error")


async def _stream(settings: ServerSettings, rows: list[Row], queue, exchange: "_ExchangeLog", body, model: str,
                  chat: bool) -> AsyncIterator[str]:
    response_id = protocol.new_id("chatcmpl" if chat else "cmpl")
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(choices: list[dict], **extra) -> str:
        return "data: " + json.dumps(protocol.envelope(kind, response_id, model, choices, **extra)) + "\n\n"

    def choice(index: int, text: str | None, finish: str | None) -> dict:
        if chat:
            return protocol.chat_delta(index, {} if text is None else {"content": text}, finish)
        return protocol.completion_choice(index, text or "", finish)

    texts = [""] * len(rows)
    finished: dict[int, RowEvent] = {}
    try:
        if chat:
            for row in rows:
                yield chunk([protocol.chat_delta(row.index, {"role": "assistant", "content": ""}, None)])
        failed = False
        while len(finished) < len(rows) and not failed:
            out = []
            for event in await _ready(queue):  # under load several deltas wait: one write for them all
                if event.finish_reason and event.finish_reason.startswith("error:"):
                    error = ApiError(500, f"generation failed: {event.finish_reason[6:]}", "server_error")
                    out.append("data: " + json.dumps(error.body()) + "\n\n")
                    settings.scheduler.cancel(rows)
                    failed = True
                    break
                texts[event.index] += event.text
                if event.text:
                    out.append(chunk([choice(event.index, event.text, None)]))
                if event.finish_reason:
                    finished[event.index] = event
                    out.append(chunk([choice(event.index, None if chat else "", event.finish_reason)]))
            yield "".join(out)
        if not failed:
            await exchange.write(texts, finished)
            if body.include_usage():
                yield chunk([], usage=exchange.usage(finished))
        yield "data: [DONE]\n\n"
    finally:
        if len(finished) < len(rows):  # the client went away (or the stream failed): stop its rows
            settings.scheduler.cancel(rows)


class _ExchangeLog:
    """What the history keeps of one request: one exchange per choice."""

    def __init__(self, settings, served, body, config, prompts, shown_prompts, encoded, chat):
        self.settings, self.served, self.body, self.config = settings, served, body, config
        self.prompts, self.shown, self.encoded, self.chat = prompts, shown_prompts, encoded, chat
        self.conversation = body.conversation_id or new_conversation_id()
        self.prompt_tokens = sum(len(ids) for ids in encoded) * body.n

    def usage(self, finished: dict[int, RowEvent]) -> dict[str, int]:
        return protocol.usage(self.prompt_tokens, sum(e.completion_tokens for e in finished.values()))

    async def write(self, texts: list[str], finished: dict[int, RowEvent]) -> None:
        history = self.settings.history
        if history is None:
            return
        params = {**self.config.to_dict(), "stop": self.body.stop or [], "n": self.body.n,
                  "endpoint": "chat/completions" if self.chat else "completions"}
        if self.chat:
            params["template"] = "request" if getattr(self.body, "chat_template", None) else self.settings.template_name
        n = self.body.n
        exchanges = [Exchange(conversation=self.conversation, source="serve", model=self.served.name,
                              variant=self.served.text_generator.variant, prompt=self.shown[i // n],
                              rendered_prompt=self.prompts[i // n], response=texts[i], params=params,
                              prompt_tokens=len(self.encoded[i // n]), completion_tokens=e.completion_tokens,
                              finish_reason=e.finish_reason, seconds=round(e.seconds, 4))
                     for i, e in sorted(finished.items())]
        await asyncio.to_thread(history.add, *exchanges)


# ---------------------------------------------------------------- checks

async def _read_json(request: Request, limits: Limits) -> Any:
    too_big = ApiError(413, f"the request body is larger than {limits.max_body_bytes} bytes",
                       code="request_too_large")
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limits.max_body_bytes:
        raise too_big
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limits.max_body_bytes:
            raise too_big
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None


def _model(name: str | None, settings: ServerSettings) -> ServedModel:
    if name is None:
        raise ApiError(400, f"model is required; this server has {', '.join(settings.models)}", param="model",
                       code="missing_model")
    if name not in settings.models:
        raise ApiError(404, f"the model {name!r} does not exist here; this server has "
                            f"{', '.join(settings.models)}", param="model", code="model_not_found")
    return settings.models[name]


def _same(given: str, key: str) -> bool:
    return hmac.compare_digest(given.encode(), key.encode())


def _has_key(request: Request, key: str) -> bool:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer ") and _same(header[7:].strip(), key):
        return True
    cookie = request.cookies.get(KEY_COOKIE)
    return cookie is not None and _same(cookie, key)


def _authorize(request: Request, settings: ServerSettings) -> None:
    if settings.api_key and not _has_key(request, settings.api_key):
        given = "a wrong API key" if request.headers.get("authorization") else "no API key"
        raise ApiError(401, f"this server needs an API key (Authorization: Bearer KEY); the request has {given}",
                       code="invalid_api_key")


def _static(name: str) -> bytes:
    return (resources.files("chatbot_llm") / "serve" / "static" / name).read_bytes()


_LOGIN_PAGE = """<!doctype html><meta charset="utf-8"><title>chatbot-llm</title>
<form method="get" action="/" style="font-family:sans-serif;margin:4em auto;max-width:20em">
<p>This server needs its API key.</p><input name="key" type="password" autofocus placeholder="API key">
<button>Open</button></form>"""
