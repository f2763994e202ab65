"""``brigade dev``: the whole fleet on one machine, in the foreground.

Tansu (Kafka protocol) and redis-server (three of them as a Redis Cluster with
``BRIGADE_REDIS_CLUSTER=true`` or ``--redis-cluster``) from the ``dev`` extra, the topics, the ingress and one
worker process per cost class — each started through the production entry point (``brigade
ingress`` / ``brigade worker``) with ``BRIGADE_*`` variables, exactly as Kubernetes would.
Stopping works in dependency order: the ingress stops admitting, workers drain, then the broker
and Redis go.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from brigade.devtools.cluster import RedisClusterNodes, free_port_with_bus
from brigade.devtools.process import Service, ServiceFailed, free_port, port_open
from brigade.devtools.servers import DEV_SESSION_TIMEOUT_MS, dev_env, kafka_service, redis_service
from producer.topics import ensure_topics
from schemas.settings import Settings

log = logging.getLogger("brigade.dev")


@dataclass
class DevStack:
    """Ports, settings and processes of one embedded stack."""

    settings: Settings
    kafka_port: int
    redis_port: int
    ingress_port: int
    workers_per_class: int
    log_dir: Path
    services: list[Service] = field(default_factory=list)

    @property
    def ingress_url(self) -> str:
        return f"http://127.0.0.1:{self.ingress_port}"

    def child_env(self, **extra: str) -> dict[str, str]:
        """The stack's settings as ``BRIGADE_*`` variables for a child, with ``extra`` on top."""
        return dev_env(self.settings, **extra)


def _brigade(*args: str) -> list[str]:
    return [sys.executable, "-m", "brigade", *args]


def _wait_ready(urls: list[str], *, timeout_s: float, services: list[Service], owning: set[str] | None = None) -> None:
    """Poll each /readyz until 200 (and, for ``owning`` URLs, until it owns partitions): only HTTP shows it."""
    deadline = time.monotonic() + timeout_s
    pending = list(urls)
    with httpx.Client(timeout=1.0) as client:
        while pending:
            for svc in services:
                if not svc.running:
                    raise ServiceFailed(f"{svc.name} exited during start:\n{svc.log_tail()}")
            url = pending[0]
            try:
                resp = client.get(url)
                joined = url not in (owning or set()) or resp.json().get("partitions", 0) > 0
                if resp.status_code == 200 and joined:
                    pending.pop(0)
                    continue
            except (httpx.HTTPError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise ServiceFailed(f"{url} not ready after {timeout_s}s")
            time.sleep(0.1)


def plan_stack(
    base: Settings, *, port: int, kafka_port: int, redis_port: int, workers_per_class: int, log_dir: Path | None
) -> DevStack:
    for name, p in (("--port", port), ("--kafka-port", kafka_port), ("--redis-port", redis_port)):
        if p and port_open("127.0.0.1", p):
            raise ServiceFailed(f"{name} {p} is already in use; pick another with {name}, or 0 for any free port")
    kafka_port = kafka_port or free_port()
    redis_port = redis_port or (free_port_with_bus() if base.redis_cluster else free_port())
    update: dict[str, object] = {
        "kafka_bootstrap": f"127.0.0.1:{kafka_port}",
        "kafka_idempotence": False,
        "redis_url": f"redis://127.0.0.1:{redis_port}/0",
    }
    if "kafka_session_timeout_ms" not in base.model_fields_set:
        update["kafka_session_timeout_ms"] = DEV_SESSION_TIMEOUT_MS  # 2 s of each worker's start-up, not 5
    settings = base.model_copy(update=update)
    return DevStack(
        settings=settings,
        kafka_port=kafka_port,
        redis_port=redis_port,
        ingress_port=port or free_port(),
        workers_per_class=workers_per_class,
        log_dir=log_dir or Path(tempfile.mkdtemp(prefix="brigade-dev-")),
    )


@contextmanager
def running(stack: DevStack, *, ready_timeout_s: float = 180.0) -> Iterator[DevStack]:
    """Start everything, wait until ready, and stop it all in order on exit, whatever happened."""
    try:
        stack.services.append(kafka_service(port=stack.kafka_port, log_dir=stack.log_dir).start())
        if stack.settings.redis_cluster:  # three nodes; the first on redis_port
            cluster = RedisClusterNodes(stack.log_dir / "redis-cluster", first_port=stack.redis_port)
            stack.services.extend(cluster.start().services)
        else:
            stack.services.append(redis_service(port=stack.redis_port, log_dir=stack.log_dir).start())
        asyncio.run(ensure_topics(stack.settings))
        ingress = Service(
            name="ingress",
            argv=_brigade("ingress"),
            port=stack.ingress_port,
            log_path=stack.log_dir / "ingress.log",
            env=stack.child_env(BRIGADE_PORT=str(stack.ingress_port), BRIGADE_HOST="127.0.0.1"),
        )
        workers: list[Service] = []
        for cls in stack.settings.classes:
            for i in range(stack.workers_per_class):
                mport = free_port()
                workers.append(
                    Service(
                        name=f"worker {cls}#{i}",
                        argv=_brigade("worker", "--class", cls),
                        port=mport,
                        log_path=stack.log_dir / f"worker-{cls}-{i}.log",
                        env=stack.child_env(BRIGADE_METRICS_PORT=str(mport), BRIGADE_WORKER_CLASS=cls),
                    )
                )
        # Workers load and warm their model before they open their port; start them side by side.
        for svc in [ingress, *workers]:
            stack.services.append(svc)
            svc.start(timeout_s=ready_timeout_s, wait=False)
        for svc in [ingress, *workers]:
            svc.wait_port(timeout_s=ready_timeout_s)
        urls = [f"http://127.0.0.1:{s.port}/readyz" for s in [ingress, *workers]]
        # With one worker per class every worker gets partitions; with more, some may rightly own none.
        owning = set(urls[1:]) if stack.workers_per_class == 1 else set()
        _wait_ready(urls, timeout_s=ready_timeout_s, services=stack.services, owning=owning)
        yield stack
    finally:
        stop_all(stack)


def stop_all(stack: DevStack) -> None:
    """Ingress first (stop admitting), then workers (they drain and commit), then Redis and Kafka."""
    ingress = [s for s in stack.services if s.name == "ingress"]
    workers = [s for s in stack.services if s.name.startswith("worker")]
    infra = [s for s in stack.services if s not in ingress and s not in workers]
    for svc in ingress:
        svc.stop()
    for svc in workers:
        svc.terminate()  # drain side by side
    for svc in workers:
        svc.wait_stopped(timeout_s=stack.settings.drain_timeout_s + 5)  # stop() would signal again: no drain
    for svc in reversed(infra):
        svc.stop()
