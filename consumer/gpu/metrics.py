"""GPU memory and utilization on ``/metrics``, read from NVML at scrape time.

A custom collector rather than gauges set by a loop: NVML answers in microseconds, so reading on demand
keeps the figures exactly as fresh as the scrape and needs no background task to supervise. A worker
passes the UUID it is bound to, so each pod reports its own slice and the node's other tenants stay out.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from consumer.gpu.nvml import Gpu, MigDevice, NoNvidiaDriver, NvmlApi, NvmlError, discover

LABELS = ("uuid", "gpu", "profile")  # profile is "" for a whole GPU


def _families(
    labels: tuple[str, ...] = LABELS,
) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
    return (
        GaugeMetricFamily("brigade_gpu_memory_used_bytes", "Device memory in use, per GPU or MIG instance.",
                          labels=labels),
        GaugeMetricFamily("brigade_gpu_memory_total_bytes", "Device memory, per GPU or MIG instance.",
                          labels=labels),
        GaugeMetricFamily("brigade_gpu_utilization_ratio",
                          "Fraction of the last NVML sample period a kernel ran (absent where NVML does not "
                          "report it, as for MIG instances).", labels=labels),
        GaugeMetricFamily("brigade_gpu_nvml_up", "1 when NVML answered this scrape, 0 when it failed."),
    )  # fmt: skip


class GpuCollector(Collector):
    """Exports ``brigade_gpu_*`` per device from an initialised ``NvmlApi`` (register it on the worker's registry)."""

    def __init__(self, api: NvmlApi, *, uuids: Collection[str] | None = None, cost_class: str | None = None) -> None:
        self._api = api
        self._uuids = frozenset(uuids) if uuids is not None else None
        # A worker adds its cost class, like every other worker series, so dashboards can sum by class.
        self._extra = (cost_class,) if cost_class is not None else ()
        self._labels = (*LABELS, "class") if cost_class is not None else LABELS

    def describe(self) -> list[GaugeMetricFamily]:
        # Without describe(), registering would call collect() and touch NVML at import-and-register time.
        return list(_families(self._labels))

    def collect(self) -> Iterator[GaugeMetricFamily]:
        used, total, util, up = _families(self._labels)
        try:
            inventory = discover(self._api)
        except NoNvidiaDriver:
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        for gpu in inventory.gpus:
            devices: tuple[Gpu | MigDevice, ...] = (gpu, *gpu.mig_devices)
            for device in devices:
                if self._uuids is not None and device.uuid not in self._uuids:
                    continue
                labels = [*_labels(device), *self._extra]
                used.add_metric(labels, float(device.memory_used))
                total.add_metric(labels, float(device.memory_total))
                ratio = self._utilization(gpu, device)
                if ratio is not None:
                    util.add_metric(labels, ratio)
        yield from (used, total, util, up)

    def _utilization(self, gpu: Gpu, device: Gpu | MigDevice) -> float | None:
        try:
            handle = self._api.nvmlDeviceGetHandleByIndex(gpu.index)
            if isinstance(device, MigDevice):
                handle = self._api.nvmlDeviceGetMigDeviceHandleByIndex(handle, device.slot)
            return self._api.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0
        except NvmlError:
            return None  # NOT_SUPPORTED on MIG-enabled GPUs and their instances; DCGM measures those


def _labels(device: Gpu | MigDevice) -> list[str]:
    if isinstance(device, MigDevice):
        return [device.uuid, str(device.parent_index), device.profile]
    return [device.uuid, str(device.index), ""]
