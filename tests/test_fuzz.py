"""Property-based tests over the tokenize -> generate -> decode path: any text in, valid text out."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatbot_llm.config import GenerationConfig

# Everything Unicode has: emoji, control characters, combining marks, NUL, and lone surrogates (what
# Python makes of bytes that are not UTF-8 on a terminal or in argv).
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=60)
CONFIGS = st.builds(
    GenerationConfig,
    max_new_tokens=st.integers(1, 6),
    do_sample=st.booleans(),
    temperature=st.floats(0.05, 3.0),
    top_k=st.integers(0, 60),
    top_p=st.floats(0.05, 1.0),
    repetition_penalty=st.floats(0.5, 2.0),
    no_repeat_ngram_size=st.integers(0, 3),
    seed=st.integers(0, 2**32),
)


@pytest.fixture(scope="module")
def generator(exports):
    from chatbot_llm.models import load_text_generator

    generator = load_text_generator(str(exports["int8"]), "onnx", "int8", on_warning=lambda message: None)
    generator.truncate = True  # arbitrary text may be longer than the tiny context; that is not the point here
    return generator


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompts=st.lists(ANY_TEXT, min_size=1, max_size=4), config=CONFIGS)
def test_any_prompt_gives_valid_utf8_text(generator, prompts, config):
    completions = generator.generate(prompts, config, stream_keys=list(range(1, len(prompts) + 1)))
    assert len(completions) == len(prompts)
    for completion in completions:
        completion.response.encode("utf-8")  # no lone surrogate or other unencodable text comes out
        assert 1 <= completion.prompt_tokens and len(completion.tokens) <= config.max_new_tokens
        assert completion.finish_reason in ("eos", "length", "context")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=ANY_TEXT)
def test_streamed_text_is_the_decoded_text(generator, text):
    pieces: list[str] = []
    config = GenerationConfig(max_new_tokens=5, seed=3)
    completion = generator.generate([text], config, on_text=lambda row, delta: pieces.append(delta))[0]
    assert "".join(pieces).strip() == completion.response


def test_chat_survives_bytes_that_are_not_utf8_on_its_terminal(tiny_checkpoint, exports):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "chatbot_llm", "chat", "--model", str(tiny_checkpoint),
                             "--max-new-tokens", "2"], input=b"a\xed\xa0\x80b caf\xe9\nexit\n",
                            capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert b"internal error" not in result.stderr


def test_a_character_left_unfinished_by_the_last_token_streams_as_the_response_has_it(generator):
    """The row's last token can end inside a multi-byte character: the stream holds it back while more
    may come, and hands it out at the end (as U+FFFD, like the whole response), so the two agree."""
    from chatbot_llm.runtime.tokenizer import StreamDecoder

    tokenizer = generator.tokenizer
    ids = tokenizer.encode("dream 🌙").ids
    head = next(i for i in range(1, len(ids) + 1) if tokenizer.decode(ids[:i]).endswith("\ufffd"))
    decoder = StreamDecoder(tokenizer)
    streamed = "".join(decoder.add(t) for t in ids[:head])
    assert not streamed.endswith("\ufffd")  # held back while the character may still complete
    assert streamed + decoder.flush() == tokenizer.decode(ids[:head]).lstrip()
