"""The numpy processors equal transformers' own, as generate() picks and orders them."""

from __future__ import annotations

import numpy as np
from transformers.utils import logging as hf_logging
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import GenerationConfig as HFGenerationConfig
from transformers import GPT2Config, GPT2LMHeadModel

from chatbot_llm.config import GenerationConfig
from chatbot_llm.runtime.processors import TopK, apply_processors, build_processors, sample, sample_rows

VOCAB = 64
hf_logging.set_verbosity_error()  # "flags are not valid" notes for greedy configs


@pytest.fixture(scope="module")
def hf_model():
    return GPT2LMHeadModel(GPT2Config(n_embd=8, n_layer=1, n_head=1, vocab_size=VOCAB, n_positions=32))


def hf_process(model, config: GenerationConfig, ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """transformers' processors, chosen and ordered by generate()'s own _get_logits_processor."""
    hf_config = HFGenerationConfig(
        do_sample=config.do_sample, temperature=config.temperature, top_k=config.top_k, top_p=config.top_p,
        repetition_penalty=config.repetition_penalty, no_repeat_ngram_size=config.no_repeat_ngram_size,
    )
    processors = model._get_logits_processor(
        generation_config=hf_config, input_ids_seq_length=ids.shape[1], encoder_input_ids=torch.from_numpy(ids),
        prefix_allowed_tokens_fn=None, logits_processor=None, device="cpu", model_kwargs={},
    )
    return processors(torch.from_numpy(ids), torch.from_numpy(scores.copy())).numpy()


def ours(config: GenerationConfig, ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    return apply_processors(build_processors(config), list(ids), scores.copy())


def assert_same(a: np.ndarray, b: np.ndarray) -> None:
    assert np.array_equal(np.isneginf(a), np.isneginf(b)), "different tokens were filtered out"
    finite = np.isfinite(b)
    np.testing.assert_allclose(a[finite], b[finite], rtol=1e-6, atol=1e-6)


configs = st.builds(
    GenerationConfig,
    temperature=st.floats(0.05, 5.0),
    top_p=st.one_of(st.just(1.0), st.floats(0.01, 1.0)),
    top_k=st.one_of(st.just(0), st.integers(1, VOCAB + 20)),
    repetition_penalty=st.one_of(st.just(1.0), st.floats(0.3, 3.0)),
    no_repeat_ngram_size=st.integers(0, 6),
    do_sample=st.booleans(),
    max_new_tokens=st.just(10),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=configs, seed=st.integers(0, 2**32 - 1), rows=st.integers(1, 4), length=st.integers(1, 12))
def test_processors_match_transformers(hf_model, config, seed, rows, length):
    rng = np.random.default_rng(seed)
    # few distinct ids, so that repeats and repeated n-grams actually occur
    ids = rng.integers(0, 12, size=(rows, length)).astype(np.int64)
    scores = (rng.standard_normal((rows, VOCAB)) * 3).astype(np.float32)
    assert_same(ours(config, ids, scores), hf_process(hf_model, config, ids, scores))


@pytest.mark.parametrize(
    "changes",
    [
        dict(top_k=VOCAB * 10),  # top_k larger than the vocabulary
        dict(top_p=1.0, top_k=0),  # both filters off
        dict(repetition_penalty=0.5),  # below 1 makes repeats more likely
        dict(repetition_penalty=0.9),  # the seed's value
        dict(no_repeat_ngram_size=20),  # longer than the sequence: bans nothing
        dict(no_repeat_ngram_size=1),  # every token seen is banned
        dict(top_p=1e-6),  # keeps exactly the most likely token
        dict(do_sample=False, top_k=3, top_p=0.1, temperature=0.01),  # greedy ignores the warpers
    ],
)
def test_edge_cases_match_transformers(hf_model, changes):
    rng = np.random.default_rng(7)
    ids = rng.integers(0, 12, size=(3, 9)).astype(np.int64)
    scores = (rng.standard_normal((3, VOCAB)) * 3).astype(np.float32)
    config = GenerationConfig(**{"max_new_tokens": 10, **changes})
    assert_same(ours(config, ids, scores), hf_process(hf_model, config, ids, scores))


def test_top_k_keeps_ties(hf_model):
    """Every token tied with the k-th best survives top-k, as in transformers."""
    scores = np.array([[3, 2, 2, 2, 1, 0] + [-5] * (VOCAB - 6)], np.float32)
    config = GenerationConfig(top_k=2, top_p=1.0, temperature=1.0, repetition_penalty=1.0, max_new_tokens=1)
    ids = np.array([[40]], np.int64)
    result = ours(config, ids, scores)
    assert np.isfinite(result[0, :4]).all() and np.isneginf(result[0, 4:]).all()
    assert_same(result, hf_process(hf_model, config, ids, scores))


def test_no_repeat_ngram_bans_the_completing_token():
    config = GenerationConfig(no_repeat_ngram_size=2, repetition_penalty=1.0, do_sample=False, max_new_tokens=1)
    ids = np.array([[5, 6, 7, 5]], np.int64)  # "5 6" was seen, the row ends in 5: 6 is banned
    result = ours(config, ids, np.zeros((1, VOCAB), np.float32))
    assert np.flatnonzero(np.isneginf(result[0])).tolist() == [6]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), top_k=st.integers(1, 20), top_p=st.floats(0.05, 1.0))
