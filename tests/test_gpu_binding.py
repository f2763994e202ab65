"""BRIGADE_DEVICE and the visibility variables over recorded layouts: a table of env combinations."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from consumer.gpu.binding import DeviceBinding, DeviceSelectionError, bind_device, visible_devices
from consumer.gpu.nvml import Inventory, discover
from consumer.gpu.recorded import replay

DATA = Path(__file__).parent / "data" / "nvml"


def inventory(name: str) -> Inventory:
    return discover(replay(DATA / name))


H100 = inventory("h100-80gb.json")
SEVEN = inventory("h100-80gb-mig-7x1g.json")
MIXED = inventory("h100-80gb-mig-mixed.json")
A100X2 = inventory("a100-40gb-x2.json")
NO_DRIVER = Inventory.without_driver("nvmlInit: Driver Not Loaded (NVML error 9)")

H100_GPU = H100.gpus[0].uuid
SEVEN_MIG = [m.uuid for m in SEVEN.mig_devices()]
MIXED_MIG = [m.uuid for m in MIXED.mig_devices()]  # 3g.40gb, 2g.20gb, 1g.10gb (busy), 1g.10gb
A100_GPU = [g.uuid for g in A100X2.gpus]
A100_MIG = [m.uuid for m in A100X2.mig_devices()]


@pytest.mark.parametrize(
    ("inv", "setting", "env", "uuid"),
    [
        # auto: the first visible device; None means the CPU
        (H100, "auto", {}, H100_GPU),
        (SEVEN, "auto", {}, SEVEN_MIG[0]),  # a MIG-enabled GPU is never bound whole
        (SEVEN, "auto", {"CUDA_VISIBLE_DEVICES": SEVEN_MIG[3]}, SEVEN_MIG[3]),
        (SEVEN, "auto", {"NVIDIA_VISIBLE_DEVICES": SEVEN_MIG[5]}, SEVEN_MIG[5]),  # the device plugin's way
        (SEVEN, "AUTO", {"NVIDIA_VISIBLE_DEVICES": f" {SEVEN_MIG[5]} , {SEVEN_MIG[1]}"}, SEVEN_MIG[5]),
        (SEVEN, "auto", {"CUDA_VISIBLE_DEVICES": SEVEN_MIG[2], "NVIDIA_VISIBLE_DEVICES": SEVEN_MIG[5]}, SEVEN_MIG[2]),
        (SEVEN, "auto", {"NVIDIA_VISIBLE_DEVICES": "0"}, SEVEN_MIG[0]),  # index forms: runtime already applied
        (SEVEN, "auto", {"NVIDIA_VISIBLE_DEVICES": "0:3"}, SEVEN_MIG[0]),
        (SEVEN, "auto", {"NVIDIA_VISIBLE_DEVICES": "all"}, SEVEN_MIG[0]),
        (A100X2, "auto", {}, A100_GPU[0]),
        (A100X2, "auto", {"CUDA_VISIBLE_DEVICES": "1"}, A100_MIG[0]),  # index of a MIG GPU → its instances
        (A100X2, "auto", {"CUDA_VISIBLE_DEVICES": f"{A100_GPU[1]},0"}, A100_MIG[0]),
        (A100X2, "auto", {"NVIDIA_VISIBLE_DEVICES": "1,0"}, A100_GPU[0]),
        (H100, "auto", {"CUDA_VISIBLE_DEVICES": ""}, None),
        (H100, "auto", {"CUDA_VISIBLE_DEVICES": "-1"}, None),
        (H100, "auto", {"NVIDIA_VISIBLE_DEVICES": "void"}, None),
        (H100, "auto", {"NVIDIA_VISIBLE_DEVICES": "none"}, None),
        (H100, "auto", {"NVIDIA_VISIBLE_DEVICES": ""}, None),
        (NO_DRIVER, "auto", {}, None),
        (NO_DRIVER, "auto", {"CUDA_VISIBLE_DEVICES": "0"}, None),  # "0" matches nothing, and there is no GPU
        # explicit settings
        (MIXED, "cpu", {}, None),
        (MIXED, " CPU ", {"CUDA_VISIBLE_DEVICES": MIXED_MIG[0]}, None),
        (H100, "cuda", {}, H100_GPU),
        (H100, "cuda:0", {}, H100_GPU),
        (A100X2, "cuda:1", {}, A100_MIG[0]),
        (A100X2, "cuda:2", {}, A100_MIG[1]),
        (A100X2, "cuda:0", {"CUDA_VISIBLE_DEVICES": "1"}, A100_MIG[0]),  # ordinals count visible devices only
        (A100X2, "cuda:1", {"CUDA_VISIBLE_DEVICES": f"{A100_MIG[1]},{A100_GPU[0]}"}, A100_GPU[0]),
        (MIXED, MIXED_MIG[3], {}, MIXED_MIG[3]),
        (MIXED, MIXED_MIG[1], {"NVIDIA_VISIBLE_DEVICES": f"{MIXED_MIG[0]},{MIXED_MIG[1]}"}, MIXED_MIG[1]),
        (A100X2, A100_GPU[0], {}, A100_GPU[0]),
    ],
)
def test_binds(inv: Inventory, setting: str, env: dict[str, str], uuid: str | None) -> None:
    binding = bind_device(setting, inventory=inv, env=env)
    assert binding.uuid == uuid
    if uuid is None:
        assert (binding.kind, binding.device_id, binding.cuda_visible_devices) == ("cpu", None, "")
    else:
        # One device per worker, named by UUID, so inside the session's process it is always CUDA device 0.
        assert (binding.kind, binding.device_id, binding.cuda_visible_devices) == ("cuda", 0, uuid)


NO_GPU_FIX = "set BRIGADE_DEVICE=cpu"


@pytest.mark.parametrize(
    ("inv", "setting", "env", "message"),
    [
        (MIXED, MIXED_MIG[3], {"CUDA_VISIBLE_DEVICES": MIXED_MIG[0]},
         f"BRIGADE_DEVICE={MIXED_MIG[3]} is not among the visible devices (CUDA_VISIBLE_DEVICES={MIXED_MIG[0]}): "
         f"{MIXED_MIG[0]}"),
        (MIXED, MIXED_MIG[3], {"NVIDIA_VISIBLE_DEVICES": "none"}, "is not among the visible devices"),
        (MIXED, "MIG-00000000-0000-0000-0000-000000000000", {}, f"is not a device on this machine; devices here: "
         f"{', '.join(MIXED_MIG)}"),
        (A100X2, A100_GPU[1], {}, f"is GPU 1, which has MIG enabled; name one of its MIG instances instead: "
         f"{A100_MIG[0]}, {A100_MIG[1]}"),
        (A100X2, "cuda:3", {}, "BRIGADE_DEVICE=cuda:3 but only 3 device(s) are visible"),
        (A100X2, "cuda:1", {"CUDA_VISIBLE_DEVICES": A100_MIG[1]}, f"cuda:0={A100_MIG[1]}"),
        (A100X2, "cuda:x", {}, "needs a device number after 'cuda:'"),
        (H100, "cuda:0", {"NVIDIA_VISIBLE_DEVICES": "void"}, f"no GPU is visible (NVIDIA_VISIBLE_DEVICES=void); "
         f"{NO_GPU_FIX}"),
        (NO_DRIVER, "cuda:0", {}, f"no NVIDIA driver (nvmlInit: Driver Not Loaded (NVML error 9)); {NO_GPU_FIX}"),
        (NO_DRIVER, H100_GPU, {}, "is not a device on this machine; devices here: none"),
        (H100, "gpu0", {}, "BRIGADE_DEVICE=gpu0 is not a device setting; use auto, cpu, cuda:N"),
        (H100, "auto", {"CUDA_VISIBLE_DEVICES": "GPU-nope"}, "CUDA_VISIBLE_DEVICES=GPU-nope names 'GPU-nope', which "
         f"is not a device on this machine (use NVML indices like 0,1 or GPU-…/MIG-… UUIDs); "
         f"devices here: {H100_GPU}"),
        (H100, "auto", {"CUDA_VISIBLE_DEVICES": "3"}, "names '3', which is not a device on this machine"),
        (SEVEN, "auto", {"CUDA_VISIBLE_DEVICES": "MIG-GPU-abc/1/0"}, "pre-R470 MIG name 'MIG-GPU-abc/1/0'"),
    ],
)  # fmt: skip
def test_refuses_with_the_setting_and_the_fix(inv: Inventory, setting: str, env: dict[str, str], message: str) -> None:
    with pytest.raises(DeviceSelectionError) as err:
        bind_device(setting, inventory=inv, env=env)
    assert message in str(err.value)


def test_mig_binding_carries_profile_and_the_slices_own_memory() -> None:
    busy = MIXED.gpus[0].mig_devices[2]
    binding = bind_device(busy.uuid, inventory=MIXED, env={})
    assert (binding.profile, binding.gpu_index, binding.name) == ("1g.10gb", 0, "NVIDIA H100 80GB HBM3")
    assert (binding.memory_total, binding.memory_free) == (busy.memory_total, busy.memory_free)
    assert binding.label == f"{busy.uuid} (1g.10gb on GPU 0, NVIDIA H100 80GB HBM3)"
    assert binding.ort_providers() == [("CUDAExecutionProvider", {"device_id": "0"}), "CPUExecutionProvider"]


def test_whole_gpu_binding() -> None:
    binding = bind_device("auto", inventory=H100, env={})
    gpu = H100.gpus[0]
    assert (binding.profile, binding.memory_total, binding.memory_free) == (None, gpu.memory_total, gpu.memory_free)
    assert binding.label == f"{gpu.uuid} (GPU 0, NVIDIA H100 80GB HBM3)"
    assert "no CUDA_VISIBLE_DEVICES or NVIDIA_VISIBLE_DEVICES set" in binding.reason


def test_cpu_binding_says_why() -> None:
    binding = bind_device("auto", inventory=NO_DRIVER, env={})
    assert binding == DeviceBinding(
        kind="cpu", device_id=None, uuid=None, name="cpu", profile=None, gpu_index=None, memory_total=None,
        memory_free=None, cuda_visible_devices="",
        reason="BRIGADE_DEVICE=auto and no NVIDIA driver (nvmlInit: Driver Not Loaded (NVML error 9)): "
        "running on the CPU",
    )  # fmt: skip
    assert binding.label == "cpu"
    assert binding.ort_providers() == ["CPUExecutionProvider"]


def test_auto_on_a_mig_gpu_without_instances_falls_back_and_says_so() -> None:
    bare = Inventory(gpus=(dataclasses.replace(SEVEN.gpus[0], mig_devices=()),))
    assert "GPU 0 has MIG enabled but no MIG instances" in bind_device("auto", inventory=bare, env={}).reason
    with pytest.raises(DeviceSelectionError, match="none \\(create MIG instances first\\)"):
        bind_device(bare.gpus[0].uuid, inventory=bare, env={})


def test_visible_devices_keep_the_listed_order_without_duplicates() -> None:
    env = {"CUDA_VISIBLE_DEVICES": f"{MIXED_MIG[2]},{MIXED_MIG[0]},{MIXED_MIG[2]}"}
    devices, source = visible_devices(MIXED, env)
    assert [d.uuid for d in devices] == [MIXED_MIG[2], MIXED_MIG[0]]
    assert source == f"CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']}"
