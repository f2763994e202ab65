"""Recorded NVML answers: ``record`` captures a live machine as JSON, ``RecordedNvml`` replays it.

CI has no GPU, and brigade must never change a lent GPU's MIG mode, so MIG layouts are tested against
answers in this format (``tests/data/nvml/*.json``). Any answer may be ``{"error": <NVML code>}``, which
replays as ``NvmlError`` exactly where the live call raised it. Record a real machine with::

    python -m consumer.gpu.recorded --about "lent H100, MIG disabled" > tests/data/nvml/h100-live.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from consumer.gpu.nvml import (
    NVML_ERROR_NOT_FOUND,
    NVML_ERROR_UNINITIALIZED,
    DeviceAttributes,
    MemoryInfo,
    NoNvidiaDriver,
    NvmlApi,
    NvmlError,
    Utilization,
)

T = TypeVar("T")
Answer = Any  # a JSON value, or {"error": code}

_ERROR_NAMES = {1: "Uninitialized", 3: "Not Supported", 6: "Not Found", 9: "Driver Not Loaded"}
_ERROR_NAMES |= {12: "NVML Shared Library Not Found", 15: "GPU is lost", 999: "Unknown Error"}


@dataclass(frozen=True, slots=True)
class _Handle:
    gpu: int
    slot: int | None = None  # None: the GPU itself; else its MIG slot


def _answer(call: str, value: Answer) -> Answer:
    if isinstance(value, dict) and set(value) == {"error"}:
        code = int(value["error"])
        raise NvmlError(code, f"{call}: {_ERROR_NAMES.get(code, 'recorded error')}")
    return value


class RecordedNvml:
    """``NvmlApi`` that replays a recording. Like NVML, it refuses calls before ``nvmlInit``."""

    def __init__(self, recording: Mapping[str, Any]) -> None:
        self.recording = recording
        self._inits = 0

    @classmethod
    def from_file(cls, path: Path) -> RecordedNvml:
        return cls(json.loads(path.read_text()))

    def _check_init(self, call: str) -> None:
        if self._inits == 0:
            raise NvmlError(NVML_ERROR_UNINITIALIZED, f"{call}: Uninitialized")

    def _device(self, handle: object, call: str) -> Mapping[str, Any]:
        self._check_init(call)
        assert isinstance(handle, _Handle), f"{call} got a handle this fake did not issue: {handle!r}"
        gpu: Mapping[str, Any] = self.recording["gpus"][handle.gpu]
        if handle.slot is None:
            return gpu
        return next(m for m in gpu["mig_devices"] if m["slot"] == handle.slot)

    def nvmlInit(self) -> None:
        _answer("nvmlInit", self.recording.get("init", {}))
        self._inits += 1

    def nvmlShutdown(self) -> None:
        if self._inits == 0:
            raise NvmlError(NVML_ERROR_UNINITIALIZED, "nvmlShutdown: Uninitialized")
        self._inits -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._check_init("nvmlSystemGetDriverVersion")
        return str(_answer("nvmlSystemGetDriverVersion", self.recording.get("driver_version", "")))

    def nvmlDeviceGetCount(self) -> int:
        self._check_init("nvmlDeviceGetCount")
        return len(self.recording["gpus"])

    def nvmlDeviceGetHandleByIndex(self, index: int) -> object:
        if not 0 <= index < self.nvmlDeviceGetCount():
            raise NvmlError(2, f"nvmlDeviceGetHandleByIndex({index}): Invalid Argument")
        return _Handle(index)

    def nvmlDeviceGetName(self, handle: object) -> str:
        return str(_answer("nvmlDeviceGetName", self._device(handle, "nvmlDeviceGetName")["name"]))

    def nvmlDeviceGetUUID(self, handle: object) -> str:
        return str(_answer("nvmlDeviceGetUUID", self._device(handle, "nvmlDeviceGetUUID")["uuid"]))

    def nvmlDeviceGetMemoryInfo(self, handle: object) -> MemoryInfo:
        raw = _answer("nvmlDeviceGetMemoryInfo", self._device(handle, "nvmlDeviceGetMemoryInfo")["memory"])
        return MemoryInfo(**raw)

    def nvmlDeviceGetUtilizationRates(self, handle: object) -> Utilization:
        raw = self._device(handle, "nvmlDeviceGetUtilizationRates").get("utilization", {"error": 3})
        return Utilization(**_answer("nvmlDeviceGetUtilizationRates", raw))

    def nvmlDeviceGetMigMode(self, handle: object) -> tuple[int, int]:
        raw = self._device(handle, "nvmlDeviceGetMigMode").get("mig_mode", {"error": 3})
        current, pending = _answer("nvmlDeviceGetMigMode", raw)
        return int(current), int(pending)

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: object) -> int:
        raw = self._device(handle, "nvmlDeviceGetMaxMigDeviceCount").get("max_mig_device_count", 0)
        return int(_answer("nvmlDeviceGetMaxMigDeviceCount", raw))

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: object, index: int) -> object:
        gpu = self._device(handle, "nvmlDeviceGetMigDeviceHandleByIndex")
        assert isinstance(handle, _Handle)
        if not any(m["slot"] == index for m in gpu["mig_devices"]):
            raise NvmlError(NVML_ERROR_NOT_FOUND, f"nvmlDeviceGetMigDeviceHandleByIndex({index}): Not Found")
        return _Handle(handle.gpu, index)

    def nvmlDeviceGetAttributes(self, handle: object) -> DeviceAttributes:
        raw = _answer("nvmlDeviceGetAttributes", self._device(handle, "nvmlDeviceGetAttributes")["attributes"])
        return DeviceAttributes(**raw)


def replay(recording: Path | Mapping[str, Any]) -> RecordedNvml:
    """A recording, initialised: the counterpart of ``load_nvml``, raising ``NoNvidiaDriver`` the same way."""
    api = RecordedNvml.from_file(recording) if isinstance(recording, Path) else RecordedNvml(recording)
    try:
        api.nvmlInit()
    except NvmlError as exc:
        raise NoNvidiaDriver(str(exc)) from exc
    return api


def _capture(call: Callable[[], T], encode: Callable[[T], Answer] = lambda v: v) -> Answer:
    try:
        return encode(call())
    except NvmlError as exc:
        return {"error": exc.code}


def _record_device(api: NvmlApi, handle: object) -> dict[str, Any]:
    return {
        "uuid": _capture(lambda: api.nvmlDeviceGetUUID(handle)),
        "memory": _capture(lambda: api.nvmlDeviceGetMemoryInfo(handle), asdict),
        "utilization": _capture(lambda: api.nvmlDeviceGetUtilizationRates(handle), asdict),
    }


def _record_mig(api: NvmlApi, parent: object, slot: int) -> dict[str, Any] | None:
    try:
        handle = api.nvmlDeviceGetMigDeviceHandleByIndex(parent, slot)
    except NvmlError:
        return None  # an empty slot; replayed as NOT_FOUND
    attributes = _capture(lambda: api.nvmlDeviceGetAttributes(handle), asdict)
    return {"slot": slot, **_record_device(api, handle), "attributes": attributes}


def _record_gpu(api: NvmlApi, index: int) -> dict[str, Any]:
    handle = api.nvmlDeviceGetHandleByIndex(index)
    gpu = {"name": _capture(lambda: api.nvmlDeviceGetName(handle)), **_record_device(api, handle)}
    gpu["mig_mode"] = _capture(lambda: list(api.nvmlDeviceGetMigMode(handle)))
    slots = _capture(lambda: api.nvmlDeviceGetMaxMigDeviceCount(handle))
    gpu["max_mig_device_count"] = slots
    migs = (_record_mig(api, handle, slot) for slot in range(slots if isinstance(slots, int) else 0))
    gpu["mig_devices"] = [m for m in migs if m is not None]
    return gpu


def record(api: NvmlApi, *, about: str) -> dict[str, Any]:
    """Capture every answer ``discover`` and the metrics collector ask for, from an initialised NVML."""
    gpus = [_record_gpu(api, index) for index in range(api.nvmlDeviceGetCount())]
    return {"about": about, "driver_version": api.nvmlSystemGetDriverVersion(), "gpus": gpus}


def main(argv: list[str] | None = None) -> None:
    """Print this machine's NVML answers as JSON (a recording for ``RecordedNvml``)."""
    from consumer.gpu.pynvml_api import load_nvml

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--about", default="recorded with python -m consumer.gpu.recorded")
    args = parser.parse_args(argv)
    try:
        api = load_nvml()
    except NoNvidiaDriver as exc:
        raise SystemExit(f"nothing to record: {exc}") from exc
    try:
        json.dump(record(api, about=args.about), sys.stdout, indent=2)
        sys.stdout.write("\n")
    finally:
        api.nvmlShutdown()


if __name__ == "__main__":
    main()
