"""Export once: reused while up to date (by manifest), redone when the checkpoint changes."""

from __future__ import annotations

import json
import shutil

import pytest

import chatbot_llm.export.pipeline as pipeline
from chatbot_llm.errors import UsageError
from chatbot_llm.export.manifest import check_export
from chatbot_llm.models import ensure_export, resolve_model

from conftest import make_checkpoint


def test_manifest_records_source_tools_and_parity(exports, tiny_checkpoint):
    for variant, folder in exports.items():
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["variant"] == variant and manifest["opset"] >= 14
        assert len(manifest["source"]["sha256"]) == 64 and manifest["source"]["path"] == str(tiny_checkpoint)
        assert {"torch", "transformers", "optimum-onnx", "onnxruntime"} <= set(manifest["tools"])
        parity = manifest["parity"]
        if variant in ("int8", "int4"):  # recorded, not required: quantization moves logits
            assert 0 < parity["max_abs_logits_delta"] < parity["max_abs_logits"]
            assert 0.0 <= parity["greedy_token_agreement"] <= 1.0
        else:
            bound = 1e-4 if variant == "opt" else 1e-3  # the decoder graph: within 1e-4 of PyTorch's logits
            assert parity["max_abs_logits_delta"] <= bound * max(1.0, parity["max_abs_logits"])
            assert parity["greedy_token_agreement"] == 1.0
        assert {"model.onnx", "tokenizer.json", "config.json", "generation_config.json"} <= {
            p.name for p in folder.iterdir()
        }


def test_up_to_date_export_is_reused_without_exporting(exports, tiny_checkpoint, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("re-exported an up-to-date model")

    monkeypatch.setattr(pipeline, "export_checkpoint", must_not_run)
    ref = resolve_model(str(tiny_checkpoint))
    for variant, folder in exports.items():
        assert ensure_export(ref, variant, on_stage=lambda s: None) == folder


def test_changed_checkpoint_is_re_exported(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "changing", seed=1)
    ref = resolve_model(str(checkpoint))
    first = json.loads((ensure_export(ref, "fp32", lambda s: None) / "manifest.json").read_text())
    assert ref.status("fp32").ok
    make_checkpoint(checkpoint, seed=2)  # new weights in the same folder
    status = ref.status("fp32")
    assert status.state == "stale" and "model.safetensors" in status.reason
    stages = []
    second = json.loads((ensure_export(ref, "fp32", stages.append) / "manifest.json").read_text())
    assert any("re-exporting" in s for s in stages)
    assert second["source"]["sha256"] != first["source"]["sha256"]
    assert ref.status("fp32").ok


def test_a_truncated_model_is_reported_corrupt(exports, tmp_path):
    copy = tmp_path / "opt"
    shutil.copytree(exports["opt"], copy)
    model = copy / "model.onnx"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    status = check_export(copy, None, "opt")
    assert status.state == "corrupt" and "model.onnx" in status.reason


def test_an_export_folder_can_be_used_directly(exports):
    ref = resolve_model(str(exports["int8"]))
    assert ref.checkpoint is None and ref.export_dir("int8") == exports["int8"]
    with pytest.raises(UsageError, match="is a int8 export"):
        ref.export_dir("opt")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: None, "no config.json"),
        (lambda d: (d / "config.json").write_text('{"model_type": "bert"}'), "not 'gpt2'"),
        (lambda d: (d / "config.json").write_text("{not json"), "not valid JSON"),
    ],
)
def test_folders_that_are_not_gpt2_checkpoints(tmp_path, make, message):
    folder = tmp_path / "bad"
    folder.mkdir()
    make(folder)
    with pytest.raises(UsageError, match=message):
        resolve_model(str(folder))


def test_config_without_weights(tmp_path, tiny_checkpoint):
    folder = tmp_path / "noweights"
    folder.mkdir()
    shutil.copyfile(tiny_checkpoint / "config.json", folder / "config.json")
    with pytest.raises(UsageError, match="no weights"):
        pipeline.check_checkpoint(folder)


def test_weights_that_do_not_match_the_config(tmp_path, tiny_checkpoint):
    folder = make_checkpoint(tmp_path / "mismatch", n_embd=64)
    shutil.copyfile(tiny_checkpoint / "config.json", folder / "config.json")  # says n_embd 32
    with pytest.raises(UsageError, match="cannot load"):
        pipeline.export_checkpoint(folder, tmp_path / "out" / "fp32", "fp32", name="mismatch")
    assert not (tmp_path / "out" / "fp32").exists()
    assert not [p for p in (tmp_path / "out").iterdir() if ".partial-" in p.name]


def test_an_export_made_by_an_older_recipe_is_redone(tmp_path):
    """A new chatbot-llm that exports better graphs re-exports old ones on first use, once."""
    from chatbot_llm.export.manifest import RECIPE

    checkpoint = make_checkpoint(tmp_path / "old", seed=4)
    ref = resolve_model(str(checkpoint))
    manifest_path = ensure_export(ref, "fp32", lambda s: None) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["recipe"] == RECIPE
    del manifest["recipe"]  # as an export from before recipes were recorded
    manifest_path.write_text(json.dumps(manifest))
    status = ref.status("fp32")
    assert status.state == "stale" and "older chatbot-llm export" in status.reason
    stages = []
    ensure_export(ref, "fp32", stages.append)
    assert any("re-exporting" in s for s in stages) and ref.status("fp32").ok
