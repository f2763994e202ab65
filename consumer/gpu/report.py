"""What ``brigade gpus`` prints: GPUs, MIG mode and MIG instances, or plainly that there is no driver.

``inspect_gpus`` is the only part that touches NVML (load, discover, shut down); ``gpus_table`` renders
an ``Inventory`` and is pure, so the table is tested against recorded layouts.
"""

from __future__ import annotations

import io
from collections.abc import Callable

from rich.console import Console
from rich.table import Table

from consumer.gpu.binding import DeviceBinding
from consumer.gpu.capacity import format_bytes
from consumer.gpu.nvml import Inventory, NoNvidiaDriver, NvmlApi, discover
from consumer.gpu.pynvml_api import load_nvml

__all__ = ["gpus_table", "inspect_gpus", "load_nvml"]


def inspect_gpus(load: Callable[[], NvmlApi] = load_nvml) -> Inventory:
    """Read this machine's GPUs; an empty ``Inventory`` whose ``driver_error`` says why when there is no driver."""
    try:
        api = load()
    except NoNvidiaDriver as exc:
        return Inventory.without_driver(str(exc))
    try:
        return discover(api)
    except NoNvidiaDriver as exc:
        return Inventory.without_driver(str(exc))
    finally:
        api.nvmlShutdown()


def _memory(used: int, total: int) -> str:
    return f"{format_bytes(used)} / {format_bytes(total)}"


def _table(inventory: Inventory) -> Table:
    table = Table(title=f"NVIDIA driver {inventory.driver_version}", title_justify="left")
    for column in ("device", "name / profile", "UUID", "MIG", "memory used / total", "free"):
        table.add_column(column, no_wrap=True)
    for gpu in inventory.gpus:
        mig = "enabled" if gpu.mig_enabled else "disabled"
        table.add_row(
            f"GPU {gpu.index}", gpu.name, gpu.uuid, mig,
            _memory(gpu.memory_used, gpu.memory_total), format_bytes(gpu.memory_free),
        )  # fmt: skip
        if gpu.mig_enabled and not gpu.mig_devices:
            table.add_row("", "(no MIG instances: nothing can run on this GPU)", "", "", "", "")
        for m in gpu.mig_devices:
            table.add_row(
                f"  {gpu.index}/{m.slot}", m.profile, m.uuid, "instance",
                _memory(m.memory_used, m.memory_total), format_bytes(m.memory_free),
            )  # fmt: skip
    return table


def gpus_table(inventory: Inventory, *, binding: DeviceBinding | None = None, width: int = 160) -> str:
    """The ``brigade gpus`` text. With ``binding``, a last line says which device this worker would own."""
    if inventory.driver_error is not None:
        text = (
            f"no NVIDIA driver found (pynvml not installed or NVML failed: {inventory.driver_error}) "
            f"— workers will run on the CPU\n"
        )
    elif not inventory.gpus:
        text = f"NVIDIA driver {inventory.driver_version} but NVML shows no GPU — workers will run on the CPU\n"
    else:
        out = io.StringIO()
        Console(file=out, width=width, no_color=True, highlight=False).print(_table(inventory))
        text = "".join(line.rstrip() + "\n" for line in out.getvalue().splitlines())
    if binding is not None:
        text += f"this worker binds {binding.label}: {binding.reason}\n"
    return text
