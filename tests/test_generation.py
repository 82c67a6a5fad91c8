"""ONNX generation equals transformers' generate(), row by row, whatever the batch."""

from __future__ import annotations

import numpy as np
import pytest

from chatbot_llm.config import GenerationConfig
from chatbot_llm.models import load_text_generator
from chatbot_llm.runtime.generator import generate_ids
from chatbot_llm.runtime.onnx_model import OnnxCausalLM
from chatbot_llm.runtime.tokenizer import load_tokenizer
from chatbot_llm.torch_backend import TorchBaseline

EOS, CONTEXT = 50256, 64
TEXTS = [
    "I was walking through my old school",
    "Subject: meeting tomorrow",
    "The",
    "We need the numbers by Friday, and the board wants a plan for next quarter",
    "Dreams",
    "A long corridor with doors on both sides, and behind every door",
]


@pytest.fixture(scope="module")
def prompts(exports):
    tokenizer = load_tokenizer(exports["fp32"])
    return [tokenizer.encode(t).ids for t in TEXTS]


@pytest.fixture(scope="module")
def torch_baseline(tiny_checkpoint):
    return TorchBaseline(tiny_checkpoint, EOS, CONTEXT)


def tokens(results):
    return [r.tokens for r in results]


@pytest.mark.parametrize("variant", ["fp32", "opt"])
def test_greedy_batch_of_one_equals_generate(exports, prompts, torch_baseline, variant):
    model = OnnxCausalLM(exports[variant] / "model.onnx")
    config = GenerationConfig(do_sample=False, max_new_tokens=20, repetition_penalty=1.3, no_repeat_ngram_size=3)
    for prompt in prompts:
        ours = generate_ids(model, [prompt], config, EOS, CONTEXT)
        assert tokens(ours) == tokens(torch_baseline.generate_ids([prompt], config))
        assert len(ours[0].tokens) == 20 and ours[0].finish_reason == "length"


@pytest.mark.parametrize("variant", ["fp32", "opt"])
def test_greedy_mixed_length_batch_equals_generate(exports, prompts, torch_baseline, variant):
    model = OnnxCausalLM(exports[variant] / "model.onnx")
    # penalty 1.0: in a padded batch, generate() also penalises the pad token of shorter rows
    config = GenerationConfig(do_sample=False, max_new_tokens=16, repetition_penalty=1.0, no_repeat_ngram_size=2)
    assert tokens(generate_ids(model, prompts, config, EOS, CONTEXT)) == tokens(
        torch_baseline.generate_ids(prompts, config)
    )


@pytest.mark.parametrize("variant", ["fp32", "opt", "int8", "int4"])
def test_a_rows_greedy_output_does_not_depend_on_its_batch(exports, prompts, variant):
    model = OnnxCausalLM(exports[variant] / "model.onnx")
    config = GenerationConfig(do_sample=False, max_new_tokens=12, repetition_penalty=1.2)
    alone = [generate_ids(model, [p], config, EOS, CONTEXT)[0].tokens for p in prompts]
    order = np.random.default_rng(3).permutation(len(prompts))
    shuffled = generate_ids(model, [prompts[i] for i in order], config, EOS, CONTEXT)
    assert [shuffled[j].tokens for j in np.argsort(order)] == alone


@pytest.mark.parametrize("variant", ["fp32", "opt", "int8", "int4"])
def test_greedy_outputs_are_the_same_in_any_batch_composition(exports, variant):
    """Random subsets of prompts of 1 to 40 tokens, shuffled, in batches of every size: each prompt's
    tokens are those it gets alone (padding, KV buffer slots, positions and quantized rows all
    independent)."""
    tokenizer = load_tokenizer(exports["fp32"])
    words = "the dream was long and the office had moved to a lake where my sister waited".split()
    rng = np.random.default_rng(11)
    texts = [" ".join(rng.choice(words, size=rng.integers(1, 30))) for _ in range(12)]
    pool = [tokenizer.encode(t).ids[:40] for t in texts]
    model = OnnxCausalLM(exports[variant] / "model.onnx")
    config = GenerationConfig(do_sample=False, max_new_tokens=10, repetition_penalty=1.2, no_repeat_ngram_size=3)
    alone = [generate_ids(model, [p], config, EOS, CONTEXT)[0].tokens for p in pool]
    for size in (2, 3, 5, 8, 12):
        for _ in range(2):
            picked = rng.choice(len(pool), size=size, replace=False)
            together = generate_ids(model, [pool[i] for i in picked], config, EOS, CONTEXT)
            assert [r.tokens for r in together] == [alone[i] for i in picked], (size, picked)


