"""Continuous batching: rows that join a running batch (KVBufferBatch.join, Generator.add_rows, the
server's scheduler) get exactly the numbers, tokens and text they get alone, whenever they join."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from chatbot_llm.config import GenerationConfig
from chatbot_llm.runtime.generator import Generator, generate_ids
from chatbot_llm.runtime.onnx_model import OnnxCausalLM

EOS, CONTEXT = 50256, 64  # the tiny checkpoint's


def _logits_of_a_script(model: OnnxCausalLM, rows: dict[str, tuple[int, list[int], int, list[int]]],
                        capacity: int, on_step=None) -> dict[str, list[np.ndarray]]:
    """Run rows through one KV buffer: name -> (step it joins at, prompt, room it needs, its next tokens).
    Rows joining at step 0 start the batch; a row leaves once it has fed all its next tokens. Returns
    each row's logits, one array per step it took part in."""
    seen: dict[str, list[np.ndarray]] = {name: [] for name in rows}
    first = [name for name, (at, *_) in rows.items() if at == 0]
    cache = model.start([rows[n][1] for n in first], capacity=capacity, pad_id=EOS)
    live = list(first)
    logits = list(cache.forward(None))
    step = 0
    while True:
        for name, row_logits in zip(live, logits):
            seen[name].append(row_logits)
        keep = np.array([len(seen[n]) <= len(rows[n][3]) for n in live], bool)
        live = [n for n, k in zip(live, keep) if k]
        if not keep.all():  # as the Generator does it
            cache.keep(keep)
        if on_step is not None:
            on_step(step, cache)
        step += 1
        joining = [n for n, (at, *_) in rows.items() if at == step]
        if not live and not joining and all(at < step for at, *_ in rows.values()):
            return seen
        logits = list(cache.forward(np.array([rows[n][3][len(seen[n]) - 1] for n in live]))) if live else []
        if joining:
            room = max(rows[n][2] for n in joining)
            logits += list(cache.join([rows[n][1] for n in joining], room, limit=CONTEXT))
            live += joining


@pytest.mark.parametrize("variant", ["opt", "int8", "int4"])
def test_a_joined_row_gets_bit_identical_logits_to_the_row_alone(exports, variant):
    """Joining through slot reuse, slot growth, capacity growth, compaction, and into a batch whose
    rows all finished: every row's logits, at every step, equal those of the row alone."""
    model = OnnxCausalLM(exports[variant] / "model.onnx")
    rng = np.random.default_rng(0)

    def row(at: int, prompt_length: int, steps: int, room: int | None = None):
        prompt = [int(t) for t in rng.integers(0, 50257, size=prompt_length)]
        room = room or prompt_length + steps + 1
        return at, prompt, room, [int(t) for t in rng.integers(0, 50257, size=steps)]

    rows = {
        "a": row(0, 5, 1), "b": row(0, 3, 9), "c": row(0, 7, 6), "d": row(0, 1, 5),
        "e": row(2, 4, 7),  # a's slot, idle since a left: slot reuse
        "f": row(3, 30, 6, room=40), "g": row(3, 2, 3),  # no slot free: 8 more; f needs room: the buffer grows
        "h": row(7, 6, 2),  # into the buffer compacted when d left
        "z": row(13, 9, 3),  # after every other row finished
    }
    shapes = {}
    together = _logits_of_a_script(model, rows, capacity=12,
                                   on_step=lambda step, cache: shapes.setdefault(step, cache.buffers[0].shape))
    assert shapes[2][0] == 4 and shapes[3][0] == 12 and shapes[3][2] == 40  # slots grew by 8, capacity to 40
    assert min(shape[0] for shape in shapes.values()) < 12  # compacted
    for name, (_, prompt, room, nexts) in rows.items():
        alone = _logits_of_a_script(model, {name: (0, prompt, room, nexts)}, capacity=room)[name]
        assert len(together[name]) == len(alone) == len(nexts) + 1, name
        for a, b in zip(alone, together[name]):
            np.testing.assert_array_equal(a, b)


def test_a_freed_slot_is_reset_before_a_row_reuses_it(exports):
    model = OnnxCausalLM(exports["opt"] / "model.onnx")
    cache = model.start([[1, 2, 3, 4, 5, 6], [7, 8], [9, 10, 11]], capacity=20, pad_id=EOS)
    cache.forward(None)
    cache.keep(np.array([False, True, True]))
    assert list(cache.lengths) == [0, 2, 3]  # the slot of the row that left reads nothing
    cache.forward(np.array([12, 13]))
    cache.join([[14, 15]], capacity=10)
    assert list(cache.active) == [1, 2, 0] and list(cache.lengths) == [2, 3, 4]


