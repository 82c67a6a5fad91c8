"""chatbot-llm serve: a real server on a free loopback port, driven by the openai package and raw HTTP.

One server (module scope) serves the tiny checkpoint with an API key, small limits and a history
file; each test talks to it as a client would.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, run_cli

openai = pytest.importorskip("openai")

KEY = "sk-test-key"
CONTEXT = 64  # the tiny checkpoint's n_positions


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, url: str, process: subprocess.Popen, history: Path, model: str):
        self.url, self.process, self.history, self.model = url, process, history, model

    def client(self, **kwargs) -> "openai.OpenAI":
        return openai.OpenAI(base_url=self.url + "/v1", api_key=KEY, max_retries=0, **kwargs)

    def post(self, path: str, body=None, key: str | None = KEY, **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        if body is not None and not isinstance(body, (bytes, str)):
            kwargs["json"] = body
        elif body is not None:
            kwargs["content"] = body
        return httpx.post(self.url + path, headers={**headers, **kwargs.pop("headers", {})}, timeout=60, **kwargs)


def start_server(args: list[str], log: Path) -> tuple[str, subprocess.Popen]:
    port = free_port()
    out = open(log, "w")
    process = subprocess.Popen([sys.executable, "-m", "chatbot_llm", "serve", "--port", str(port), *args],
                               cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"serve exited with {process.returncode}: {log.read_text()}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return url, process
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"serve did not start: {log.read_text()}")


@pytest.fixture(scope="module")
def server(tiny_checkpoint, exports, tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    history = folder / "history.db"
    url, process = start_server(
        ["--model", str(tiny_checkpoint), "--api-key", KEY, "--max-new-tokens", "8", "--max-batch", "32", "--lanes", "2",
         "--max-queue", "40", "--max-body", "4096", "--log-db", str(history)], folder / "serve.log")
    yield Server(url, process, history, tiny_checkpoint.name)
    process.terminate()
    process.wait(timeout=30)


# ---------------------------------------------------------------- the openai package

def test_models_lists_the_served_model(server):
    assert [m.id for m in server.client().models.list().data] == [server.model]


def test_a_completion_has_text_a_finish_reason_and_usage(server):
    response = server.client().completions.create(model=server.model, prompt="Hello there", max_tokens=5,
                                                  temperature=0)
    choice = response.choices[0]
    assert response.object == "text_completion" and choice.text
    assert choice.finish_reason in ("stop", "length")
    assert response.usage.prompt_tokens == 2 and response.usage.completion_tokens <= 5
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_the_server_defaults_apply_and_a_request_wins_over_them(server):
    client = server.client()
    default = client.completions.create(model=server.model, prompt="one two three", temperature=0)
    short = client.completions.create(model=server.model, prompt="one two three", temperature=0, max_tokens=3)
    assert default.choices[0].finish_reason == "length" and default.usage.completion_tokens == 8  # --max-new-tokens 8
    assert short.usage.completion_tokens == 3


def test_a_streamed_completion_is_the_same_text_as_an_unstreamed_one(server):
    client = server.client()
    whole = client.completions.create(model=server.model, prompt="The dream was", max_tokens=8, temperature=0)
    chunks = list(client.completions.create(model=server.model, prompt="The dream was", max_tokens=8, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text == whole.choices[0].text and len([c for c in chunks if c.choices and c.choices[0].text]) > 1
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens and not chunks[-1].choices


def test_chat_streamed_and_not_renders_one_message_as_the_prompt_itself(server):
    client = server.client()
    messages = [{"role": "user", "content": "I was flying"}]
    chat = client.chat.completions.create(model=server.model, messages=messages, max_tokens=6, temperature=0)
    plain = client.completions.create(model=server.model, prompt="I was flying", max_tokens=6, temperature=0)
    assert chat.object == "chat.completion" and chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content == plain.choices[0].text  # the plain template: the text as typed
    stream = list(client.chat.completions.create(model=server.model, messages=messages, max_tokens=6, temperature=0,
                                                 stream=True))
    assert stream[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in stream) == chat.choices[0].message.content
    assert stream[-1].choices[0].finish_reason == chat.choices[0].finish_reason


def test_n_2_gives_two_choices_and_a_seed_repeats_them(server):
    client = server.client()
    ask = dict(model=server.model, prompt="Last night I", max_tokens=8, n=2, seed=7, temperature=1.0)
    first, again = client.completions.create(**ask), client.completions.create(**ask)
    texts = [c.text for c in sorted(first.choices, key=lambda c: c.index)]
    assert [c.index for c in first.choices] == [0, 1] and texts[0] != texts[1]
    assert texts == [c.text for c in sorted(again.choices, key=lambda c: c.index)]
    other_seed = client.completions.create(**{**ask, "seed": 8})
    assert [c.text for c in other_seed.choices] != texts


def test_stop_cuts_the_text_before_a_string_that_spans_tokens(server):
    client = server.client()
    full = client.completions.create(model=server.model, prompt="Hello there", max_tokens=8, temperature=0)
    text = full.choices[0].text
    words = text.split(" ")
    assert len(words) >= 3, text
    stop = words[1][-2:] + " " + words[2][:2]  # across a token boundary
    cut = client.completions.create(model=server.model, prompt="Hello there", max_tokens=8, temperature=0, stop=[stop])
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model=server.model, prompt="Hello there", max_tokens=8, temperature=0,
                                         stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == text[: text.index(stop)]


def test_a_seeded_request_gives_the_same_text_alone_or_alongside_31_others(server):
    async def run() -> tuple[str, list[str]]:
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
        ask = dict(model=server.model, max_tokens=8, temperature=1.0, seed=123, extra_body={"top_k": 0})
        alone = (await client.completions.create(prompt="I dreamt of a red", **ask)).choices[0].text
        # same settings and token length: these share its Generator; the odd ones differ in seed or length
        colours = ["blue", "green", "black", "white", "small", "big", "old", "new"]
        others = [(f"I dreamt of a {colours[i % 8]}", 123) if i % 2 else (f"prompt number {i} is here", i)
                  for i in range(31)]
        together = await asyncio.gather(
            client.completions.create(prompt="I dreamt of a red", **ask),
            *[client.completions.create(prompt=p, **{**ask, "seed": seed}) for p, seed in others])
        return alone, [r.choices[0].text for r in together]

    alone, together = asyncio.run(run())
    assert together[0] == alone
    assert httpx.get(server.url + "/health").json()["lanes"] == 2  # the 32 rows ran in two lanes


# ---------------------------------------------------------------- the scheduler

def test_a_cancelled_row_stops_and_the_rows_beside_it_carry_on(exports):
    from chatbot_llm.config import GenerationConfig
    from chatbot_llm.models import load_text_generator
    from chatbot_llm.serve.scheduler import Row, Scheduler

    tg = load_text_generator(str(exports["opt"]))  # the export folder itself
    scheduler = Scheduler(max_batch=4)
    events: dict[int, list] = {0: [], 1: []}
    config = GenerationConfig(max_new_tokens=40, do_sample=False)
    rows: list[Row] = []

    def deliver(event):
        events[event.index].append(event)
        if event.index == 0 and len(events[0]) == 1:
            scheduler.cancel([rows[0]])  # the client of row 0 went away after its first token

    rows += [Row(tg, tg.tokenizer.encode("a b").ids, config, index=i, stream_key=0, stops=[], deliver=deliver)
             for i in range(2)]
    scheduler.start()
    try:
        scheduler.submit(rows)
        deadline = time.time() + 30
        while not (events[1] and events[1][-1].finish_reason) and time.time() < deadline:
            time.sleep(0.01)
    finally:
        scheduler.stop()
    assert events[1][-1].finish_reason in ("stop", "length") and events[1][-1].completion_tokens > 3
    assert len(events[0]) <= 2 and not any(e.finish_reason for e in events[0])  # stopped, never finished
    assert scheduler.stats()["live_rows"] == 0


def test_a_client_that_disconnects_mid_stream_leaves_the_server_answering(server):
    with httpx.stream("POST", server.url + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": server.model, "prompt": "Hello", "max_tokens": 50, "stream": True}) as r:
        next(r.iter_lines())
    time.sleep(0.3)
    assert httpx.get(server.url + "/health").json()["live_rows"] == 0
    assert server.post("/v1/completions", {"model": server.model, "prompt": "Hello", "max_tokens": 2}).status_code == 200


# ---------------------------------------------------------------- bad input: the OpenAI error shape

GOOD = {"prompt": "Hello", "max_tokens": 2}
ERRORS = {
    # id: (path, body (None: GOOD), key, status, code or fragment)
    "malformed-json": ("/v1/completions", b'{"model": ', KEY, 400, "invalid_json"),
    "unknown-model": ("/v1/completions", {**GOOD, "model": "no-such-model"}, KEY, 404, "model_not_found"),
    "max-tokens-zero": ("/v1/completions", {**GOOD, "max_tokens": 0}, KEY, 400, "max_tokens"),
    "max-tokens-too-large": ("/v1/completions", {**GOOD, "max_tokens": 100_000}, KEY, 400, "max_tokens_too_large"),
    "top-p-zero": ("/v1/completions", {**GOOD, "top_p": 0}, KEY, 400, "top_p"),
    "temperature-negative": ("/v1/completions", {**GOOD, "temperature": -0.5}, KEY, 400, "temperature"),
    "prompt-longer-than-context": ("/v1/completions", {**GOOD, "prompt": "dream " * 100}, KEY, 400,
                                   "context_length_exceeded"),
    "key-wrong": ("/v1/completions", None, "sk-wrong", 401, "invalid_api_key"),
    "key-missing": ("/v1/completions", None, None, 401, "invalid_api_key"),
    "body-too-large": ("/v1/completions", {**GOOD, "prompt": "x" * 5000}, KEY, 413, "request_too_large"),
    "template-invalid": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                                  "chat_template": "{% for m in messages %}"}, KEY, 400,
                         "invalid_template"),
    "too-many-rows": ("/v1/completions", {**GOOD, "prompt": ["a", "b", "c"], "n": 16}, KEY, 400, "too_many_rows"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_bad_requests_get_the_openai_error_shape_and_the_server_goes_on(server, case):
    path, body, key, status, expected = ERRORS[case]
    if isinstance(body, dict):
        body = {"model": server.model, **body}
    response = server.post(path, body if body is not None else {"model": server.model, **GOOD}, key=key)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert expected in (error["code"], error["param"]), error
    assert server.post("/v1/completions", {"model": server.model, **GOOD}).status_code == 200


def test_a_full_queue_answers_503_with_retry_after_and_the_rest_are_served(server):
    """12 requests of 16 rows at once: 32 rows run, 40 wait (--max-queue 40), the rest are turned away."""
    from concurrent.futures import ThreadPoolExecutor

    body = {"model": server.model, "prompt": "Hello", "n": 16, "max_tokens": 50, "temperature": 0}
    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda _: server.post("/v1/completions", body), range(12)))
    busy = [r for r in responses if r.status_code == 503]
    served = [r for r in responses if r.status_code == 200]
    assert busy and served and len(busy) + len(served) == 12
    assert all(r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "queue_full" for r in busy)
    assert all(len(r.json()["choices"]) == 16 for r in served)
    assert server.post("/v1/completions", {"model": server.model, **GOOD}).status_code == 200


def test_the_openai_package_raises_its_own_errors_for_them(server):
    with pytest.raises(openai.NotFoundError):
        server.client().completions.create(model="nope", prompt="hi")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.BadRequestError, match="top_p"):
        server.client().completions.create(model=server.model, prompt="hi", top_p=0)


# ---------------------------------------------------------------- the history

def test_every_exchange_is_in_the_history_and_logs_finds_it(server):
    server.client().chat.completions.create(model=server.model, max_tokens=3,
                                            messages=[{"role": "user", "content": "zebras in the kitchen"}],
                                            extra_body={"conversation_id": "conv-zebra", "top_k": 5})
    result = run_cli("logs", "--log-db", str(server.history), "-q", "zebras", "--json")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 1 and rows[0]["prompt"] == "zebras in the kitchen"
    assert rows[0]["conversation"] == "conv-zebra" and rows[0]["source"] == "serve"
    assert rows[0]["params"]["top_k"] == 5 and rows[0]["params"]["max_new_tokens"] == 3
    assert rows[0]["completion_tokens"] <= 3 and rows[0]["model"] == server.model
    listed = httpx.get(server.url + "/api/conversations", headers={"Authorization": f"Bearer {KEY}"}).json()["data"]
    assert any(c["id"] == "conv-zebra" and c["title"] == "zebras in the kitchen" for c in listed)


# ---------------------------------------------------------------- the page, in headless Chromium

def test_the_page_streams_a_reply_and_lists_it_after_a_reload(server):
    import shutil

    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium on PATH (.ci/run installs it with apt)")
    assert httpx.get(server.url + "/").status_code == 401  # the page needs the key too
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(f"{server.url}/?key={KEY}")  # sets the key cookie, then shows the page
            page.wait_for_selector(f"#model option[value='{server.model}']", state="attached")
            page.click("#params summary")  # the parameters fold away
            page.fill("#max_tokens", "6")
            page.fill("#prompt", "a purple owl sang")
            page.press("#prompt", "Enter")
            reply = page.locator(".message.assistant").last
            page.wait_for_function("document.querySelector('.message.assistant')?.dataset.finishReason")
            assert reply.locator(".text").inner_text().strip()
            assert page.locator(".message.user").first.inner_text() == "a purple owl sang"
            page.reload()
            item = page.locator("#history button", has_text="a purple owl sang")
            item.wait_for()
            item.click()
            page.wait_for_selector(".message.assistant")
            assert page.locator(".message.user").first.inner_text() == "a purple owl sang"
        finally:
            browser.close()


# ---------------------------------------------------------------- the command line

def test_batch_template_and_stop(tiny_checkpoint, exports, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("Hello there\n")
    literal = tmp_path / "q.txt"
    literal.write_text("Question: Hello there Bot:\n")
    greedy = ["--model", str(tiny_checkpoint), "--greedy", "--max-new-tokens", "8", "--format", "jsonl"]
    templated = run_cli("batch", str(prompts), *greedy, "--template", "question")
    by_hand = run_cli("batch", str(literal), *greedy)
    assert templated.returncode == 0, templated.stderr
    row, reference = json.loads(templated.stdout), json.loads(by_hand.stdout)
    assert row["prompt"] == "Hello there" and row["response"] == reference["response"]
    words = row["response"].split(" ")
    stop = words[1][-2:] + " " + words[2][:2]
    stopped = json.loads(run_cli("batch", str(prompts), *greedy, "--template", "question", "--stop", stop).stdout)
    assert stopped["response"] == row["response"][: row["response"].index(stop)].rstrip()
    assert stopped["finish_reason"] == "stop"


def test_chat_logs_each_exchange_and_continue_carries_the_turns(tiny_checkpoint, exports, tmp_path):
    db = tmp_path / "h.db"
    chat = ["chat", "--model", str(tiny_checkpoint), "--greedy", "--max-new-tokens", "4", "--log-db", str(db),
            "--template", "question"]
    first = run_cli(*chat, stdin="the moon\n")
    second = run_cli(*chat, "--continue", stdin="the sun\n")
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    rows = [json.loads(line) for line in run_cli("logs", "--log-db", str(db), "--json").stdout.splitlines()]
    assert [r["prompt"] for r in rows] == ["the moon", "the sun"]
    assert rows[0]["conversation"] == rows[1]["conversation"] and rows[0]["source"] == "chat"
    assert rows[1]["rendered_prompt"] == f"Question: the moon Bot: {rows[0]['response']}\nQuestion: the sun Bot:"
    assert run_cli(*chat, "--no-log", stdin="unlogged\n").returncode == 0
    assert len(run_cli("logs", "--log-db", str(db), "--json").stdout.splitlines()) == 2


def test_serve_on_a_taken_port_is_one_line(tiny_checkpoint, exports):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = run_cli("serve", "--model", str(tiny_checkpoint), "--port", str(taken.getsockname()[1]))
    assert result.returncode == 2 and "cannot listen on 127.0.0.1:" in result.stderr
    assert "Traceback" not in result.stderr


def test_more_lanes_than_rows_is_one_line(tiny_checkpoint, exports):
    result = run_cli("serve", "--model", str(tiny_checkpoint), "--port", str(free_port()), "--max-batch", "2",
                     "--lanes", "3")
    assert result.returncode == 2 and "--lanes 3 is more than --max-batch 2" in result.stderr
    assert "Traceback" not in result.stderr


def test_logs_and_continue_errors_are_one_line(tiny_checkpoint, exports, tmp_path):
    cases = [
        (["chat", "--model", str(tiny_checkpoint), "--continue", "--no-log"], "--continue reads the last conversation"),
        (["logs", "--log-db", str(tmp_path / "none.db")], "no history at"),
    ]
    db = tmp_path / "h.db"
    assert run_cli("chat", "--model", str(tiny_checkpoint), "--max-new-tokens", "2", "--log-db", str(db),
                   stdin="hi\n").returncode == 0
    cases.append((["logs", "--log-db", str(db), "-q", '"unclosed'], "cannot search for"))
    for argv, fragment in cases:
        result = run_cli(*argv, stdin="")
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2 and len(lines) == 1 and fragment in lines[0], result.stderr
