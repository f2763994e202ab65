"""NVML discovery behind a small boundary, so all of it is testable without a GPU.

``NvmlApi`` lists exactly the pynvml calls brigade makes, with plain Python answers (``str``, ``int``,
frozen dataclasses) instead of ctypes structs. Two things satisfy it: ``PynvmlApi`` over the real
library (``consumer.gpu.pynvml_api``, imported lazily because ``nvidia-ml-py`` is an optional extra)
and ``RecordedNvml`` (``consumer.gpu.recorded``), which replays answers recorded as JSON. The fake sits
at the pynvml boundary and nowhere else: ``discover`` below runs unchanged against both.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

MIB = 1024 * 1024
GIB = 1024 * MIB

# NVML return codes brigade tells apart (nvml.h `nvmlReturn_t`); any other code is a plain failure.
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_GPU_IS_LOST = 15

NVML_DEVICE_MIG_ENABLE = 1


class NvmlError(Exception):
    """An NVML call failed. ``code`` is NVML's return code, so callers can tell "not supported" from real faults."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{message} (NVML error {code})")
        self.code = code
        self.message = message


class NoNvidiaDriver(RuntimeError):
    """No usable NVIDIA driver: pynvml is missing, libnvidia-ml cannot be loaded, or NVML failed.

    Workers treat this as "run on the CPU" under ``BRIGADE_DEVICE=auto``; the message is meant for people.
    """


@dataclass(frozen=True, slots=True)
class MemoryInfo:
    """``nvmlDeviceGetMemoryInfo`` in bytes. ``free`` is NVML's own figure (it excludes driver reservations)."""

    total: int
    free: int
    used: int


@dataclass(frozen=True, slots=True)
class Utilization:
    """``nvmlDeviceGetUtilizationRates`` in percent over NVML's last sample period (1/6 s to 1 s)."""

    gpu: int
    memory: int


@dataclass(frozen=True, slots=True)
class DeviceAttributes:
    """The part of ``nvmlDeviceGetAttributes`` that names a MIG device's profile (slices and memory)."""

    gpu_instance_slice_count: int
    compute_instance_slice_count: int
    memory_size_mb: int


class NvmlApi(Protocol):
    """The pynvml calls brigade uses, and nothing else. Every call raises ``NvmlError`` on failure.

    Handles are opaque: whatever ``nvmlDeviceGetHandleByIndex`` / ``nvmlDeviceGetMigDeviceHandleByIndex``
    returned is passed back unchanged.
    """

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlSystemGetDriverVersion(self) -> str: ...
    def nvmlDeviceGetCount(self) -> int: ...
    def nvmlDeviceGetHandleByIndex(self, index: int) -> object: ...
    def nvmlDeviceGetName(self, handle: object) -> str: ...
    def nvmlDeviceGetUUID(self, handle: object) -> str: ...
    def nvmlDeviceGetMemoryInfo(self, handle: object) -> MemoryInfo: ...
    def nvmlDeviceGetUtilizationRates(self, handle: object) -> Utilization: ...
    def nvmlDeviceGetMigMode(self, handle: object) -> tuple[int, int]: ...
    def nvmlDeviceGetMaxMigDeviceCount(self, handle: object) -> int: ...
    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: object, index: int) -> object: ...
    def nvmlDeviceGetAttributes(self, handle: object) -> DeviceAttributes: ...


@dataclass(frozen=True, slots=True)
class MigDevice:
    """One MIG instance: what a worker binds with ``CUDA_VISIBLE_DEVICES=<uuid>``."""

    uuid: str  # "MIG-…" (driver R470+); CUDA and the Kubernetes device plugin address slices by it
    parent_index: int  # NVML index of the GPU it is carved from
    slot: int  # index passed to nvmlDeviceGetMigDeviceHandleByIndex; stable while the layout stands
    profile: str  # "1g.10gb", "3g.40gb", … named as nvidia-smi and the device plugin name it
    memory_total: int  # bytes
    memory_used: int
    memory_free: int


@dataclass(frozen=True, slots=True)
class Gpu:
    """One physical GPU. With MIG enabled, CUDA work runs only inside ``mig_devices``, never on the GPU itself."""

    index: int  # NVML index (the host's order, which is also CUDA's order with CUDA_DEVICE_ORDER=PCI_BUS_ID)
    uuid: str  # "GPU-…"
    name: str  # "NVIDIA H100 80GB HBM3"
    memory_total: int  # bytes
    memory_used: int
    memory_free: int
    mig_enabled: bool  # current mode; a pending change needs a GPU reset, which brigade never does
    mig_devices: tuple[MigDevice, ...]


