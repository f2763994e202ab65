"""NVML discovery against recorded answers: the fake sits at the pynvml boundary, nowhere else."""

from __future__ import annotations

import copy
import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from consumer.gpu.nvml import (
    NVML_ERROR_GPU_IS_LOST,
    NVML_ERROR_UNINITIALIZED,
    Inventory,
    NoNvidiaDriver,
    NvmlError,
    discover,
    mig_profile_name,
)
from consumer.gpu.pynvml_api import PynvmlApi, load_nvml
from consumer.gpu.recorded import RecordedNvml, record, replay
from consumer.gpu.report import gpus_table, inspect_gpus

DATA = Path(__file__).parent / "data" / "nvml"
MIB = 1024 * 1024
H100_TOTAL = 81559 * MIB
A100_TOTAL = 40960 * MIB


def recording(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / name).read_text())
    return data


def inventory(name: str) -> Inventory:
    return discover(replay(DATA / name))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("h100-80gb.json", [("NVIDIA H100 80GB HBM3", False, [])]),
        ("h100-80gb-mig-7x1g.json", [("NVIDIA H100 80GB HBM3", True, ["1g.10gb"] * 7)]),
        ("h100-80gb-mig-mixed.json", [("NVIDIA H100 80GB HBM3", True, ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"])]),
        ("a100-40gb-x2.json", [("NVIDIA A100-SXM4-40GB", False, []), ("NVIDIA A100-SXM4-40GB", True, ["3g.20gb"] * 2)]),
        ("l4-no-mig.json", [("NVIDIA L4", False, [])]),  # MIG queries answer NOT_SUPPORTED: means "no MIG"
    ],
)
def test_layouts(name: str, expected: list[tuple[str, bool, list[str]]]) -> None:
    inv = inventory(name)
    assert [(g.name, g.mig_enabled, [m.profile for m in g.mig_devices]) for g in inv.gpus] == expected
    assert [g.index for g in inv.gpus] == list(range(len(expected)))
    assert inv.driver_version == "550.90.07"
    assert inv.driver_error is None


def test_figures_come_from_nvml_unchanged() -> None:
    inv = inventory("h100-80gb-mig-mixed.json")
    raw = recording("h100-80gb-mig-mixed.json")["gpus"][0]
    gpu = inv.gpus[0]
    assert gpu.uuid == raw["uuid"] and gpu.uuid.startswith("GPU-")
    memory = raw["memory"]
    assert (gpu.memory_total, gpu.memory_used, gpu.memory_free) == (memory["total"], memory["used"], memory["free"])
    busy = gpu.mig_devices[2]
    assert busy.uuid.startswith("MIG-") and busy.parent_index == 0
    assert (busy.memory_total, busy.memory_used) == (9984 * MIB, 6144 * MIB)
    assert busy.memory_free == busy.memory_total - busy.memory_used
    assert [m.slot for m in gpu.mig_devices] == [0, 1, 2, 4]  # slot 3 is empty: NVML answers NOT_FOUND there
    assert list(inv.mig_devices()) == list(gpu.mig_devices)


@pytest.mark.parametrize(
    ("gpu_slices", "compute_slices", "memory_mb", "parent_total", "name"),
    [
        (1, 1, 9984, H100_TOTAL, "1g.10gb"),  # 9.75 GiB rounds to an eighth of the GPU: "10gb", as nvidia-smi says
        (1, 1, 20096, H100_TOTAL, "1g.20gb"),
        (2, 2, 20096, H100_TOTAL, "2g.20gb"),
        (3, 3, 40448, H100_TOTAL, "3g.40gb"),
        (4, 4, 40448, H100_TOTAL, "4g.40gb"),
        (7, 7, 81152, H100_TOTAL, "7g.80gb"),
        (1, 1, 4864, A100_TOTAL, "1g.5gb"),
        (2, 2, 9856, A100_TOTAL, "2g.10gb"),
        (3, 3, 19968, A100_TOTAL, "3g.20gb"),
        (7, 7, 40192, A100_TOTAL, "7g.40gb"),
        (3, 1, 40448, H100_TOTAL, "1c.3g.40gb"),  # a compute instance smaller than its GPU instance
    ],
)
def test_mig_profile_names(gpu_slices: int, compute_slices: int, memory_mb: int, parent_total: int, name: str) -> None:
    got = mig_profile_name(
        gpu_slices=gpu_slices, compute_slices=compute_slices, memory_size_mb=memory_mb, parent_memory_total=parent_total
    )
    assert got == name


def test_driver_not_loaded_is_no_nvidia_driver() -> None:
    with pytest.raises(NoNvidiaDriver, match="Driver Not Loaded"):
        replay(DATA / "driver-not-loaded.json")
    inv = inspect_gpus(lambda: replay(DATA / "driver-not-loaded.json"))
    assert inv.gpus == () and inv.driver_error is not None and "Driver Not Loaded" in inv.driver_error


def test_nvml_failure_mid_discovery_is_no_nvidia_driver() -> None:
    lost = copy.deepcopy(recording("h100-80gb-mig-mixed.json"))
    lost["gpus"][0]["mig_devices"][1]["memory"] = {"error": NVML_ERROR_GPU_IS_LOST}
    with pytest.raises(NoNvidiaDriver, match=r"NVML failed while listing GPUs: .*GPU is lost"):
        discover(replay(lost))


def test_the_fake_refuses_calls_before_init_as_nvml_does() -> None:
    api = RecordedNvml(recording("h100-80gb.json"))
    with pytest.raises(NvmlError) as err:
        api.nvmlDeviceGetCount()
    assert err.value.code == NVML_ERROR_UNINITIALIZED
    with pytest.raises(NoNvidiaDriver):
        discover(api)


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("*.json") if "driver" not in p.name))
def test_record_then_replay_round_trips(name: str) -> None:
    api = replay(DATA / name)
    again = record(api, about="round trip")
    assert discover(replay(again)) == discover(api)


