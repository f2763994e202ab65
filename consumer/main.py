"""The worker's process entry point: ``serve`` for embedding, ``main`` for ``brigade worker``.

``main`` is the only place that installs signal handlers (STYLE practice 6). The handler only sets
the stop event, which starts the drain; it never touches the queue or the engine itself. A second
SIGTERM/SIGINT means "now": the process exits at once, and Kafka redelivers whatever it had not
committed (effectively-once still holds: finished requests are skipped, cut-off ones regenerated).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable

from brigade import eventloop
from consumer.gpu.capacity import DeviceTooSmall
from consumer.gpu.pynvml_api import load_nvml
from consumer.gpu.start_capacity import export_plan, plan_start
from consumer.gpu.worker_metrics import NvmlLoader, attach_gpu_metrics
from consumer.worker import EngineFactory, Worker, default_engine_factory
from schemas.settings import Settings

log = logging.getLogger(__name__)

EXIT_FORCED = 130
EXIT_DEVICE_TOO_SMALL = 3


async def serve(
    settings: Settings,
    *,
    stop: asyncio.Event,
    ready: Callable[[int], None] | None = None,
    engine_factory: EngineFactory = default_engine_factory,
    idle_s: float | None = None,
    nvml: NvmlLoader = load_nvml,
) -> None:
    """Run one worker until ``stop`` is set, then drain. ``ready(port)`` gets the health/metrics port
    once the model is loaded and warmed (just before the worker joins its consumer group).

    GPU memory and utilization of the worker's device join its ``/metrics`` where NVML answers (``nvml``
    loads it; a recorded NVML in tests); elsewhere no ``brigade_gpu_*`` series appear.

    On a GPU or MIG device the VRAM plan comes first (``consumer/gpu/start_capacity.py``): a device too small
    for the model raises ``DeviceTooSmall`` before anything loads or joins, and the batch limit is capped at
    what fits.
    """
    plan = await asyncio.to_thread(plan_start, settings, env=os.environ, load=nvml)
    if plan is not None:
        settings = plan.capped(settings)
    worker = Worker(settings, engine_factory=engine_factory, ready=ready, idle_s=idle_s)
    if plan is not None:
        export_plan(worker.metrics.registry, plan, cost_class=settings.worker_class)
    gpu = attach_gpu_metrics(
        worker.metrics.registry,
        device=settings.device_for(settings.worker_class),
        cost_class=settings.worker_class,
        env=os.environ,
        load=nvml,
    )
    try:
        await worker.run(stop=stop)
    finally:
        if gpu is not None:
            gpu.close()


def main(settings: Settings) -> None:
    """Run a worker in the foreground: first SIGTERM/SIGINT drains, a second exits immediately.

    A device too small for the model ends the process with ``EXIT_DEVICE_TOO_SMALL`` and one log line that
    names the device, its free memory and the need (no traceback: it is a configuration problem).
    """
    try:
        eventloop.run(_main(settings), loop=settings.event_loop, role="worker")
    except DeviceTooSmall as exc:
        log.error("[start] %s", exc, extra={"device": exc.device})
        raise SystemExit(EXIT_DEVICE_TOO_SMALL) from None


async def _main(settings: Settings) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("[shutdown] second signal: exiting now", extra={"signal": signal.Signals(signum).name})
            os._exit(EXIT_FORCED)
        log.info("[shutdown] signal received: draining", extra={"signal": signal.Signals(signum).name})
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await serve(
            settings,
            stop=stop,
            ready=lambda port: log.info("worker ready", extra={"metrics_port": port, "class": settings.worker_class}),
        )
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
