"""Model resolution and the built-in models: generated in code, Optimum's layout, atomic in the cache."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from brigade.models.registry import ModelNotFound, load_tokenizer, resolve_model
from brigade.models.specs import BUILTIN_MODELS

TINY = BUILTIN_MODELS["tiny"]


def test_load_tokenizer_generates_only_tokenizer_files(tmp_path: Path) -> None:
    tok = load_tokenizer("builtin:tiny", cache_dir=tmp_path)
    text = "The chef calls: é, 漢字 and 🙂 too"
    assert tok.decode(tok.encode(text).ids) == text
    assert not list(tmp_path.rglob("*.onnx")), "the ingress must not pay for generating weights"
    assert not [p for p in tmp_path.iterdir() if p.is_dir() and p.name.startswith(".")], "no temp dir left"


def test_tokenizer_is_the_same_wherever_it_is_generated(tmp_path: Path, model_cache_dir: Path) -> None:
    a = load_tokenizer("builtin:tiny", cache_dir=tmp_path / "a")
    b = load_tokenizer("builtin:tiny", cache_dir=model_cache_dir)
    assert a.to_str() == b.to_str()


@pytest.mark.parametrize("spec", ["builtin:nope", "gpt2", "/no/such/model/dir"])
def test_unknown_specs_are_rejected_with_the_accepted_forms(spec: str, tmp_path: Path) -> None:
    for call in (load_tokenizer, resolve_model):
        with pytest.raises(ModelNotFound) as info:
            call(spec, cache_dir=tmp_path)
        message = str(info.value)
        assert repr(spec) in message
        assert "builtin:tiny" in message and "builtin:gpt2-small-shape" in message and "optimum-cli" in message
    assert isinstance(info.value, ValueError)


def test_a_directory_without_a_model_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ModelNotFound, match=r"model\.onnx"):
        resolve_model(str(tmp_path), cache_dir=tmp_path)


def test_builtin_tiny_has_optimums_decoder_with_past_layout(model_cache_dir: Path) -> None:
    model_dir = resolve_model("builtin:tiny", cache_dir=model_cache_dir)
    assert resolve_model("builtin:tiny", cache_dir=model_cache_dir) == model_dir
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == "gpt2"
    assert (config["n_layer"], config["n_head"], config["n_embd"], config["n_positions"]) == (2, 4, 64, 512)
    tok_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert tok_config["eos_token"] == "<|endoftext|>" and "chat_template" in tok_config
    onnx.checker.check_model(str(model_dir / "model.onnx"))

    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    past = [f"past_key_values.{i}.{kind}" for i in range(2) for kind in ("key", "value")]
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "position_ids", *past]
    present = [name.replace("past_key_values", "present") for name in past]
    assert [o.name for o in session.get_outputs()] == ["logits", *present]

    feeds: dict[str, np.ndarray] = {
        "input_ids": np.array([[5, 6, 7]]),
        "attention_mask": np.ones((1, 3), dtype=np.int64),
        "position_ids": np.array([[0, 1, 2]]),
    }
    feeds |= {name: np.zeros((1, 4, 0, 16), dtype=np.float32) for name in past}
    logits, *kv = session.run(None, feeds)
    assert logits.shape == (1, 3, config["vocab_size"])  # full logits unless logits_to_keep is given
    assert all(t.shape == (1, 4, 3, 16) for t in kv)
    assert 1.0 < float(logits[0, -1].std()) < 10.0, "random logits neither flat nor one-hot"


def test_a_user_directory_is_served_as_it_is(model_cache_dir: Path, tmp_path: Path) -> None:
    user_dir = tmp_path / "my-export"
    shutil.copytree(resolve_model("builtin:tiny", cache_dir=model_cache_dir), user_dir)
    assert resolve_model(str(user_dir), cache_dir=tmp_path / "unused") == user_dir.resolve()
    assert load_tokenizer(str(user_dir), cache_dir=tmp_path / "unused").get_vocab_size() > 256


def test_concurrent_generation_yields_one_complete_directory(tmp_path: Path) -> None:
    (tmp_path / f".{TINY.dir_name}.crashed").mkdir()  # a generator killed halfway, earlier
    results: list[Path] = []
    errors: list[BaseException] = []

    def resolve() -> None:
        try:
            results.append(resolve_model("builtin:tiny", cache_dir=tmp_path))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=resolve) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert len(results) == 3 and len(set(results)) == 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [TINY.dir_name]
    assert sorted(p.name for p in (tmp_path / TINY.dir_name).iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.onnx",
        "model.onnx_data",
        "tokenizer.json",
        "tokenizer_config.json",
    ]


@pytest.mark.slow
def test_gpt2_small_shape_has_gpt2_small_shapes(tmp_path: Path) -> None:
    model_dir = resolve_model("builtin:gpt2-small-shape", cache_dir=tmp_path)
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs = {i.name: i.shape for i in session.get_inputs()}
    assert inputs["past_key_values.11.value"] == ["batch_size", 12, "past_sequence_length", 64]
    assert session.get_outputs()[0].shape == ["batch_size", "logits_length", 50257]
    feeds: dict[str, np.ndarray] = {
        "input_ids": np.array([[1, 2]]),
        "attention_mask": np.ones((1, 2), dtype=np.int64),
        "position_ids": np.array([[0, 1]]),
        "logits_to_keep": np.array(1),
    }
    feeds |= {name: np.zeros((1, 12, 0, 64), dtype=np.float32) for name in inputs if name.startswith("past_")}
    logits, *kv = session.run(None, feeds)
    assert logits.shape == (1, 1, 50257) and len(kv) == 24 and kv[0].shape == (1, 12, 2, 64)