def test_sampled_tokens_stay_inside_the_top_k_top_p_support(seed, top_k, top_p):
    rng = np.random.default_rng(seed)
    scores = (rng.standard_normal((1, VOCAB)) * 2).astype(np.float32)
    config = GenerationConfig(top_k=top_k, top_p=top_p, temperature=1.3, repetition_penalty=1.0, max_new_tokens=1)
    processed = apply_processors(build_processors(config), [np.array([1])], scores)[0]
    support = set(np.flatnonzero(np.isfinite(processed)).tolist())
    assert 1 <= len(support) <= top_k
    draws = {sample(processed, rng) for _ in range(300)}
    assert draws <= support


def test_sampling_follows_the_distribution():
    """Two tokens at probabilities 0.25 / 0.75: the draw frequencies agree."""
    scores = np.full(VOCAB, -np.inf, np.float32)
    scores[3], scores[9] = 0.0, np.log(3.0)
    rng = np.random.default_rng(0)
    draws = np.array([sample(scores, rng) for _ in range(4000)])
    assert set(np.unique(draws)) == {3, 9}
    assert abs((draws == 9).mean() - 0.75) < 0.03


GPT2_VOCAB = 50257


def full_row_sample(scores: np.ndarray, rng: np.random.Generator) -> int:
    """The draw over the whole vocabulary, as the sampler did it before it skipped the -inf tokens."""
    cdf = np.cumsum(np.exp(scores.astype(np.float64) - np.max(scores)))
    token = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    if token >= len(cdf) or not np.isfinite(scores[token]):
        token = int(np.flatnonzero(np.isfinite(scores))[-1])
    return token


@pytest.mark.parametrize("top_k", [1, 7, 50, 500, 785, 786, 5000, GPT2_VOCAB])
def test_top_k_on_the_full_vocabulary_keeps_exactly_the_selection_of_the_whole_row(top_k):
    """TopK finds the k-th largest from a sample of the row: the same threshold as a selection over
    all 50,257 scores, ties at the threshold included, on both of its paths."""
    rng = np.random.default_rng(top_k)
    scores = (rng.standard_normal((4, GPT2_VOCAB)) * 3).astype(np.float32)
    scores[1] = np.round(scores[1])  # many ties, also at the k-th value
    scores[2, ::16] = -50.0  # the sampled positions hold the row's lowest scores
    scores[3, :] = 0.0  # one value throughout
    kept = apply_processors(build_processors(GenerationConfig(top_k=top_k, temperature=1.0, top_p=1.0,
                                                              repetition_penalty=1.0, max_new_tokens=1)),
                            [np.array([1])] * 4, scores.copy())
    for row, out in zip(scores, kept):
        kth = np.partition(row, GPT2_VOCAB - top_k)[GPT2_VOCAB - top_k]
        assert np.array_equal(np.isfinite(out), row >= kth)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), top_k=st.one_of(st.just(0), st.integers(1, 600)),
       top_p=st.one_of(st.just(1.0), st.floats(0.05, 1.0)), temperature=st.floats(0.3, 2.0))
