"""Real ``brigade worker`` processes for the figures that are about replicas: scale-out and cold start.

Both need what Kubernetes sees, so both start the production entry point as child processes with ``BRIGADE_*``
variables (the dev stack's way), never an in-process worker: one process per consumer is what owns its own
ONNX Runtime threads, its own GIL and its own group membership, and "process start → ``/readyz`` 200" is what a
startup probe and KEDA's ``cooldownPeriod`` have to cover.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

from brigade.devtools.process import Service, ServiceFailed, free_port
from brigade.devtools.servers import dev_env
from schemas.settings import Settings

POLL_S = 0.02  # readiness poll interval: the resolution of the cold-start figure, as a kubelet probe would see it


def _service(
    settings: Settings, *, name: str, command: Sequence[str], port_variable: str, log_dir: Path, **env: str
) -> Service:
    """``brigade <command>`` serving HTTP on a free port (given in ``port_variable``), configured only by
    ``BRIGADE_*`` variables (all of ``settings``)."""
    port = free_port()
    variables = dev_env(settings, **{port_variable: str(port), "BRIGADE_HOST": "127.0.0.1"}, **env)
    argv = [sys.executable, "-m", "brigade", *command]
    return Service(name=name, argv=argv, port=port, log_path=log_dir / f"{name}.log", env=variables)


def worker_service(settings: Settings, *, name: str, log_dir: Path, **env: str) -> Service:
    """``brigade worker --class <settings.worker_class>`` on a free metrics port."""
    command = ("worker", "--class", settings.worker_class)
    return _service(settings, name=name, command=command, port_variable="BRIGADE_METRICS_PORT", log_dir=log_dir, **env)


@contextmanager
def process_fleet(settings: Settings, *, cost_class: str, timeout_s: float = 180) -> Iterator[str]:
    """``brigade ingress`` and one ``brigade worker`` of ``cost_class``, each its own process as in production;
    yields the ingress URL once both are ready and the worker owns every partition of its class."""
    log_dir = Path(tempfile.mkdtemp(prefix="brigade-fleet-"))
    ingress = _service(settings, name="ingress", command=("ingress",), port_variable="BRIGADE_PORT", log_dir=log_dir)
    worker = worker_service(settings.model_copy(update={"worker_class": cost_class}), name=f"worker-{cost_class}",
                            log_dir=log_dir)  # fmt: skip
    try:
        for svc in (ingress, worker):
            svc.start(timeout_s=timeout_s, wait=False)
        for svc in (ingress, worker):
            svc.wait_port(timeout_s=timeout_s)
        partitions = settings.class_partitions[settings.classes.index(cost_class)]
        wait_balanced([worker], partitions=partitions, timeout_s=timeout_s)
        yield f"http://127.0.0.1:{ingress.port}"
    finally:
        ingress.stop()
        worker.stop(timeout_s=settings.drain_timeout_s + 5)


def readyz(client: httpx.Client, svc: Service) -> dict[str, object] | None:
    """The worker's /readyz body when it answers 200, else None."""
    try:
        resp = client.get(f"http://127.0.0.1:{svc.port}/readyz")
    except httpx.HTTPError:
        return None
    if resp.status_code != 200:
        return None
    body: dict[str, object] = resp.json()
    return body


def cold_start_s(settings: Settings, *, model: str, cache_dir: Path, timeout_s: float = 600) -> float:
    """Seconds from spawning ``brigade worker`` to its first ``/readyz`` 200 (imports, model load, warm-up).

    With an empty ``cache_dir`` a built-in model is generated first, as on a pod whose cache is an emptyDir.
    """
    log_dir = Path(tempfile.mkdtemp(prefix="brigade-coldstart-"))
    svc = worker_service(settings, name="coldstart", log_dir=log_dir, BRIGADE_MODEL=model,
                         BRIGADE_MODEL_CACHE_DIR=str(cache_dir))  # fmt: skip
    started = time.monotonic()
    svc.start(wait=False)
    try:
        with httpx.Client(timeout=1.0) as client:
            while readyz(client, svc) is None:
                if not svc.running:
                    raise ServiceFailed(f"worker exited during start:\n{svc.log_tail()}")
                if time.monotonic() - started > timeout_s:
                    raise ServiceFailed(f"worker not ready after {timeout_s}s:\n{svc.log_tail()}")
                time.sleep(POLL_S)  # polling an HTTP probe is the measurement itself, bounded by the deadline
        return time.monotonic() - started
    finally:
        svc.stop(timeout_s=settings.drain_timeout_s + 5)


@contextmanager
def worker_pool(settings: Settings) -> Iterator[list[Service]]:
    """A growing list of worker processes of one class; all are drained side by side on exit."""
    workers: list[Service] = []
    try:
        yield workers
    finally:
        for svc in workers:
            svc.terminate()
        for svc in workers:
            svc.stop(timeout_s=settings.drain_timeout_s + 5)


def wait_balanced(workers: Sequence[Service], *, partitions: int, timeout_s: float = 180) -> list[int]:
    """Wait until every worker is ready and owns partitions, and together they own all ``partitions``.

    Only then is a backlog spread over every consumer; before, a rebalance would hand work over mid-run.
    Returns the partitions each worker owns.
    """
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=1.0) as client:
        while True:
            for svc in workers:
                if not svc.running:
                    raise ServiceFailed(f"{svc.name} exited:\n{svc.log_tail()}")
            owned = [readyz(client, svc) for svc in workers]
            counts = [int(str(b.get("partitions", 0))) if b is not None else 0 for b in owned]
            if all(counts) and sum(counts) == partitions:
                return counts
            if time.monotonic() > deadline:
                raise ServiceFailed(f"consumers own {counts} of {partitions} partitions after {timeout_s}s")
            time.sleep(0.1)  # group membership shows only over HTTP; bounded by the deadline
