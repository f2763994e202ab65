"""A fleet of real OS processes (``brigade ingress``, ``brigade worker``) to break on purpose.

Fault tests need what an in-process fleet cannot give: a process that dies by SIGKILL mid-step with
its sockets and memory gone, a SIGTERM that reaches the production signal handler, a Redis restart
that closes every pooled connection. So each part runs through its production entry point, configured
only by ``BRIGADE_*`` variables (``Settings.to_env``), logging JSON to its own file, and is observed the
way Kubernetes observes it: through ``/readyz``, whose body also says how many partitions a worker owns.

Processes are started from the event loop's thread, never from a worker thread: ``Service`` asks Linux
to signal the child when its parent *thread* exits (PR_SET_PDEATHSIG), which would kill it at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from brigade.devtools.process import Service, ServiceFailed, free_port
from schemas.settings import Settings

READY_TIMEOUT_S = 90.0  # model load and warm-up on a busy 2-core machine included
POLL_S = 0.1  # how often /readyz is asked while waiting for a condition


@dataclass
class ProcessFleet:
    """Ingress and workers as child processes; ``close`` stops whatever is still running."""

    settings: Settings
    log_dir: Path
    ingress: Service | None = None
    workers: list[Service] = field(default_factory=list)  # live and dead, in start order
    _started: int = 0

    @property
    def url(self) -> str:
        assert self.ingress is not None, "start_ingress() first"
        return f"http://127.0.0.1:{self.ingress.port}"

    @property
    def live_workers(self) -> list[Service]:
        return [w for w in self.workers if w.running]

    def env(self, **extra: str) -> dict[str, str]:
        return {**self.settings.to_env(), "BRIGADE_LOG_FORMAT": "json", **extra}

    async def start_ingress(self, *, timeout_s: float = READY_TIMEOUT_S) -> Service:
        port = free_port()
        self.ingress = Service(
            name="ingress",
            argv=[sys.executable, "-m", "brigade", "ingress"],
            port=port,
            log_path=self.log_dir / "ingress.log",
            env=self.env(BRIGADE_PORT=str(port), BRIGADE_HOST="127.0.0.1"),
        ).start(wait=False)
        await wait_ready(self.ingress, timeout_s=timeout_s)
        return self.ingress

    def launch_worker(self, *, cost_class: str = "small", **extra: str) -> Service:
        """Start a worker process and return at once (it loads its model, then joins the group)."""
        self._started += 1
        port = free_port()
        worker = Service(
            name=f"worker-{cost_class}-{self._started}",
            argv=[sys.executable, "-m", "brigade", "worker", "--class", cost_class],
            port=port,
            log_path=self.log_dir / f"worker-{cost_class}-{self._started}.log",
            env=self.env(BRIGADE_METRICS_PORT=str(port), **extra),
        ).start(wait=False)
        self.workers.append(worker)
        return worker

    async def start_workers(self, count: int, *, cost_class: str = "small", **extra: str) -> list[Service]:
        """Start ``count`` workers side by side and wait until each reports ready."""
        started = [self.launch_worker(cost_class=cost_class, **extra) for _ in range(count)]
        await asyncio.gather(*(wait_ready(w) for w in started))
        return started

    async def wait_owned(self, partitions: int, *, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Wait until the live workers between them own ``partitions`` partitions (a settled group).

        A killed member still holds its partitions in the broker's view until its session times out;
        only the survivors are asked, so this also waits out that expiry and the rebalance after it.
        """
        async with asyncio.timeout(timeout_s), httpx.AsyncClient(timeout=1.0) as http:
            while True:
                if sum([await owned(http, w) for w in self.live_workers]) == partitions:
                    return
                await asyncio.sleep(POLL_S)  # polling a probe: HTTP offers nothing to wait on

    def count_logged(self, message: str) -> int:
        """How many log lines of all workers, live and dead, carry exactly ``message`` (JSON logs)."""
        needle = json.dumps({"message": message})[1:-1]  # '"message": "..."' as the JSON formatter writes it
        return sum(w.log_path.read_text(errors="replace").count(needle) for w in self.workers if w.log_path.exists())

    async def wait_busy(self, *, timeout_s: float) -> list[Service]:
        """Wait until some live worker has requests running (by /metrics): those workers; [] if none in time."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        async with httpx.AsyncClient(timeout=1.0) as http:
            while loop.time() < deadline:
                live = self.live_workers
                running = [await running_requests(http, w) for w in live]
                if busy := [w for w, n in zip(live, running, strict=True) if n > 0]:
                    return busy
                await asyncio.sleep(POLL_S)  # polling a probe: HTTP offers nothing to wait on
        return []

    def signal_worker(self, worker: Service, signum: signal.Signals) -> None:
        assert worker.process is not None
        os.kill(worker.process.pid, signum)

    async def wait_exit(self, service: Service, *, timeout_s: float) -> int:
        """The exit code of ``service`` once it has exited (its process is reaped in a thread)."""
        assert service.process is not None
        return await asyncio.wait_for(asyncio.to_thread(service.process.wait), timeout=timeout_s)

    async def close(self) -> None:
        """Ingress first, then every worker at once (they drain side by side), SIGKILL past the drain."""
        if self.ingress is not None:
            await asyncio.to_thread(self.ingress.stop)
        for worker in self.live_workers:
            worker.terminate()
        wait_s = self.settings.drain_timeout_s + 10
        await asyncio.gather(*(asyncio.to_thread(w.wait_stopped, timeout_s=wait_s) for w in self.workers))


async def owned(http: httpx.AsyncClient, worker: Service) -> int:
    """Partitions ``worker`` owns now, by its /readyz body; 0 when it does not answer."""
    try:
        body = (await http.get(f"http://127.0.0.1:{worker.port}/readyz")).json()
    except (httpx.HTTPError, ValueError):
        return 0
    return int(body.get("partitions", 0))


async def metric(http: httpx.AsyncClient, worker: Service, name: str) -> float:
    """The value of the (single-series) metric ``name`` on ``worker``'s /metrics; 0 when it does not answer."""
    try:
        text = (await http.get(f"http://127.0.0.1:{worker.port}/metrics")).text
    except httpx.HTTPError:
        return 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def running_requests(http: httpx.AsyncClient, worker: Service) -> int:
    """Requests in ``worker``'s running batch now."""
    return int(await metric(http, worker, "brigade_num_requests_running"))


async def finished_requests(http: httpx.AsyncClient, worker: Service) -> int:
    """Requests ``worker`` has answered since it started (its end-to-end latency histogram's count)."""
    return int(await metric(http, worker, "brigade_e2e_request_latency_seconds_count"))


async def wait_ready(service: Service, *, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Poll ``/readyz`` until 200; fail with the log tail if the process exits or time runs out."""
    url = f"http://127.0.0.1:{service.port}/readyz"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    async with httpx.AsyncClient(timeout=1.0) as http:
        while True:
            if not service.running:
                raise ServiceFailed(f"{service.name} exited during start-up:\n{service.log_tail()}")
            try:
                if (await http.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if loop.time() > deadline:
                raise ServiceFailed(f"{service.name} not ready after {timeout_s:g}s:\n{service.log_tail()}")
            await asyncio.sleep(POLL_S)  # polling a probe: HTTP offers nothing to wait on
