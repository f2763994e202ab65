"""The real ``NvmlApi``: a thin adapter over ``pynvml`` (the ``nvidia-ml-py`` package, in the ``gpu`` extra).

pynvml is imported inside ``load_nvml`` only, so brigade imports, tests and runs on the CPU where the
package or the driver is missing. The adapter turns pynvml's ctypes structs into plain dataclasses and its
``NVMLError`` into ``NvmlError``, which keeps the rest of ``consumer.gpu`` ignorant of pynvml entirely.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

from consumer.gpu.nvml import DeviceAttributes, MemoryInfo, NoNvidiaDriver, NvmlApi, NvmlError, Utilization

INSTALL_HINT = "pip install 'brigade[gpu]'"


def load_nvml() -> NvmlApi:
    """Import pynvml and initialise NVML; raise ``NoNvidiaDriver`` saying which of the two failed.

    The caller owns the returned API and calls ``nvmlShutdown()`` when done (NVML reference-counts init).
    """
    try:
        module = importlib.import_module("pynvml")
    except ImportError as exc:
        raise NoNvidiaDriver(f"pynvml is not installed; {INSTALL_HINT} adds it") from exc
    api = PynvmlApi(module)
    try:
        api.nvmlInit()
    except NvmlError as exc:
        raise NoNvidiaDriver(str(exc)) from exc
    return api


def _text(value: str | bytes) -> str:
    # nvidia-ml-py ≥ 11.515 decodes strings itself; older releases return bytes.
    return value.decode() if isinstance(value, bytes) else value


class PynvmlApi:
    """``NvmlApi`` over the pynvml module it is given (injected, so importing this file never needs pynvml)."""

    def __init__(self, module: ModuleType) -> None:
        self._nvml = module

    def _call(self, name: str, *args: object) -> Any:
        fn: Callable[..., Any] = getattr(self._nvml, name)
        try:
            return fn(*args)
        except self._nvml.NVMLError as exc:
            raise NvmlError(int(exc.value), f"{name}: {exc}") from exc

    def nvmlInit(self) -> None:
        self._call("nvmlInit")

    def nvmlShutdown(self) -> None:
        self._call("nvmlShutdown")

    def nvmlSystemGetDriverVersion(self) -> str:
        return _text(self._call("nvmlSystemGetDriverVersion"))

    def nvmlDeviceGetCount(self) -> int:
        return int(self._call("nvmlDeviceGetCount"))

    def nvmlDeviceGetHandleByIndex(self, index: int) -> object:
        return self._call("nvmlDeviceGetHandleByIndex", index)

    def nvmlDeviceGetName(self, handle: object) -> str:
        return _text(self._call("nvmlDeviceGetName", handle))

    def nvmlDeviceGetUUID(self, handle: object) -> str:
        return _text(self._call("nvmlDeviceGetUUID", handle))

    def nvmlDeviceGetMemoryInfo(self, handle: object) -> MemoryInfo:
        raw = self._call("nvmlDeviceGetMemoryInfo", handle)
        return MemoryInfo(total=int(raw.total), free=int(raw.free), used=int(raw.used))

    def nvmlDeviceGetUtilizationRates(self, handle: object) -> Utilization:
        raw = self._call("nvmlDeviceGetUtilizationRates", handle)
        return Utilization(gpu=int(raw.gpu), memory=int(raw.memory))

    def nvmlDeviceGetMigMode(self, handle: object) -> tuple[int, int]:
        current, pending = self._call("nvmlDeviceGetMigMode", handle)
        return int(current), int(pending)

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: object) -> int:
        return int(self._call("nvmlDeviceGetMaxMigDeviceCount", handle))

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: object, index: int) -> object:
        return self._call("nvmlDeviceGetMigDeviceHandleByIndex", handle, index)

    def nvmlDeviceGetAttributes(self, handle: object) -> DeviceAttributes:
        raw = self._call("nvmlDeviceGetAttributes", handle)
        return DeviceAttributes(
            gpu_instance_slice_count=int(raw.gpuInstanceSliceCount),
            compute_instance_slice_count=int(raw.computeInstanceSliceCount),
            memory_size_mb=int(raw.memorySizeMB),
        )