@dataclass(frozen=True, slots=True)
class Inventory:
    """Everything NVML showed at one moment. Empty when there is no driver: then ``driver_error`` says why."""

    gpus: tuple[Gpu, ...]
    driver_version: str = ""
    driver_error: str | None = None

    @classmethod
    def without_driver(cls, reason: str) -> Inventory:
        return cls(gpus=(), driver_error=reason)

    def mig_devices(self) -> Iterator[MigDevice]:
        for gpu in self.gpus:
            yield from gpu.mig_devices


def mig_profile_name(*, gpu_slices: int, compute_slices: int, memory_size_mb: int, parent_memory_total: int) -> str:
    """Name a MIG profile the way nvidia-smi and the Kubernetes device plugin do ("1g.10gb", "1c.3g.40gb").

    The "gb" figure is not the slice's memory rounded: NVIDIA rounds the slice's share of the parent GPU up
    to eighths and scales by the parent's size in whole GiB (go-nvlib ``getMigMemorySizeGB``). A 9.75 GiB
    slice of an H100 80GB is therefore "10gb". Media-extension variants ("+me") are not visible in the
    attributes and are named like their plain profile.
    """
    share = memory_size_mb * MIB / parent_memory_total
    share = math.ceil(share * 8) / 8
    parent_gb = (parent_memory_total + GIB - 1) // GIB
    gb = round(share * parent_gb)
    if compute_slices == gpu_slices:
        return f"{gpu_slices}g.{gb}gb"
    return f"{compute_slices}c.{gpu_slices}g.{gb}gb"


def discover(api: NvmlApi) -> Inventory:
    """Read GPUs and MIG instances from an initialised NVML. NVML failures become ``NoNvidiaDriver``.

    Calls that NVML answers "not supported" (MIG mode on a GPU without MIG) count as "no MIG", because
    that is what they mean; any other failure means the driver cannot be trusted for placement.
    """
    try:
        driver = api.nvmlSystemGetDriverVersion()
        gpus = tuple(_read_gpu(api, index) for index in range(api.nvmlDeviceGetCount()))
    except NvmlError as exc:
        raise NoNvidiaDriver(f"NVML failed while listing GPUs: {exc}") from exc
    return Inventory(gpus=gpus, driver_version=driver)


def _read_gpu(api: NvmlApi, index: int) -> Gpu:
    handle = api.nvmlDeviceGetHandleByIndex(index)
    memory = api.nvmlDeviceGetMemoryInfo(handle)
    mig_enabled = _mig_enabled(api, handle)
    migs = tuple(_read_migs(api, handle, index, memory.total)) if mig_enabled else ()
    return Gpu(
        index=index,
        uuid=api.nvmlDeviceGetUUID(handle),
        name=api.nvmlDeviceGetName(handle),
        memory_total=memory.total,
        memory_used=memory.used,
        memory_free=memory.free,
        mig_enabled=mig_enabled,
        mig_devices=migs,
    )


def _mig_enabled(api: NvmlApi, handle: object) -> bool:
    try:
        current, _pending = api.nvmlDeviceGetMigMode(handle)
    except NvmlError as exc:
        if exc.code == NVML_ERROR_NOT_SUPPORTED:
            return False
        raise
    return current == NVML_DEVICE_MIG_ENABLE


def _read_migs(api: NvmlApi, parent: object, parent_index: int, parent_total: int) -> Iterator[MigDevice]:
    # Slots are sparse: NVML answers NOT_FOUND for a slot no instance occupies (e.g. after one was destroyed).
    for slot in range(api.nvmlDeviceGetMaxMigDeviceCount(parent)):
        try:
            handle = api.nvmlDeviceGetMigDeviceHandleByIndex(parent, slot)
        except NvmlError as exc:
            if exc.code == NVML_ERROR_NOT_FOUND:
                continue
            raise
        attrs = api.nvmlDeviceGetAttributes(handle)
        memory = api.nvmlDeviceGetMemoryInfo(handle)
        yield MigDevice(
            uuid=api.nvmlDeviceGetUUID(handle),
            parent_index=parent_index,
            slot=slot,
            profile=mig_profile_name(
                gpu_slices=attrs.gpu_instance_slice_count,
                compute_slices=attrs.compute_instance_slice_count,
                memory_size_mb=attrs.memory_size_mb,
                parent_memory_total=parent_total,
            ),
            memory_total=memory.total,
            memory_used=memory.used,
            memory_free=memory.free,
        )
