"""Which device this worker runs on: ``BRIGADE_DEVICE`` plus the visibility variables, resolved once at start.

Pure: the NVML inventory and the environment come in as arguments, a ``DeviceBinding`` goes out, and
nothing is read or set here. A binding always names one device by UUID and tells the caller which
``CUDA_VISIBLE_DEVICES`` the process that opens the ONNX Runtime session must have, so inside that process
the device is always CUDA device 0, whatever the host's numbering. That is also the only way to address a
MIG slice: CUDA shows a process at most one MIG instance, the one ``CUDA_VISIBLE_DEVICES`` names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from consumer.gpu.nvml import Gpu, Inventory, MigDevice

Device = Gpu | MigDevice  # a whole GPU without MIG, or one MIG instance: the units a worker can own
_HIDDEN = frozenset({"", "none", "void", "-1"})  # container-toolkit and CUDA spellings of "no GPU"


class DeviceSelectionError(ValueError):
    """The device settings cannot be honoured. The message names the setting and how to fix it."""


@dataclass(frozen=True, slots=True)
class DeviceBinding:
    """The device a worker owns, and what the engine and the process environment need to use it."""

    kind: Literal["cpu", "cuda"]
    device_id: int | None  # ORT CUDAExecutionProvider device_id once CUDA_VISIBLE_DEVICES is applied; None on CPU
    uuid: str | None  # "GPU-…" or "MIG-…"; None on CPU
    name: str  # product name ("NVIDIA H100 80GB HBM3") or "cpu"
    profile: str | None  # MIG profile ("1g.10gb"); None for a whole GPU or the CPU
    gpu_index: int | None  # NVML index of the (parent) GPU, for logs and metrics labels
    memory_total: int | None  # bytes of device memory; None on CPU (host memory is not budgeted here)
    memory_free: int | None
    cuda_visible_devices: str  # the value the session's process must run with ("" hides every GPU on CPU)
    reason: str  # one line for the start log: which setting chose this device

    @property
    def label(self) -> str:
        """How logs and errors name the device: "MIG-… (1g.10gb on GPU 0, NVIDIA H100 80GB HBM3)"."""
        if self.kind == "cpu":
            return "cpu"
        where = f"{self.profile} on GPU {self.gpu_index}" if self.profile else f"GPU {self.gpu_index}"
        return f"{self.uuid} ({where}, {self.name})"

    def ort_providers(self) -> list[str | tuple[str, dict[str, str]]]:
        """ONNX Runtime ``providers=`` for this device, the CPU kept last as ORT's fallback for unsupported ops."""
        if self.kind == "cpu":
            return ["CPUExecutionProvider"]
        return [("CUDAExecutionProvider", {"device_id": str(self.device_id)}), "CPUExecutionProvider"]


def bindable_devices(inventory: Inventory) -> tuple[Device, ...]:
    """Every unit a worker can own, in NVML order: whole GPUs without MIG, and each MIG instance.

    A MIG-enabled GPU is not itself bindable: CUDA runs nothing on it outside its instances.
    """
    out: list[Device] = []
    for gpu in inventory.gpus:
        out.extend(gpu.mig_devices if gpu.mig_enabled else (gpu,))
    return tuple(out)


def visible_devices(inventory: Inventory, env: Mapping[str, str]) -> tuple[tuple[Device, ...], str]:
    """The devices this process may use, in CUDA order, and a phrase saying which variable decided.

    ``CUDA_VISIBLE_DEVICES`` wins when set: CUDA applies it inside the process. ``NVIDIA_VISIBLE_DEVICES`` is
    what the Kubernetes device plugin sets for the container runtime, which mounts only those devices; its
    UUIDs are matched here, while an index form means the runtime has already narrowed what NVML shows
    (container index 0 may be host GPU 3), so the NVML view is taken as is.
    """
    for var in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"):
        if var in env:
            return _apply_visibility(inventory, var, env[var]), f"{var}={env[var]}"
    return bindable_devices(inventory), "no CUDA_VISIBLE_DEVICES or NVIDIA_VISIBLE_DEVICES set"


def _apply_visibility(inventory: Inventory, var: str, value: str) -> tuple[Device, ...]:
    text = value.strip()
    if text.lower() in _HIDDEN or not inventory.gpus:
        return ()  # with no GPU at all there is nothing to narrow, whatever the variable names
    if text.lower() == "all":
        return bindable_devices(inventory)
    entries = [e.strip() for e in text.split(",")]
    is_uuid = [e.upper().startswith(("GPU-", "MIG-")) for e in entries]
    if var == "NVIDIA_VISIBLE_DEVICES" and not all(is_uuid):
        return bindable_devices(inventory)
    out: list[Device] = []
    for entry in entries:
        out.extend(_lookup_entry(inventory, var, value, entry))
    return tuple(dict.fromkeys(out))


def _lookup_entry(inventory: Inventory, var: str, value: str, entry: str) -> tuple[Device, ...]:
    if entry.upper().startswith("MIG-GPU-"):
        raise DeviceSelectionError(
            f"{var}={value} uses the pre-R470 MIG name {entry!r}; name the instance by its MIG-… UUID "
            f"(`brigade gpus` lists them)"
        )
    for gpu in inventory.gpus:
        if (entry.isdigit() and int(entry) == gpu.index) or entry == gpu.uuid:
            return gpu.mig_devices if gpu.mig_enabled else (gpu,)
        for mig in gpu.mig_devices:
            if entry == mig.uuid:
                return (mig,)
    known = _names(bindable_devices(inventory)) or "none"
    raise DeviceSelectionError(
        f"{var}={value} names {entry!r}, which is not a device on this machine (use NVML indices like 0,1 or "
        f"GPU-…/MIG-… UUIDs); devices here: {known}"
    )


