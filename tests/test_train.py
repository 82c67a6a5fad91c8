"""`chatbot-llm train`: a txt corpus becomes a checkpoint that loads, exports and generates."""

from __future__ import annotations

import json
import random

import pytest

from chatbot_llm.config import GenerationConfig
from chatbot_llm.errors import UsageError
from chatbot_llm.train.corpus import load_corpus, read_records, split_records
from tests.conftest import error_lines, run_cli

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# Records in a narrow, repetitive style: a tiny model learns them in a few dozen steps.
SUBJECTS = ["I", "my sister", "a tall man", "the teacher", "my dog", "an old friend"]
VERBS = ["was walking through", "ran into", "was flying over", "got lost in", "was cleaning"]
PLACES = ["my old school", "a dark forest", "the kitchen", "a crowded station", "the beach at night"]
QUICK = ["--size", "tiny", "--block-size", "32", "--batch-size", "8", "--micro-batch", "8", "--lr", "3e-3"]


def write_corpus(path, records: int = 400, seed: int = 1):
    rng = random.Random(seed)
    text = "\n\n".join(
        f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(VERBS)} {rng.choice(PLACES)}. "
        f"Then {rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(PLACES)}."
        for _ in range(records)
    )
    path.write_text(text + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus") / "dreams.txt")


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "model"
    result = run_cli("train", str(corpus), "--out", str(out), "--max-steps", "40", *QUICK)
    assert result.returncode == 0, result.stderr
    return out


def test_corpus_split_is_by_record_and_seeded(corpus):
    records, sha = read_records(corpus)
    train, heldout = split_records(records, seed=0)
    assert len(heldout) == round(len(records) * 0.05) and len(train) + len(heldout) == len(records)
    assert split_records(records, seed=0) == (train, heldout)
    assert split_records(records, seed=1) != (train, heldout)
    blocks = load_corpus(corpus, 32, seed=0)
    assert blocks.train.shape[1] == 32 and blocks.sha256 == sha
    assert (blocks.train == 50256).sum() >= len(train) - 1  # EOS between records


def test_training_lowers_heldout_loss_and_writes_a_usable_checkpoint(trained):
    results = json.loads((trained / "train_results.json").read_text())
    assert results["complete"] and results["steps"] == 40
    assert results["tokens_seen"] == 40 * 8 * 32
    assert results["heldout_perplexity"] < results["initial_heldout_perplexity"] / 20
    for name in ("config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer.json",
                 "generation_config.json", "README.md"):
        assert (trained / name).is_file(), name
    defaults = json.loads((trained / "generation_config.json").read_text())
    assert defaults["temperature"] == 1.7 and defaults["top_k"] == 500  # a new model starts from the seed's
    card = (trained / "README.md").read_text()
    assert f"{results['heldout_perplexity']:.2f}" in card and results["recipe"]["corpus_sha256"] in card
    assert "chatbot-llm train" in card


def test_trained_checkpoint_exports_and_generates_the_same_on_both_backends(trained, corpus):
    from chatbot_llm.models import load_text_generator

    greedy = GenerationConfig.resolve({"do_sample": False, "max_new_tokens": 12, "repetition_penalty": 1.0})
    prompts = ["I was walking through", "Then my dog"]
    onnx = load_text_generator(str(trained), "onnx", "fp32").generate(prompts, greedy)
    torch = load_text_generator(str(trained), "torch").generate(prompts, greedy)
    assert [c.tokens for c in onnx] == [c.tokens for c in torch]
    assert all(len(c.tokens) > 0 for c in onnx)
    # it learned the corpus: an untrained model picks ids from all 50,257, this one from the corpus's few
    corpus_ids = set(load_corpus(corpus, 32, seed=0).train.ravel().tolist())
    assert all(set(c.tokens) <= corpus_ids for c in onnx)


def test_resume_continues_from_the_last_checkpoint(corpus, tmp_path):
    from safetensors.numpy import load_file

    paused, straight = tmp_path / "paused", tmp_path / "straight"
    first = run_cli("train", str(corpus), "--out", str(paused), "--max-steps", "6", "--max-minutes", "0.0001", *QUICK)
    assert first.returncode == 0, first.stderr
    state = json.loads((paused / "train_results.json").read_text())
    assert not state["complete"] and state["steps"] < 6 and "--resume" in first.stdout
    second = run_cli("train", str(corpus), "--out", str(paused), "--max-steps", "6", "--resume", *QUICK)
    assert second.returncode == 0, second.stderr
    resumed = json.loads((paused / "train_results.json").read_text())
    assert resumed["complete"] and resumed["steps"] == 6 and resumed["sessions"] == 2
    assert run_cli("train", str(corpus), "--out", str(straight), "--max-steps", "6", *QUICK).returncode == 0
    a, b = load_file(paused / "model.safetensors"), load_file(straight / "model.safetensors")
    # continuing lands exactly where an uninterrupted run does: same data order, RNG and schedule
    assert max(abs(a[k].astype("float32") - b[k].astype("float32")).max() for k in a) < 1e-6


def test_resume_refuses_a_different_recipe(trained, corpus):
    result = run_cli("train", str(corpus), "--out", str(trained), "--max-steps", "80", "--resume", *QUICK)
    assert result.returncode == 2
    assert error_lines(result) == [error_lines(result)[0]] and "max_steps" in error_lines(result)[0]


@pytest.mark.parametrize(
    "content, extra, message",
    [
        (b"", [], "is empty"),
        (b"\n\n  \n\n", [], "is empty"),
        (b"One short dream.\n\nAnother one.\n", [], "smaller than one context"),
        (b"caf\xe9 au lait\n\n" * 200, [], "not UTF-8"),
        (None, [], "does not exist"),
        ("dir", [], "is a directory"),
    ],
)
def test_bad_corpus_gets_one_line(tmp_path, content, extra, message):
    corpus = tmp_path / "corpus.txt"
    if content == "dir":
        corpus.mkdir()
    elif content is not None:
        corpus.write_bytes(content)
    result = run_cli("train", str(corpus), "--out", str(tmp_path / "out"), "--size", "tiny", *extra)
    assert result.returncode == 2, result.stderr
    lines = error_lines(result)
    assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "out" / "config.json").exists()


