"""The worker's VRAM plan at start, over recorded NVML answers (the only fake: Kafka and Redis are real).

A 1g.10gb MIG slice holds builtin:tiny, with the batch capped at what the slice's free memory holds; a slice
too small for a 7B-shaped model fails the worker before it loads anything or joins its group.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import onnx
import pytest
from onnx import TensorProto, helper

from brigade.models.registry import resolve_model
from consumer.gpu.capacity import GIB, DeviceTooSmall, Headroom, ModelShape, format_bytes, required_free_bytes
from consumer.gpu.model_shape import read_model_shape
from consumer.gpu.nvml import NoNvidiaDriver, NvmlApi, discover
from consumer.gpu.recorded import replay
from consumer.gpu.start_capacity import plan_start
from consumer.main import serve
from schemas.settings import Settings
from tests.test_gpu_worker_metrics import scrape_worker, series

DATA = Path(__file__).parent / "data" / "nvml"
TINY_CONTEXT = 512  # builtin:tiny's n_positions, under the default 2048 + 1024


def one_g_slice(free: int | None = None) -> tuple[dict[str, Any], str]:
    """The first 1g.10gb slice of an H100 split 7 ways; ``free``: as if another process held the rest."""
    recording = json.loads((DATA / "h100-80gb-mig-7x1g.json").read_text())
    mig = recording["gpus"][0]["mig_devices"][0]
    if free is not None:
        mig["memory"] |= {"free": free, "used": mig["memory"]["total"] - free}
    return recording, mig["uuid"]


def tiny_shape(model_cache_dir: Path) -> ModelShape:
    return read_model_shape(resolve_model("builtin:tiny", cache_dir=model_cache_dir))


def test_the_shape_comes_from_the_graph_inputs_and_the_weight_files(model_cache_dir: Path) -> None:
    model_dir = resolve_model("builtin:tiny", cache_dir=model_cache_dir)
    weights = (model_dir / "model.onnx").stat().st_size + (model_dir / "model.onnx_data").stat().st_size
    # builtin:tiny: 2 layers, 4 heads of 64 / 4 = 16, fp32
    assert read_model_shape(model_dir) == ModelShape(
        n_layer=2, n_head=4, head_dim=16, dtype_bytes=4, weight_bytes=weights
    )


def test_a_whole_slice_holds_tiny_at_the_configured_batch(settings: Settings) -> None:
    recording, uuid = one_g_slice()
    plan = plan_start(settings, env={"NVIDIA_VISIBLE_DEVICES": uuid}, load=lambda: replay(recording))
    assert plan is not None and plan.device.startswith(f"{uuid} (1g.10gb on GPU 0")
    assert plan.capacity.context == TINY_CONTEXT
    assert plan.capacity.kv_tokens > 1_000_000  # 1 KiB a token in fp32: millions fit in 9 GiB
    assert plan.capacity.max_batch == settings.max_batch_size  # the configured limit is the smaller one
    shorter = settings.model_copy(update={"max_prompt_tokens": 100, "max_new_tokens_limit": 28})
    plan = plan_start(shorter, env={"NVIDIA_VISIBLE_DEVICES": uuid}, load=lambda: replay(recording))
    assert plan is not None and plan.capacity.context == 128  # min(model context, prompt + new tokens)


def no_pynvml() -> NvmlApi:
    raise NoNvidiaDriver("pynvml is not installed")


def test_on_the_cpu_there_is_no_plan(settings: Settings) -> None:
    recording, uuid = one_g_slice()
    assert plan_start(settings, env={}, load=no_pynvml) is None
    on_cpu = settings.model_copy(update={"class_devices": {"small": "cpu"}})
    assert plan_start(on_cpu, env={"NVIDIA_VISIBLE_DEVICES": uuid}, load=lambda: replay(recording)) is None


async def test_a_crowded_slice_caps_the_workers_batch_and_exports_the_plan(
    settings: Settings, topics: list[str], model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Free memory for exactly 8 sequences of 512 tokens: the worker runs batches of at most 8."""
    shape = tiny_shape(model_cache_dir)
    free = required_free_bytes(shape=shape, batch=8, context=TINY_CONTEXT, headroom=Headroom())
    recording, uuid = one_g_slice(free)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", uuid)  # what the device plugin sets for a pod given the slice
    text = await scrape_worker(settings, nvml=lambda: replay(recording))
    labels = '{class="small"}'
    assert series(text, "brigade_batch_limit") == {labels: 8.0}  # configured 32, the slice holds 8
    assert series(text, "brigade_capacity_max_batch") == {labels: 8.0}
    assert series(text, "brigade_capacity_context_tokens") == {labels: float(TINY_CONTEXT)}
    kv_tokens = series(text, "brigade_kv_cache_capacity_tokens")[labels]
    assert 8 * TINY_CONTEXT <= kv_tokens < 9 * TINY_CONTEXT


