"""Put the NVML collector on a worker's ``/metrics`` when NVML is there, and nothing at all when it is not.

The collector (``consumer/gpu/metrics.py``) existed, but ``brigade worker`` never registered it, so the Grafana
dashboard's GPU memory panel had no series. Registering needs a live NVML handle for as long as the registry is
scraped, and only the device this worker owns: the same ``BRIGADE_DEVICE`` + ``CUDA_VISIBLE_DEVICES`` /
``NVIDIA_VISIBLE_DEVICES`` binding the engine would use (``consumer/gpu/binding.py``), so a pod on a shared node
reports its own MIG slice, not its neighbours'.

Where there is no pynvml, no driver, no GPU, or the worker is bound to the CPU, nothing is registered: no
``brigade_gpu_*`` family appears, not even ``brigade_gpu_nvml_up 0``, so CPU pods add no empty series.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from consumer.gpu.binding import DeviceSelectionError, bind_device
from consumer.gpu.metrics import GpuCollector
from consumer.gpu.nvml import NoNvidiaDriver, NvmlApi, NvmlError, discover
from consumer.gpu.pynvml_api import load_nvml

log = logging.getLogger(__name__)

NvmlLoader = Callable[[], NvmlApi]  # load_nvml in production; a recorded NVML in tests


@dataclass
class GpuMetrics:
    """A registered collector and the NVML handle it reads; ``close`` takes both away again."""

    registry: CollectorRegistry
    collector: GpuCollector
    api: NvmlApi
    uuid: str

    def close(self) -> None:
        self.registry.unregister(self.collector)
        with contextlib.suppress(NvmlError):
            self.api.nvmlShutdown()


def attach_gpu_metrics(
    registry: CollectorRegistry,
    *,
    device: str,
    cost_class: str,
    env: Mapping[str, str],
    load: NvmlLoader = load_nvml,
) -> GpuMetrics | None:
    """Register ``brigade_gpu_*`` for the device ``device`` binds to; None (and a log line) where there is none."""
    try:
        api = load()
    except NoNvidiaDriver as exc:
        log.info("no NVML: no GPU metrics on /metrics", extra={"reason": str(exc)})
        return None
    try:
        binding = bind_device(device, inventory=discover(api), env=env)
    except (NoNvidiaDriver, DeviceSelectionError) as exc:
        _shutdown(api)
        log.warning("GPU metrics off: could not resolve this worker's device", extra={"reason": str(exc)})
        return None
    if binding.uuid is None:
        _shutdown(api)
        log.info("bound to the CPU: no GPU metrics on /metrics", extra={"reason": binding.reason})
        return None
    collector = GpuCollector(api, uuids={binding.uuid}, cost_class=cost_class)
    registry.register(collector)
    log.info("GPU metrics on /metrics", extra={"device": binding.label})
    return GpuMetrics(registry=registry, collector=collector, api=api, uuid=binding.uuid)


def _shutdown(api: NvmlApi) -> None:
    with contextlib.suppress(NvmlError):
        api.nvmlShutdown()
