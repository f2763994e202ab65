"""GPU memory on a worker's /metrics: the NVML collector registered for the worker's own device, with its class
label, from recorded NVML answers; and nothing at all where NVML, a GPU or a GPU binding is missing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from consumer.gpu.nvml import NoNvidiaDriver, NvmlApi, discover
from consumer.gpu.recorded import RecordedNvml, replay
from consumer.gpu.worker_metrics import attach_gpu_metrics
from consumer.main import serve
from schemas.settings import Settings

DATA = Path(__file__).parent / "data" / "nvml"
MIB = 1024 * 1024
H100 = "GPU-e2173dbe-2b4e-5869-ae34-f0cf646613b6"


def series(text: str, name: str) -> dict[str, float]:
    """Label set → value of every sample of ``name`` in an exposition text."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line[len(name) :].rsplit(" ", 1)
            out[labels] = float(value)
    return out


def no_pynvml() -> NvmlApi:
    raise NoNvidiaDriver("pynvml is not installed; pip install 'brigade[gpu]' adds it")


def test_the_bound_gpu_is_exported_with_the_workers_class_and_released_on_close() -> None:
    api = replay(DATA / "h100-80gb.json")
    registry = CollectorRegistry()
    gpu = attach_gpu_metrics(registry, device="auto", cost_class="large", env={}, load=lambda: api)
    assert gpu is not None and gpu.uuid == H100
    labels = {"uuid": H100, "gpu": "0", "profile": "", "class": "large"}
    assert registry.get_sample_value("brigade_gpu_memory_used_bytes", labels) == 18_432 * MIB
    assert registry.get_sample_value("brigade_gpu_memory_total_bytes", labels) == discover(api).gpus[0].memory_total
    gpu.close()
    assert "brigade_gpu" not in generate_latest(registry).decode()
    with pytest.raises(NoNvidiaDriver):  # NVML was shut down: the recorded fake refuses calls again
        discover(api)


def test_a_worker_on_a_mig_slice_exports_that_slice_only() -> None:
    api = replay(DATA / "h100-80gb-mig-mixed.json")
    mine = discover(api).gpus[0].mig_devices[2]
    registry = CollectorRegistry()
    env = {"NVIDIA_VISIBLE_DEVICES": mine.uuid}  # what the device plugin sets for a pod given this slice
    gpu = attach_gpu_metrics(registry, device="auto", cost_class="small", env=env, load=lambda: api)
    assert gpu is not None
    assert series(generate_latest(registry).decode(), "brigade_gpu_memory_used_bytes") == {
        f'{{class="small",gpu="0",profile="{mine.profile}",uuid="{mine.uuid}"}}': float(mine.memory_used)
    }
    gpu.close()


@pytest.mark.parametrize(
    ("load", "device"),
    [
        (no_pynvml, "auto"),  # this CPU machine: the gpu extra is not installed
        (lambda: replay(DATA / "driver-not-loaded.json"), "auto"),  # NVML library, no kernel driver
        (lambda: replay(DATA / "h100-80gb.json"), "cpu"),  # a GPU node, but this worker was told to use the CPU
        (lambda: replay(DATA / "h100-80gb.json"), "MIG-nonexistent"),  # a device setting that cannot bind
    ],
)
def test_without_a_gpu_nothing_is_exported(load: object, device: str) -> None:
    registry = CollectorRegistry()
    assert attach_gpu_metrics(registry, device=device, cost_class="small", env={}, load=load) is None  # type: ignore[arg-type]
    assert "brigade_gpu" not in generate_latest(registry).decode()


def test_recorded_shutdown_is_balanced() -> None:
    api = RecordedNvml.from_file(DATA / "h100-80gb.json")
    registry = CollectorRegistry()

    def load() -> NvmlApi:
        api.nvmlInit()
        return api

    assert attach_gpu_metrics(registry, device="cpu", cost_class="small", env={}, load=load) is None
    with pytest.raises(NoNvidiaDriver):  # the CPU-bound path shut NVML down again
        discover(api)


async def scrape_worker(settings: Settings, **serve_kw: object) -> str:
    """Start a real worker (in-process), read its /metrics over HTTP once it is ready, then stop it."""
    stop = asyncio.Event()
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(settings, stop=stop, ready=ready.set_result, **serve_kw))  # type: ignore[arg-type]
    try:
        port = await asyncio.wait_for(asyncio.shield(ready), timeout=60)
        async with httpx.AsyncClient() as http:
            return (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=60)


async def test_brigade_worker_metrics_endpoint_has_gpu_memory_when_nvml_answers(
    settings: Settings, topics: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"):
        monkeypatch.delenv(var, raising=False)
    text = await scrape_worker(settings, nvml=lambda: replay(DATA / "h100-80gb.json"))
    labels = f'{{class="small",gpu="0",profile="",uuid="{H100}"}}'
    assert series(text, "brigade_gpu_memory_used_bytes") == {labels: 18_432 * MIB}
    assert "brigade_gpu_nvml_up 1.0" in text
    assert "brigade_gpu" not in await scrape_worker(settings, nvml=no_pynvml)