def _names(devices: tuple[Device, ...]) -> str:
    return ", ".join(d.uuid for d in devices)


def bind_device(setting: str, *, inventory: Inventory, env: Mapping[str, str]) -> DeviceBinding:
    """Resolve ``BRIGADE_DEVICE`` (auto | cpu | cuda | cuda:N | GPU-… | MIG-…) against what this process may use.

    ``auto`` takes the first visible device and falls back to the CPU where there is none; explicit settings
    never fall back: asking for a GPU that is not there is an error, not a silent 100x slowdown. ``cuda:N``
    counts visible devices in NVML order (CUDA's own order under ``CUDA_DEVICE_ORDER=PCI_BUS_ID``); UUIDs
    are the unambiguous choice.
    """
    text = setting.strip()
    key = text.lower()
    if key == "cpu":
        return cpu_binding(reason="BRIGADE_DEVICE=cpu")
    visible, source = visible_devices(inventory, env)
    if key == "auto":
        return _auto(inventory, visible, source)
    if key == "cuda" or key.startswith("cuda:"):
        return _by_ordinal(text, inventory, visible, source)
    if key.startswith(("gpu-", "mig-")):
        return _by_uuid(text, inventory, visible, source)
    raise DeviceSelectionError(
        f"BRIGADE_DEVICE={setting} is not a device setting; use auto, cpu, cuda:N, a GPU-… or a MIG-… UUID"
    )


def cpu_binding(*, reason: str) -> DeviceBinding:
    return DeviceBinding(
        kind="cpu", device_id=None, uuid=None, name="cpu", profile=None, gpu_index=None,
        memory_total=None, memory_free=None, cuda_visible_devices="", reason=reason,
    )  # fmt: skip


def _cuda_binding(device: Device, inventory: Inventory, reason: str) -> DeviceBinding:
    if isinstance(device, MigDevice):
        parent = inventory.gpus[device.parent_index]
        profile: str | None = device.profile
        gpu_index, name = parent.index, parent.name
    else:
        profile, gpu_index, name = None, device.index, device.name
    return DeviceBinding(
        kind="cuda", device_id=0, uuid=device.uuid, name=name, profile=profile, gpu_index=gpu_index,
        memory_total=device.memory_total, memory_free=device.memory_free,
        cuda_visible_devices=device.uuid, reason=reason,
    )  # fmt: skip


def _no_gpu_reason(inventory: Inventory, source: str) -> str:
    if inventory.driver_error is not None:
        return f"no NVIDIA driver ({inventory.driver_error})"
    if not inventory.gpus:
        return "NVML shows no GPU"
    unsliced = [g.index for g in inventory.gpus if g.mig_enabled and not g.mig_devices]
    if unsliced and not bindable_devices(inventory):
        return f"GPU {', '.join(map(str, unsliced))} has MIG enabled but no MIG instances"
    return f"no GPU is visible ({source})"


def _auto(inventory: Inventory, visible: tuple[Device, ...], source: str) -> DeviceBinding:
    if not visible:
        return cpu_binding(reason=f"BRIGADE_DEVICE=auto and {_no_gpu_reason(inventory, source)}: running on the CPU")
    return _cuda_binding(visible[0], inventory, f"BRIGADE_DEVICE=auto, first visible device ({source})")


def _by_ordinal(setting: str, inventory: Inventory, visible: tuple[Device, ...], source: str) -> DeviceBinding:
    _, _, number = setting.partition(":")
    if number and not number.isdigit():
        raise DeviceSelectionError(f"BRIGADE_DEVICE={setting} needs a device number after 'cuda:', like cuda:0")
    ordinal = int(number or 0)
    if not visible:
        raise DeviceSelectionError(
            f"BRIGADE_DEVICE={setting} but {_no_gpu_reason(inventory, source)}; "
            f"set BRIGADE_DEVICE=cpu (or auto, which falls back to the CPU)"
        )
    if ordinal >= len(visible):
        listed = ", ".join(f"cuda:{i}={d.uuid}" for i, d in enumerate(visible))
        raise DeviceSelectionError(
            f"BRIGADE_DEVICE={setting} but only {len(visible)} device(s) are visible ({source}): {listed}; "
            f"pick one of those or name the device by UUID"
        )
    return _cuda_binding(visible[ordinal], inventory, f"BRIGADE_DEVICE={setting} ({source})")


def _by_uuid(setting: str, inventory: Inventory, visible: tuple[Device, ...], source: str) -> DeviceBinding:
    for device in visible:
        if device.uuid == setting:
            return _cuda_binding(device, inventory, f"BRIGADE_DEVICE={setting} ({source})")
    for gpu in inventory.gpus:
        if gpu.uuid == setting and gpu.mig_enabled:
            raise DeviceSelectionError(
                f"BRIGADE_DEVICE={setting} is GPU {gpu.index}, which has MIG enabled; name one of its MIG "
                f"instances instead: {_names(gpu.mig_devices) or 'none (create MIG instances first)'}"
            )
    if any(d.uuid == setting for d in bindable_devices(inventory)):
        raise DeviceSelectionError(
            f"BRIGADE_DEVICE={setting} is not among the visible devices ({source}): {_names(visible) or 'none'}; "
            f"pick one of those, or give this worker that device in CUDA_VISIBLE_DEVICES/NVIDIA_VISIBLE_DEVICES"
        )
    raise DeviceSelectionError(
        f"BRIGADE_DEVICE={setting} is not a device on this machine; devices here: "
        f"{_names(bindable_devices(inventory)) or 'none'} (`brigade gpus` lists them)"
    )
