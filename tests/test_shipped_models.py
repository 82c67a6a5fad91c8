"""The shipped models, models/dream_gpt2 and models/email_gpt2: they load, export and match PyTorch."""

from __future__ import annotations

import json

import pytest

from chatbot_llm.config import GenerationConfig
from tests.conftest import REPO

SHIPPED = {"dream": REPO / "models" / "dream_gpt2", "email": REPO / "models" / "email_gpt2"}
PROMPTS = {
    "dream": ["I was walking through my old school", "I dreamed that my mother and I were", "We were at the beach"],
    "email": ["Subject: meeting tomorrow", "Subject: Re: gas contracts\nJohn,", "Please send me the"],
}
GREEDY = GenerationConfig.resolve({"do_sample": False, "max_new_tokens": 24, "repetition_penalty": 1.0})
MAX_FOLDER_MB = 40


@pytest.fixture(scope="module", params=list(SHIPPED))
def shipped(request):
    return request.param, SHIPPED[request.param]


def test_folder_is_a_small_standard_checkpoint_with_a_card(shipped):
    name, folder = shipped
    files = {p.name for p in folder.iterdir() if p.is_file()}
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer.json",
            "generation_config.json", "README.md", "train_results.json"} <= files
    assert sum((folder / f).stat().st_size for f in files) / 1e6 <= MAX_FOLDER_MB
    results = json.loads((folder / "train_results.json").read_text())
    assert results["complete"]
    card = (folder / "README.md").read_text()
    assert f"{results['heldout_perplexity']:.2f}" in card and results["recipe"]["corpus_sha256"] in card
    assert "chatbot-llm train" in card


@pytest.fixture(scope="module")
def generators(shipped):
    from chatbot_llm.models import load_text_generator

    name, folder = shipped
    made = {v: load_text_generator(str(folder), "onnx", v) for v in ("fp32", "opt", "int8")}
    made["torch"] = load_text_generator(str(folder), "torch")
    return name, folder, made


def test_exports_pass_their_parity_check(generators):
    from chatbot_llm.models import resolve_model

    _, folder, _ = generators
    ref = resolve_model(str(folder))
    for variant in ("fp32", "opt", "int8"):
        status = ref.status(variant)
        assert status.ok, (variant, status.describe())
        parity = json.loads((ref.export_dir(variant) / "manifest.json").read_text())["parity"]
        if variant != "int8":
            assert parity["max_abs_logits_delta"] < 1e-3


def test_greedy_onnx_matches_torch(generators):
    name, _, made = generators
    torch = [c.tokens for c in made["torch"].generate(PROMPTS[name], GREEDY)]
    for variant in ("fp32", "opt"):
        assert [c.tokens for c in made[variant].generate(PROMPTS[name], GREEDY)] == torch, variant
    int8 = [c.tokens for c in made["int8"].generate(PROMPTS[name], GREEDY)]
    # weight-only 8-bit rounding may flip a near-tie late in a reply; the first tokens must agree
    assert all(a[:8] == b[:8] for a, b in zip(int8, torch)), (int8, torch)