# ---------------------------------------------------------------- the Generator


TEXTS = ["I was walking", "The", "Subject: meeting tomorrow at ten", "Dreams of a house by the sea",
         "We", "A long corridor with doors on both sides, and behind every door a room"]
CONFIGS = {
    "greedy": GenerationConfig(do_sample=False, max_new_tokens=8, repetition_penalty=1.3, no_repeat_ngram_size=2),
    "seeded": GenerationConfig(do_sample=True, max_new_tokens=8, temperature=1.5, top_k=40, top_p=0.95,
                               repetition_penalty=1.2, seed=11),
}


@pytest.fixture(scope="module")
def prompts(exports):
    from chatbot_llm.runtime.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(exports["opt"])
    ids = [tokenizer.encode(t).ids for t in TEXTS]
    return ids + [list(range(1000, 1000 + 60))]  # 60 tokens: this row stops at the context, 64


@pytest.mark.parametrize("variant", ["opt", "int8", "int4"])
@pytest.mark.parametrize("mode", ["greedy", "seeded"])
def test_rows_added_at_any_step_generate_what_they_generate_alone(exports, prompts, variant, mode):
    """Rows join before the first step, mid-way (slot reuse, growth, a prompt that needs more room,
    one that runs into the context) and after every other row finished."""
    model = OnnxCausalLM(exports[variant] / "model.onnx")
    config = CONFIGS[mode]
    joins = {0: [2], 1: [3, 6], 4: [4], 30: [5]}  # step -> rows (indexes into prompts) joining then
    generator = Generator(model, prompts[:2], config, EOS, CONTEXT, stream_keys=[100, 101])
    order = [0, 1]
    step = 0
    while step <= max(joins):
        for row in joins.get(step, []):
            assert generator.add_rows([prompts[row]], stream_keys=[100 + row]) == [len(order)]
            order.append(row)
        if step == 30:
            assert generator.is_done() is False and not len(generator.active)  # the others all finished
        if not generator.is_done():
            generator.generate_next_token()
        step += 1
    while not generator.is_done():
        generator.generate_next_token()
    assert generator.can_add_rows
    for index, row in enumerate(order):
        alone = generate_ids(model, [prompts[row]], config, EOS, CONTEXT, stream_keys=[100 + row])[0]
        result = generator.results[index]
        assert (result.tokens, result.finish_reason) == (alone.tokens, alone.finish_reason), (row, mode)
    assert generator.results[order.index(6)].finish_reason == "context"


@pytest.mark.parametrize("variant", ["opt", "int8"])
def test_cancelling_a_joined_row_before_or_after_its_prompt_leaves_the_others_untouched(exports, prompts, variant):
    model = OnnxCausalLM(exports[variant] / "model.onnx")
    config = CONFIGS["seeded"]
    generator = Generator(model, prompts[:2], config, EOS, CONTEXT, stream_keys=[0, 1])
    generator.generate_next_token()
    early, late, kept = (generator.add_rows([p], stream_keys=[k])[0] for p, k in
                         ((prompts[2], 2), (prompts[3], 3), (prompts[4], 4)))
    generator.cancel(early)  # before its prompt ran
    generator.generate_next_token()
    generator.generate_next_token()
    generator.cancel(late)  # after its prompt and a token
    while not generator.is_done():
        generator.generate_next_token()
    assert generator.results[early].finish_reason == "cancelled" and generator.results[early].tokens == []
    assert generator.results[late].finish_reason == "cancelled" and len(generator.results[late].tokens) == 2
    for row, key in ((0, 0), (1, 1), (kept, 4)):
        prompt = prompts[key]
        assert generator.results[row].tokens == generate_ids(model, [prompt], config, EOS, CONTEXT,
                                                             stream_keys=[key])[0].tokens


def test_batches_that_cannot_join_say_so(exports, prompts):
    config = CONFIGS["greedy"]
    fp32 = Generator(OnnxCausalLM(exports["fp32"] / "model.onnx"), prompts[:2], config, EOS, CONTEXT)
    bound = Generator(OnnxCausalLM(exports["opt"] / "model.onnx", io_binding=True), prompts[:2], config, EOS,
                      CONTEXT)
    for generator in (fp32, bound):
        assert not generator.can_add_rows
        with pytest.raises(RuntimeError, match="cannot take rows"):
            generator.add_rows([prompts[2]], stream_keys=[2])


# ---------------------------------------------------------------- the server's scheduler