# Llama-2-7B's cache: 32 layers × 32 KV heads × 128, fp16, and 13.5 GB of fp16 weights.
LLAMA_LAYERS, LLAMA_HEADS, LLAMA_HEAD_DIM, LLAMA_WEIGHTS = 32, 32, 128, 13_476_839_424


def llama_7b_shaped(model_dir: Path, *, tokenizer_from: Path) -> Path:
    """Optimum's layout with a 7B model's inputs and a sparse 13.5 GB weight file: planned, never loaded."""
    model_dir.mkdir()
    inputs = [
        helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"]) for n in ("input_ids", "attention_mask")
    ]
    for layer in range(LLAMA_LAYERS):
        for kind in ("key", "value"):
            dims: list[str | int | None] = ["batch", LLAMA_HEADS, "past", LLAMA_HEAD_DIM]
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{layer}.{kind}", TensorProto.FLOAT16, dims))
    weights = TensorProto(name="weights", dims=[LLAMA_WEIGHTS // 2], data_type=TensorProto.FLOAT16)
    weights.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "model.onnx_data"), ("offset", "0"), ("length", str(LLAMA_WEIGHTS))):
        entry = weights.external_data.add()
        entry.key, entry.value = key, value
    logits = helper.make_tensor_value_info("logits", TensorProto.INT64, ["batch", "seq"])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input_ids"], ["logits"])], "llama-7b-shaped", inputs, [logits], [weights]
    )
    (model_dir / "model.onnx").write_bytes(helper.make_model(graph).SerializeToString())
    with (model_dir / "model.onnx_data").open("wb") as data:
        data.truncate(LLAMA_WEIGHTS)  # sparse: no disk used
    config = {"model_type": "llama", "max_position_embeddings": 4096, "num_attention_heads": LLAMA_HEADS}
    (model_dir / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_from / name, model_dir / name)
    onnx.load(str(model_dir / "model.onnx"), load_external_data=False)  # a well-formed graph file
    return model_dir


async def test_a_slice_too_small_for_the_model_fails_before_loading_or_joining(
    settings: Settings, topics: list[str], model_cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = llama_7b_shaped(tmp_path / "llama", tokenizer_from=resolve_model("builtin:tiny", cache_dir=model_cache_dir))
    shape = read_model_shape(big)
    assert shape == ModelShape(n_layer=32, n_head=32, head_dim=128, dtype_bytes=2, weight_bytes=shape.weight_bytes)
    assert shape.weight_bytes > LLAMA_WEIGHTS
    api = replay(DATA / "h100-80gb-mig-mixed.json")
    busy = discover(api).gpus[0].mig_devices[2]  # a 1g.10gb slice with 6 GiB already taken
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", busy.uuid)
    ready: list[int] = []
    with pytest.raises(DeviceTooSmall) as err:
        await asyncio.wait_for(
            serve(
                settings.model_copy(update={"model": str(big)}),
                stop=asyncio.Event(),
                ready=ready.append,
                nvml=lambda: replay(DATA / "h100-80gb-mig-mixed.json"),
            ),
            timeout=60,
        )
    assert ready == []  # never ready, so never in the group
    context = 2048 + 1024  # under the model's 4096
    need = required_free_bytes(shape=shape, batch=1, context=context, headroom=Headroom())
    assert str(err.value).startswith(
        f"device {busy.uuid} (1g.10gb on GPU 0, NVIDIA H100 80GB HBM3) has 3.75 GiB free but the model needs "
        f"{format_bytes(need)} (weights {format_bytes(shape.weight_bytes)} + KV cache 1.50 GiB for batch 1 × 3072 "
        "tokens + 512 MiB reserve, keeping 10% free)"
    )
    assert need > 14 * GIB
