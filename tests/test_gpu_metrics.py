"""The GPU collector on a fresh registry, reading recorded NVML answers at scrape time."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from consumer.gpu.metrics import GpuCollector
from consumer.gpu.nvml import NVML_ERROR_GPU_IS_LOST, NvmlApi, discover
from consumer.gpu.recorded import RecordedNvml, replay

DATA = Path(__file__).parent / "data" / "nvml"
MIB = 1024 * 1024


def registry_for(api: NvmlApi, uuids: set[str] | None = None) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(GpuCollector(api, uuids=uuids))
    return registry


def recording(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / name).read_text())
    return data


def test_whole_gpu_memory_and_utilization() -> None:
    api = replay(DATA / "h100-80gb.json")
    gpu = discover(api).gpus[0]
    registry = registry_for(api)
    labels = {"uuid": gpu.uuid, "gpu": "0", "profile": ""}
    assert registry.get_sample_value("brigade_gpu_memory_used_bytes", labels) == 18_432 * MIB
    assert registry.get_sample_value("brigade_gpu_memory_total_bytes", labels) == gpu.memory_total
    assert registry.get_sample_value("brigade_gpu_utilization_ratio", labels) == 0.37
    assert registry.get_sample_value("brigade_gpu_nvml_up") == 1.0


def test_each_mig_instance_is_its_own_series() -> None:
    api = replay(DATA / "h100-80gb-mig-mixed.json")
    inv = discover(api)
    registry = registry_for(api)
    for mig in inv.mig_devices():
        labels = {"uuid": mig.uuid, "gpu": "0", "profile": mig.profile}
        assert registry.get_sample_value("brigade_gpu_memory_used_bytes", labels) == mig.memory_used
        assert registry.get_sample_value("brigade_gpu_memory_total_bytes", labels) == mig.memory_total
        # NVML has no utilization for MIG instances: the series is absent, not a misleading 0.
        assert registry.get_sample_value("brigade_gpu_utilization_ratio", labels) is None
    parent = {"uuid": inv.gpus[0].uuid, "gpu": "0", "profile": ""}
    assert registry.get_sample_value("brigade_gpu_memory_total_bytes", parent) == inv.gpus[0].memory_total


def test_a_worker_exports_only_its_own_device() -> None:
    api = replay(DATA / "h100-80gb-mig-mixed.json")
    mine = discover(api).gpus[0].mig_devices[2]
    text = generate_latest(registry_for(api, uuids={mine.uuid})).decode()
    series = [line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("brigade_gpu_memory_used_bytes{")]
    assert [(name, float(value)) for name, value in series] == [
        (f'brigade_gpu_memory_used_bytes{{gpu="0",profile="1g.10gb",uuid="{mine.uuid}"}}', 6144 * MIB)
    ]


def test_figures_are_read_at_scrape_time() -> None:
    raw = copy.deepcopy(recording("h100-80gb.json"))
    api = replay(raw)
    registry = registry_for(api)
    labels = {"uuid": raw["gpus"][0]["uuid"], "gpu": "0", "profile": ""}
    raw["gpus"][0]["memory"]["used"] = 40 * 1024 * MIB
    raw["gpus"][0]["utilization"]["gpu"] = 100
    assert registry.get_sample_value("brigade_gpu_memory_used_bytes", labels) == 40 * 1024 * MIB
    assert registry.get_sample_value("brigade_gpu_utilization_ratio", labels) == 1.0


def test_nvml_failure_is_visible_and_does_not_break_the_scrape() -> None:
    raw = copy.deepcopy(recording("h100-80gb.json"))
    raw["gpus"][0]["memory"] = {"error": NVML_ERROR_GPU_IS_LOST}
    registry = registry_for(replay(raw))
    assert registry.get_sample_value("brigade_gpu_nvml_up") == 0.0
    text = generate_latest(registry).decode()
    assert "# TYPE brigade_gpu_memory_used_bytes gauge" not in text
    assert "brigade_gpu_nvml_up 0.0" in text


def test_registering_does_not_touch_nvml() -> None:
    api = RecordedNvml(recording("h100-80gb.json"))  # not initialised: any NVML call would fail
    registry = registry_for(api)
    assert registry.get_sample_value("brigade_gpu_nvml_up") == 0.0
    api.nvmlInit()
    assert registry.get_sample_value("brigade_gpu_nvml_up") == 1.0