def test_out_holding_a_model_is_refused_without_force(trained, corpus, tmp_path):
    before = (trained / "model.safetensors").read_bytes()
    result = run_cli("train", str(corpus), "--out", str(trained), "--max-steps", "2", *QUICK)
    assert result.returncode == 2 and "already holds a model" in error_lines(result)[0]
    assert (trained / "model.safetensors").read_bytes() == before
    no_checkpoint = run_cli("train", str(corpus), "--out", str(tmp_path / "new"), "--resume", *QUICK)
    assert no_checkpoint.returncode == 2 and "no training checkpoint" in error_lines(no_checkpoint)[0]


def test_force_replaces_only_what_training_writes(corpus, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "config.json").write_text("{}")
    result = run_cli("train", str(corpus), "--out", str(out), "--max-steps", "2", "--force", *QUICK)
    assert result.returncode == 0, result.stderr
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "config.json").read_text())["model_type"] == "gpt2"


def test_batch_size_must_be_a_multiple_of_the_micro_batch(corpus, tmp_path):
    result = run_cli("train", str(corpus), "--out", str(tmp_path / "o"), "--size", "tiny",
                     "--batch-size", "6", "--micro-batch", "4")
    assert result.returncode == 2 and "multiple" in error_lines(result)[0]
    with pytest.raises(UsageError):
        from chatbot_llm.train.run import check_out

        (tmp_path / "f").write_text("x")
        check_out(tmp_path / "f", resume=False, force=False)