def _serve_one_after_another(tg, texts: list[str], config: GenerationConfig, monkeypatch,
                             rows_per_generator: int | None = None) -> tuple[list[str], int]:
    """Each row is submitted when the one before it has streamed its first text (so all run at once
    if they can). Returns each row's text and how many Generators the scheduler started."""
    import chatbot_llm.serve.scheduler as scheduler_module
    from chatbot_llm.serve.scheduler import Row, Scheduler

    started = []

    class CountingGenerator(Generator):
        def __init__(self, *args, **kwargs):
            started.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(scheduler_module, "Generator", CountingGenerator)
    scheduler = Scheduler(max_batch=8)
    if rows_per_generator:
        monkeypatch.setattr(scheduler, "ROWS_PER_GENERATOR", rows_per_generator)
    texts_out = [""] * len(texts)
    finished = threading.Event()
    done: set[int] = set()
    rows: list[Row] = []
    submitted = {0}

    def deliver(event):  # on the worker thread, between steps
        texts_out[event.index] += event.text
        if event.index + 1 < len(rows) and event.index + 1 not in submitted:
            submitted.add(event.index + 1)
            scheduler.submit([rows[event.index + 1]])
        if event.finish_reason:
            assert not event.finish_reason.startswith("error"), event.finish_reason
            done.add(event.index)
            if len(done) == len(rows):
                finished.set()

    rows += [Row(tg, tg.tokenizer.encode(text).ids, config, index=i, stream_key=0, stops=[], deliver=deliver)
             for i, text in enumerate(texts)]
    scheduler.start()
    try:
        scheduler.submit([rows[0]])
        assert finished.wait(60)
    finally:
        scheduler.stop()
    return texts_out, len(started)


SERVE_TEXTS = ["I was walking through my old school", "Subject: meeting", "The", "Dreams of a house"]


def test_rows_arriving_one_after_another_share_one_generator_and_keep_their_text(exports, monkeypatch):
    from chatbot_llm.models import load_text_generator

    tg = load_text_generator(str(exports["opt"]))
    config = GenerationConfig(do_sample=True, max_new_tokens=30, temperature=1.0, top_k=0,
                              repetition_penalty=1.0, seed=5)
    together, generators = _serve_one_after_another(tg, SERVE_TEXTS, config, monkeypatch)
    assert generators == 1
    alone = [_serve_one_after_another(tg, [text], config, monkeypatch)[0][0] for text in SERVE_TEXTS]
    assert together == alone and all(together)


def test_a_generator_that_took_its_share_of_rows_lets_a_fresh_one_take_the_next(exports, monkeypatch):
    from chatbot_llm.models import load_text_generator

    tg = load_text_generator(str(exports["opt"]))
    config = GenerationConfig(do_sample=False, max_new_tokens=30, repetition_penalty=1.2)
    together, generators = _serve_one_after_another(tg, SERVE_TEXTS, config, monkeypatch, rows_per_generator=2)
    assert generators == 2
    assert together == [_serve_one_after_another(tg, [text], config, monkeypatch)[0][0] for text in SERVE_TEXTS]


@pytest.mark.parametrize("interval", [0.0, 3600.0])
def test_a_stream_interval_sends_fewer_larger_events_with_the_same_text(exports, interval):
    """serve --stream-interval: a row's first text goes at once, the rest waits for later tokens'
    (here: until its end), and the text is the same as every token's own event gives."""
    from chatbot_llm.models import load_text_generator
    from chatbot_llm.serve.scheduler import Row, Scheduler

    tg = load_text_generator(str(exports["opt"]))
    config = GenerationConfig(do_sample=False, max_new_tokens=12, repetition_penalty=1.0)
    events = []
    finished = threading.Event()

    def deliver(event):
        events.append(event)
        if event.finish_reason:
            finished.set()

    scheduler = Scheduler(max_batch=4, stream_interval=interval)
    scheduler.start()
    try:
        scheduler.submit([Row(tg, tg.tokenizer.encode("The house").ids, config, index=0, stream_key=0, stops=[],
                              deliver=deliver)])
        assert finished.wait(60)
    finally:
        scheduler.stop()
    text = "".join(e.text for e in events)
    assert text == tg.generate(["The house"], config)[0].response
    assert events[-1].finish_reason == "length" and events[-1].completion_tokens == 12
    texts = [e for e in events if e.text]
    if interval:
        assert len(texts) == 2  # the first text, then all the rest with the end
    else:
        assert len(texts) >= 6  # a token's text at a time