@pytest.mark.parametrize("variant", ["fp32", "opt", "int8", "int4"])
def test_seeded_sampled_text_is_the_same_at_any_batch_size(exports, tiny_checkpoint, variant):
    """The seed's flat sampling (temperature 1.7, top_k 500) over 40 tokens: the most sensitive case.
    On fp32's left-padded graph, 1 prompt in 14 came out different at another batch size before
    equal-length batching; the decoder graph's variants batch every length together."""
    generator = load_text_generator(str(tiny_checkpoint), "onnx", variant)
    assert generator.groups_by_length(GenerationConfig(seed=1)) == (variant == "fp32")
    words = "we walked along the shore while the letters in my pocket kept changing their dates".split()
    rng = np.random.default_rng(5)
    texts = [" ".join(rng.choice(words, size=rng.integers(1, 12))) for _ in range(24)]
    config = GenerationConfig(max_new_tokens=40, seed=2024, temperature=1.7, top_k=500, repetition_penalty=0.9)
    keys = list(range(1, len(texts) + 1))
    runs = {size: [c.tokens for c in generator.generate(texts, config, stream_keys=keys, max_batch=size)]
            for size in (1, 3, 8, 24)}
    assert runs[1] == runs[3] == runs[8] == runs[24]


def test_seeded_sampling_is_reproducible_and_batch_size_free(exports, prompts):
    model = OnnxCausalLM(exports["opt"] / "model.onnx")
    config = GenerationConfig(max_new_tokens=10, seed=1234)
    keys = list(range(1, len(prompts) + 1))
    batched = tokens(generate_ids(model, prompts, config, EOS, CONTEXT, stream_keys=keys))
    assert batched == tokens(generate_ids(model, prompts, config, EOS, CONTEXT, stream_keys=keys))
    one_by_one = [generate_ids(model, [p], config, EOS, CONTEXT, stream_keys=[k])[0].tokens
                  for p, k in zip(prompts, keys)]
    assert batched == one_by_one
    other_seed = tokens(generate_ids(model, prompts, config.replace(seed=99), EOS, CONTEXT, stream_keys=keys))
    assert other_seed != batched


@pytest.mark.parametrize("narrow", [dict(top_k=1), dict(top_k=0, top_p=1e-6)])
def test_sampling_with_a_one_token_support_is_greedy(exports, prompts, narrow):
    model = OnnxCausalLM(exports["opt"] / "model.onnx")
    sampled = GenerationConfig(max_new_tokens=10, seed=5, temperature=1.7, repetition_penalty=1.0, **narrow)
    greedy = GenerationConfig(max_new_tokens=10, do_sample=False, repetition_penalty=1.0)
    assert tokens(generate_ids(model, prompts, sampled, EOS, CONTEXT)) == tokens(
        generate_ids(model, prompts, greedy, EOS, CONTEXT)
    )


def test_rows_stop_at_eos_on_their_own(exports, prompts):
    """Make EOS the argmax after a few steps for one row only: it stops, the others go on."""
    model = OnnxCausalLM(exports["opt"] / "model.onnx")
    config = GenerationConfig(do_sample=False, max_new_tokens=8, repetition_penalty=1.0)
    free = generate_ids(model, prompts[:2], config, EOS, CONTEXT)
    # the first row's third greedy token, used as the EOS id, ends that row after two tokens
    fake_eos = free[0].tokens[2]
    stopped = generate_ids(model, prompts[:2], config, fake_eos, CONTEXT)
    assert stopped[0].finish_reason == "eos" and stopped[0].tokens == free[0].tokens[:2]
    if fake_eos not in free[1].tokens:
        assert stopped[1].tokens == free[1].tokens and stopped[1].finish_reason == "length"