def test_sampling_draws_the_token_the_whole_row_draw_did(seed, top_k, top_p, temperature):
    """Skipping the -inf tokens changes no seeded draw: the same random number picks the same token."""
    rng = np.random.default_rng(seed)
    scores = (rng.standard_normal((1, GPT2_VOCAB)) * 4).astype(np.float32)
    config = GenerationConfig(top_k=top_k, top_p=top_p, temperature=temperature, repetition_penalty=1.0,
                              max_new_tokens=1)
    processed = apply_processors(build_processors(config), [np.array([1])], scores)[0]
    ours_rng, reference_rng = np.random.default_rng([seed, 1]), np.random.default_rng([seed, 1])
    assert [sample(processed, ours_rng) for _ in range(20)] == [full_row_sample(processed, reference_rng)
                                                                for _ in range(20)]


@pytest.mark.parametrize("top_k", [1, 7, 50, 500, 785, 786, 5000, GPT2_VOCAB, GPT2_VOCAB + 5])
def test_top_k_kept_positions_are_the_ones_its_filter_leaves(top_k):
    """TopK.kept(), the compact path's selection, names exactly the positions __call__ leaves above
    -inf (or at -inf only where they were -inf already), ascending, on rows with ties, one value
    throughout, sampled positions at the bottom and -inf scores."""
    rng = np.random.default_rng(top_k)
    scores = (rng.standard_normal((5, GPT2_VOCAB)) * 3).astype(np.float32)
    scores[1] = np.round(scores[1])
    scores[2, ::16] = -50.0
    scores[3, :] = 0.0
    scores[4, 100:] = -np.inf  # fewer finite scores than some of the k
    top = TopK(top_k)
    for row in scores:
        kept = top.kept(row)
        assert np.all(np.diff(kept) > 0)
        filtered = top([np.array([1])], row[None, :].copy())[0]
        was_finite = np.isfinite(row)
        assert np.array_equal(np.isfinite(filtered), np.isin(np.arange(GPT2_VOCAB), kept) & was_finite)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), top_k=st.one_of(st.just(0), st.integers(1, 600), st.just(GPT2_VOCAB)),
       top_p=st.one_of(st.just(1.0), st.floats(0.05, 1.0)), temperature=st.floats(0.3, 2.0),
       penalty=st.one_of(st.just(1.0), st.floats(0.5, 2.0)), ngram=st.integers(0, 3), ties=st.booleans())
def test_sample_rows_draws_what_the_processors_and_a_whole_row_draw_do(seed, top_k, top_p, temperature,
                                                                       penalty, ngram, ties):
    """The batched draw, which after TopK looks only at the kept scores, picks for every row the token
    that apply_processors() over the whole row and then sample() pick from the same random numbers."""
    rng = np.random.default_rng(seed)
    scores = (rng.standard_normal((3, GPT2_VOCAB)) * 4).astype(np.float32)
    if ties:
        scores = np.round(scores)
    ids = [rng.integers(0, GPT2_VOCAB, size=n) for n in (1, 6, 12)]
    ids[2][6:] = ids[2][:6]  # a repeated stretch, so that n-grams are banned
    config = GenerationConfig(top_k=top_k, top_p=top_p, temperature=temperature, repetition_penalty=penalty,
                              no_repeat_ngram_size=ngram, max_new_tokens=1)
    processors = build_processors(config)
    streams = [[seed, row] for row in range(3)]
    processed = apply_processors(processors, ids, scores.copy())
    ours_rngs = [np.random.default_rng(s) for s in streams]
    reference_rngs = [np.random.default_rng(s) for s in streams]
    for _ in range(10):
        assert sample_rows(processors, ids, scores.copy(), ours_rngs).tolist() == [
            sample(row, r) for row, r in zip(processed, reference_rngs)]


def test_sample_rows_refuses_a_processor_after_top_k_that_reads_positions():
    from chatbot_llm.runtime.processors import RepetitionPenalty

    with pytest.raises(ValueError, match="only TopP"):
        sample_rows([TopK(5), RepetitionPenalty(1.2)], [np.array([1])], np.zeros((1, 100), np.float32),
                    [np.random.default_rng(0)])