def test_inspect_gpus_shuts_nvml_down() -> None:
    api = replay(DATA / "h100-80gb.json")
    inv = inspect_gpus(lambda: api)
    assert len(inv.gpus) == 1
    with pytest.raises(NvmlError):  # the one init was released
        api.nvmlDeviceGetCount()


def test_gpus_table_lists_instances_with_uuid_profile_and_memory() -> None:
    inv = inventory("h100-80gb-mig-mixed.json")
    text = gpus_table(inv)
    for mig in inv.mig_devices():
        assert mig.uuid in text
    for fragment in ("NVIDIA H100 80GB HBM3", "enabled", "3g.40gb", "2g.20gb", "6.00 GiB / 9.75 GiB", "0/4"):
        assert fragment in text


def test_gpus_table_says_plainly_when_there_is_no_driver() -> None:
    text = gpus_table(Inventory.without_driver("pynvml is not installed"))
    assert text.startswith("no NVIDIA driver found (pynvml not installed or NVML failed: pynvml is not installed)")
    assert "workers will run on the CPU" in text


def test_gpus_table_flags_mig_gpu_without_instances() -> None:
    raw = copy.deepcopy(recording("h100-80gb-mig-7x1g.json"))
    raw["gpus"][0]["mig_devices"] = []
    assert "no MIG instances" in gpus_table(discover(replay(raw)))


def test_load_nvml_without_pynvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # what a machine without the gpu extra sees
    with pytest.raises(NoNvidiaDriver, match=r"pynvml is not installed; pip install 'brigade\[gpu\]'"):
        load_nvml()
    assert "pynvml is not installed" in (inspect_gpus().driver_error or "")


class _FakeNVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"code {value}")
        self.value = value


def _fake_pynvml(fail_init: int | None = None) -> types.ModuleType:
    """Stands in for pynvml's module: ctypes-like structs and bytes, to test the adapter's conversions."""
    module = types.ModuleType("pynvml")
    ns = types.SimpleNamespace
    calls: dict[str, Any] = {
        "nvmlDeviceGetName": lambda h: b"NVIDIA H100 80GB HBM3",  # old nvidia-ml-py returns bytes
        "nvmlDeviceGetUUID": lambda h: "GPU-1",
        "nvmlDeviceGetMemoryInfo": lambda h: ns(total=10, free=7, used=3),
        "nvmlDeviceGetUtilizationRates": lambda h: ns(gpu=40, memory=5),
        "nvmlDeviceGetMigMode": lambda h: [1, 0],
        "nvmlDeviceGetAttributes": lambda h: ns(gpuInstanceSliceCount=3, computeInstanceSliceCount=3, memorySizeMB=9),
        "nvmlDeviceGetMaxMigDeviceCount": lambda h: 7,
    }
    for name, fn in calls.items():
        setattr(module, name, fn)

    def init() -> None:
        if fail_init is not None:
            raise _FakeNVMLError(fail_init)

    module.nvmlInit = init  # type: ignore[attr-defined]
    module.NVMLError = _FakeNVMLError  # type: ignore[attr-defined]
    return module


def test_pynvml_adapter_converts_answers_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    api = PynvmlApi(_fake_pynvml())
    assert api.nvmlDeviceGetName(object()) == "NVIDIA H100 80GB HBM3"
    assert api.nvmlDeviceGetMemoryInfo(object()).free == 7
    assert api.nvmlDeviceGetUtilizationRates(object()).gpu == 40
    assert api.nvmlDeviceGetMigMode(object()) == (1, 0)
    assert api.nvmlDeviceGetAttributes(object()).gpu_instance_slice_count == 3
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(fail_init=12))
    with pytest.raises(NoNvidiaDriver, match=r"nvmlInit: code 12 \(NVML error 12\)"):
        load_nvml()


@pytest.mark.gpu
def test_real_nvml_matches_its_own_recording() -> None:
    """On a machine with a driver: discovery works, and a recording of it replays to the same inventory."""
    try:
        api = load_nvml()
    except NoNvidiaDriver as exc:
        pytest.skip(f"no NVIDIA driver here: {exc}")
    try:
        live = discover(api)
        replayed = discover(replay(record(api, about="live")))
    finally:
        api.nvmlShutdown()
    assert live.gpus, "NVML initialised but shows no GPU"
    # Memory in use may move between the two reads; the layout must not.
    assert [(g.uuid, g.mig_enabled, [m.uuid for m in g.mig_devices]) for g in live.gpus] == [
        (g.uuid, g.mig_enabled, [m.uuid for m in g.mig_devices]) for g in replayed.gpus
    ]