def test_long_prompts_are_an_error_or_with_truncate_cut_from_the_left(exports, tiny_checkpoint):
    from chatbot_llm.errors import PromptTooLong

    warnings = []
    generator = load_text_generator(str(tiny_checkpoint), "onnx", "opt", on_warning=warnings.append)
    long_prompt = " ".join(f"word{i}" for i in range(200))
    config = GenerationConfig(do_sample=False, max_new_tokens=10)
    with pytest.raises(PromptTooLong, match="longer than the model's context of 64 tokens") as raised:
        generator.generate(["fits", long_prompt], config)
    assert raised.value.row == 1
    generator.truncate = True
    completion = generator.generate([long_prompt], config)[0]
    assert completion.prompt_tokens == CONTEXT - 10 and len(completion.tokens) == 10
    assert len(warnings) == 1 and "cut from the left" in warnings[0]
    # a budget larger than the context: the prompt keeps half of it, the reply stops at the context
    completion = generator.generate([long_prompt], config.replace(max_new_tokens=500))[0]
    assert completion.prompt_tokens == CONTEXT // 2
    assert completion.finish_reason == "context" and completion.prompt_tokens + len(completion.tokens) == CONTEXT


def test_torch_and_onnx_text_generators_agree(exports, tiny_checkpoint):
    config = GenerationConfig(do_sample=False, max_new_tokens=12, repetition_penalty=1.0)
    onnx = load_text_generator(str(tiny_checkpoint), "onnx", "fp32").generate(TEXTS, config)
    torch = load_text_generator(str(tiny_checkpoint), "torch").generate(TEXTS, config)
    assert [c.tokens for c in onnx] == [c.tokens for c in torch]
    assert [c.response for c in onnx] == [c.response for c in torch]


def test_streamed_text_adds_up_to_the_response(exports, tiny_checkpoint):
    generator = load_text_generator(str(tiny_checkpoint), "onnx", "opt")
    pieces: dict[int, list[str]] = {0: [], 1: []}
    completions = generator.generate(
        TEXTS[:2], GenerationConfig(max_new_tokens=15, seed=3), on_text=lambda row, text: pieces[row].append(text)
    )
    for row, completion in enumerate(completions):
        assert "".join(pieces[row]).strip() == completion.response


def test_the_onnx_path_never_imports_torch_or_transformers(exports, tiny_checkpoint):
    """A deployment that only chats needs onnxruntime, tokenizers and numpy."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from chatbot_llm import cli\n"
        "from chatbot_llm.config import GenerationConfig\n"
        "from chatbot_llm.models import load_text_generator\n"
        f"g = load_text_generator({str(tiny_checkpoint)!r}, 'onnx', 'int8')\n"
        "c = g.generate(['hello'], GenerationConfig(max_new_tokens=3, seed=1))[0]\n"
        "assert c.tokens, c\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'optimum')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("variant", ["fp32", "opt"])
@pytest.mark.parametrize("when", [0, 3])
def test_a_row_cancelled_before_or_during_generation_leaves_the_others_as_they_were(exports, prompts, variant, when):
    """The server cancels a row when its client goes away, also before its prompt ran."""
    from chatbot_llm.runtime.generator import Generator

    model = OnnxCausalLM(exports[variant] / "model.onnx")
    config = GenerationConfig(do_sample=False, max_new_tokens=8, repetition_penalty=1.2)
    generator = Generator(model, prompts, config, EOS, CONTEXT)
    for _ in range(when):
        generator.generate_next_token()
    generator.cancel(1)
    while not generator.is_done():
        generator.generate_next_token()
    others = [p for i, p in enumerate(prompts) if i != 1]
    expected = tokens(generate_ids(model, others, config, EOS, CONTEXT))
    assert [r.tokens for i, r in enumerate(generator.results) if i != 1] == expected
    assert generator.results[1].finish_reason == "cancelled" and len(generator.results[1].tokens) == when


def test_a_stop_string_ends_the_row_there_and_nothing_past_it_streams(exports, tiny_checkpoint):
    generator = load_text_generator(str(tiny_checkpoint), "onnx", "opt")
    config = GenerationConfig(do_sample=False, max_new_tokens=24, repetition_penalty=1.2)
    texts = ["I was walking through my old school", "Subject: meeting tomorrow"]
    full = generator.generate(texts, config)
    words = full[0].response.split(" ")
    stop = words[2][-2:] + " " + words[3][:2]  # spans a token boundary
    streamed = {0: "", 1: ""}
    cut = generator.generate(texts, config, stops=[stop],
                             on_text=lambda row, text: streamed.__setitem__(row, streamed[row] + text))
    assert cut[0].response == full[0].response[: full[0].response.index(stop)].rstrip()
    assert cut[0].finish_reason == "stop" and len(cut[0].tokens) < len(full[0].tokens)  # it ended there
    assert streamed[0].strip() == cut[0].response and stop not in streamed[0]
    assert cut[1].tokens == full[1].tokens and streamed[1].strip() == full[1].response  # its neighbour as it was
