"""Defaults, validation and precedence of the generation parameters."""

from __future__ import annotations

import math

import pytest

from chatbot_llm.config import SEED_DEFAULTS, GenerationConfig, load_generation_config_json, load_toml
from chatbot_llm.errors import UsageError


def test_seed_defaults_are_the_original_tools():
    config = GenerationConfig.resolve()
    assert (config.max_new_tokens, config.temperature, config.top_p, config.top_k) == (300, 1.7, 1.0, 500)
    assert (config.repetition_penalty, config.no_repeat_ngram_size, config.do_sample) == (0.9, 0, True)
    assert config == GenerationConfig(**SEED_DEFAULTS)


def test_precedence_cli_over_file_over_model_over_seed():
    model = {"temperature": 0.8, "top_k": 40, "top_p": 0.95}
    toml = {"temperature": 0.5, "top_k": 20}
    cli = {"temperature": 0.3}
    config = GenerationConfig.resolve(model, toml, cli)
    assert (config.temperature, config.top_k, config.top_p, config.max_new_tokens) == (0.3, 20, 0.95, 300)


def test_max_new_tokens_wins_over_max_length_from_the_same_source():
    config = GenerationConfig.resolve({"max_length": 50, "max_new_tokens": 7})
    assert config.new_tokens_for(prompt_length=10) == 7


def test_max_length_from_a_higher_source_replaces_the_seeds_max_new_tokens():
    config = GenerationConfig.resolve({}, {}, {"max_length": 30})
    assert config.max_new_tokens is None
    assert config.new_tokens_for(prompt_length=10) == 20
    assert config.new_tokens_for(prompt_length=40) == 1  # like generate(): at least one token


@pytest.mark.parametrize(
    "changes, flag",
    [
        (dict(temperature=0.0), "--temperature"),
        (dict(temperature=-1.0), "--temperature"),
        (dict(top_p=0.0), "--top-p"),
        (dict(top_p=1.5), "--top-p"),
        (dict(top_k=-1), "--top-k"),
        (dict(repetition_penalty=0.0), "--repetition-penalty"),
        (dict(max_new_tokens=0), "--max-new-tokens"),
        (dict(max_length=0, max_new_tokens=None), "--max-length"),
        (dict(no_repeat_ngram_size=-2), "--no-repeat-ngram-size"),
        (dict(seed=-1), "--seed"),
        (dict(temperature=math.nan), "--temperature"),
        (dict(top_k=2.5), "--top-k"),
        (dict(do_sample="yes"), "--do-sample"),
    ],
)
def test_invalid_values_name_the_option(changes, flag):
    with pytest.raises(UsageError, match=flag):
        GenerationConfig(**changes)


def test_temperature_zero_is_fine_when_greedy():
    assert GenerationConfig(temperature=0.0, do_sample=False).temperature == 0.0


def test_toml_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('temperature = 1\ntop-k = 40\ndo_sample = false\n')
    assert load_toml(path) == {"temperature": 1.0, "top_k": 40, "do_sample": False}


@pytest.mark.parametrize(
    "text, message",
    [
        ("temprature = 1.0\n", "unknown key 'temprature'"),
        ("temperature = \n", "not valid TOML"),
        ('top_k = "many"\n', "top_k must be an integer"),
    ],
)
def test_bad_toml_files(tmp_path, text, message):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(UsageError, match=message):
        load_toml(path)


def test_generation_config_json_keeps_only_generation_parameters(tmp_path):
    path = tmp_path / "generation_config.json"
    path.write_text('{"bos_token_id": 50256, "eos_token_id": 50256, "temperature": 0.9, "top_k": 40, '
                    '"transformers_version": "4.57.6"}')
    assert load_generation_config_json(path) == {"temperature": 0.9, "top_k": 40}