def test_a_busy_batch_takes_joining_rows_a_few_at_a_time_and_an_idle_one_at_once():
    """Each join is a forward pass of its own: while the batch is nearly full, waiting rows join
    join_min at a time, held back at most JOIN_WAIT steps; with room to spare they join at once."""
    from types import SimpleNamespace

    from chatbot_llm.serve.scheduler import Scheduler

    scheduler = Scheduler(max_batch=32)
    lane = scheduler.lanes[0]
    assert lane.join_min == 4

    class Waiting:
        cancelled = False

        def can_join(self):
            return True

    def admit(live: int, waiting: int) -> int:
        lane._batches = [SimpleNamespace(live=lambda: live)] if live else []
        scheduler._waiting.extend(Waiting() for _ in range(waiting))
        taken = lane._admit()
        scheduler._waiting.clear()
        return len(taken)

    assert admit(live=31, waiting=40) == 0  # one free row: it waits for more room
    assert [admit(live=31, waiting=40) for _ in range(Scheduler.JOIN_WAIT - 1)] == [0] * (Scheduler.JOIN_WAIT - 1)
    assert admit(live=31, waiting=40) == 1  # but not longer than JOIN_WAIT steps
    assert admit(live=28, waiting=40) == 4  # room for join_min rows: they join together
    assert admit(live=31, waiting=1) == 1  # nobody else waits: no reason to hold it
    assert admit(live=10, waiting=1) == 1  # light load: at once
    assert admit(live=0, waiting=40) == 32  # an empty batch starts full


def test_two_lanes_take_their_share_of_the_rows_each_and_every_row_keeps_its_text(exports, monkeypatch):
    """serve's lanes: rows that arrive together go to both worker threads, at most a lane's share of
    max_batch in each, on one shared session, and each row's text is the one it gets alone."""
    import chatbot_llm.serve.scheduler as scheduler_module
    from chatbot_llm.models import load_text_generator
    from chatbot_llm.serve.scheduler import Row, Scheduler

    started: list[tuple[str, int]] = []

    class CountingGenerator(Generator):
        def __init__(self, model, prompts, *args, **kwargs):
            started.append((threading.current_thread().name, len(prompts)))
            super().__init__(model, prompts, *args, **kwargs)

    monkeypatch.setattr(scheduler_module, "Generator", CountingGenerator)
    tg = load_text_generator(str(exports["opt"]), threads=1)
    config = GenerationConfig(do_sample=True, max_new_tokens=12, temperature=1.0, top_k=0,
                              repetition_penalty=1.0, seed=9)
    texts = [f"{word} of the house" for word in ["The", "A", "Dreams", "Rooms", "Doors", "Walls", "Lights", "Keys"]]
    out = [""] * len(texts)
    done = threading.Semaphore(0)

    def deliver(event):
        out[event.index] += event.text
        if event.finish_reason:
            assert not event.finish_reason.startswith("error"), event.finish_reason
            done.release()

    scheduler = Scheduler(max_batch=8, lanes=2)
    assert [lane.max_batch for lane in scheduler.lanes] == [4, 4]
    scheduler.start()
    try:
        scheduler.submit([Row(tg, tg.tokenizer.encode(t).ids, config, index=i, stream_key=0, stops=[], deliver=deliver)
                          for i, t in enumerate(texts)])
        assert all(done.acquire(timeout=60) for _ in texts)
        assert scheduler.stats()["lanes"] == 2
    finally:
        scheduler.stop()
    assert sorted(started) == [("chatbot-llm-lane-0", 4), ("chatbot-llm-lane-1", 4)]
    assert out == [tg.generate([t], config)[0].response for t in texts] and all(out)


def test_lanes_split_max_batch_and_serve_picks_them_for_the_cores(monkeypatch):
    import chatbot_llm.runtime.device as device_module
    from chatbot_llm.cli.serve import _lanes_and_threads
    from chatbot_llm.errors import UsageError
    from chatbot_llm.serve.scheduler import Scheduler

    assert [lane.max_batch for lane in Scheduler(max_batch=5, lanes=2).lanes] == [3, 2]
    with pytest.raises(ValueError):
        Scheduler(max_batch=2, lanes=3)
    for cores, expected in [(1, (1, None)), (2, (2, 1)), (16, (2, 15))]:
        monkeypatch.setattr(device_module, "default_threads", lambda cores=cores: cores)
        assert _lanes_and_threads(None, "cpu", 32) == expected
    assert _lanes_and_threads(None, "cuda", 32) == (1, None)
    assert _lanes_and_threads(None, "cpu", 1) == (1, None)  # one row: one lane
    assert _lanes_and_threads(4, "cpu", 32) == (4, 13)
    with pytest.raises(UsageError, match="more than --max-batch"):
        _lanes_and_threads(3, "cpu", 2)
