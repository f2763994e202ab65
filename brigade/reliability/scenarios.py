"""Faults under load: workers killed with SIGKILL, the broker frozen with SIGSTOP, Redis restarted.

Each scenario starts its own processes (``ProcessFleet``) against a broker and a Redis it is handed
(``Stack``: the tests hand it their fixtures, ``brigade reliability`` its own servers), sends open-loop
load through a real ingress, injects its fault while the load flows, then waits until every
acknowledged request has a final event and the group's commits cover them, and reads the streams as a
reader would (``outcome``). The fault's own timing (kill every few seconds, freeze for ten) is the
load pattern under test; everything else waits on conditions with deadlines.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from brigade.devtools.process import Service, port_open
from brigade.reliability.fleet import ProcessFleet
from brigade.reliability.load import Submission, prompt_body, send_paced
from brigade.reliability.outcome import Tally, log_ends, read_streams, tally, wait_committed, wait_finals
from schemas.settings import Settings

COST_CLASS = "small"
BUSY_WAIT_S = 10.0  # how long a kill waits for a worker with requests running
FINALS_TIMEOUT_S = 180.0  # after the load: how long every acknowledged request may take to get its final


@dataclass
class Stack:
    """The servers a scenario runs against, and where its processes log."""

    settings: Settings  # bootstrap, Redis URL, namespace, partitions; the scenario adds its own knobs
    kafka: Service
    redis: Service
    log_dir: Path


@dataclass
class Report:
    """One scenario's outcome: the tally plus what the fault did (kills, seconds frozen...)."""

    name: str
    tally: Tally
    fault: dict[str, Any] = field(default_factory=dict)
    committed: bool = False  # the group's commits reached every acknowledged offset


class Progress:
    """Where a scenario is, for a progress bar; the default does nothing (tests)."""

    def phase(self, description: str, total: int | None = None) -> None:
        """A new phase starts; ``total`` steps if it is counted."""

    def advance(self, steps: int = 1) -> None:
        """One more step of the current phase is done."""


Fault = Callable[[ProcessFleet, "Answered"], Coroutine[Any, Any, dict[str, Any]]]


@dataclass
class Answered:
    """The load's progress as the fault sees it: answers so far, and when the load is over."""

    total: int
    count: int = 0
    acked: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    def note(self, sub: Submission) -> None:
        self.count += 1
        self.acked += sub.acknowledged
        self.changed.set()

    async def wait_acked(self, n: int) -> None:
        """Until ``n`` requests are acknowledged or the load is over."""
        while self.acked < n and not self.finished.is_set():
            self.changed.clear()
            await self.changed.wait()


async def run_under_load(
    name: str,
    stack: Stack,
    fault: Fault,
    *,
    requests: int,
    rate_per_s: float,
    workers: int,
    max_new_tokens: int,
    progress: Progress,
    worker_env: dict[str, str] | None = None,
    count_logs: Mapping[str, str] | None = None,
) -> Report:
    """Start ingress + ``workers``, send ``requests`` at ``rate_per_s`` while ``fault`` runs, then tally.

    ``count_logs`` maps a figure of the fault report to a worker log message whose lines it counts.
    """
    settings = stack.settings
    fleet = ProcessFleet(settings=settings, log_dir=stack.log_dir / name)
    redis = aioredis.from_url(settings.redis_url, decode_responses=True)
    try:
        progress.phase(f"{name}: starting ingress and {workers} workers")
        await fleet.start_ingress()
        await fleet.start_workers(workers, cost_class=COST_CLASS, **(worker_env or {}))
        await fleet.wait_owned(settings.cost_class(COST_CLASS).partitions)
        bodies = [
            prompt_body(f"{name}-{i}", f"{name}-s{i % 50}", max_new_tokens=max_new_tokens, cost_class=COST_CLASS)
            for i in range(requests)
        ]
        answered = Answered(total=requests)
        progress.phase(f"{name}: sending {requests} requests", total=requests)
        started = time.monotonic()

        def on_answer(sub: Submission) -> None:
            answered.note(sub)
            progress.advance()

        fault_task = asyncio.create_task(fault(fleet, answered))
        try:
            submissions = await send_paced(fleet.url, bodies, rate_per_s=rate_per_s, on_answer=on_answer)
        finally:
            answered.finished.set()
            answered.changed.set()
        fault_report = await fault_task
        progress.phase(f"{name}: waiting for every acknowledged request's final event")
        await wait_finals(redis, settings, submissions, timeout_s=FINALS_TIMEOUT_S)
        wall_s = time.monotonic() - started
        committed = await wait_committed(settings, COST_CLASS, log_ends(submissions), timeout_s=60)
        verdicts = await read_streams(redis, settings, (s.session_id for s in submissions))
        for figure, message in (count_logs or {}).items():
            fault_report[figure] = fleet.count_logged(message)
        return Report(name, tally(submissions, verdicts, wall_s=wall_s), fault_report, committed)
    finally:
        await redis.aclose()
        await fleet.close()


async def worker_kills(
    stack: Stack,
    *,
    requests: int = 80,
    rate_per_s: float = 5.0,
    every_s: float = 3.0,
    workers: int = 3,
    max_new_tokens: int = 32,
    seed: int = 1,
    progress: Progress | None = None,
) -> Report:
    """SIGKILL one of ``workers`` every ``every_s`` while the load flows; a replacement starts at once.

    The victim is a worker in the middle of a batch (waited for, up to ``BUSY_WAIT_S``), so kills cut
    generations off.
    """
    rng = random.Random(seed)

    async def kill_repeatedly(fleet: ProcessFleet, answered: Answered) -> dict[str, Any]:
        kills = 0
        while True:
            try:
                await asyncio.wait_for(answered.finished.wait(), timeout=every_s)  # the kill cadence
                break
            except TimeoutError:
                pass
            # Wait for a worker mid-batch: right after a kill the group is still rebalancing and no one runs, and
            # a kill that cuts nothing off tests nothing. Past the wait, any live worker (an idle fleet).
            victim = rng.choice(await fleet.wait_busy(timeout_s=BUSY_WAIT_S) or fleet.live_workers)
            fleet.signal_worker(victim, signal.SIGKILL)
            await fleet.wait_exit(victim, timeout_s=10)
            kills += 1
            fleet.launch_worker(cost_class=COST_CLASS)  # as Kubernetes restarts a killed pod
        return {"kills": kills, "every_s": every_s, "workers": workers}

    return await run_under_load(
        "kill9",
        stack,
        kill_repeatedly,
        requests=requests,
        rate_per_s=rate_per_s,
        workers=workers,
        max_new_tokens=max_new_tokens,
        progress=progress or Progress(),
    )


async def broker_freeze(
    stack: Stack,
    *,
    requests: int = 60,
    rate_per_s: float = 6.0,
    freeze_s: float = 6.0,
    workers: int = 2,
    max_new_tokens: int = 200,
    progress: Progress | None = None,
) -> Report:
    """SIGSTOP the broker for ``freeze_s`` once a third of the load is acknowledged, then SIGCONT it."""

    async def freeze(fleet: ProcessFleet, answered: Answered) -> dict[str, Any]:
        await answered.wait_acked(answered.total // 3)
        busy = await fleet.wait_busy(timeout_s=10)  # work in flight: its commits fall into the freeze
        assert stack.kafka.process is not None
        stack.kafka.process.send_signal(signal.SIGSTOP)
        frozen_at = time.monotonic()
        try:
            await asyncio.sleep(freeze_s)  # the fault's duration: the broker is frozen this long
        finally:
            stack.kafka.process.send_signal(signal.SIGCONT)
        return {
            "frozen_s": round(time.monotonic() - frozen_at, 1),
            "acked_before": answered.acked,
            "busy_at_freeze": bool(busy),
        }

    return await run_under_load(
        "broker-sigstop",
        stack,
        freeze,
        requests=requests,
        rate_per_s=rate_per_s,
        workers=workers,
        max_new_tokens=max_new_tokens,
        progress=progress or Progress(),
        count_logs={"commit_retries": "kafka unreachable; retrying with backoff"},
    )


async def redis_restart(
    stack: Stack,
    *,
    requests: int = 60,
    rate_per_s: float = 6.0,
    down_s: float = 2.0,
    workers: int = 2,
    max_new_tokens: int = 200,
    progress: Progress | None = None,
) -> Report:
    """Restart ``stack.redis`` (append-only on) once a third of the load is acknowledged, down ``down_s``.

    A clean restart: SIGTERM makes redis-server flush its append-only file before it exits, so nothing
    acknowledged by Redis is lost; the test is whether the workers ride it out.
    """

    async def restart(fleet: ProcessFleet, answered: Answered) -> dict[str, Any]:
        await answered.wait_acked(answered.total // 3)
        stopped_at = time.monotonic()
        await asyncio.to_thread(stack.redis.stop)
        await asyncio.sleep(down_s)  # the fault's duration: Redis stays down this long
        stack.redis.start(wait=False)  # on the loop's thread: see ProcessFleet about PR_SET_PDEATHSIG
        async with asyncio.timeout(30):
            while not port_open("127.0.0.1", stack.redis.port):
                assert stack.redis.running, stack.redis.log_tail()
                await asyncio.sleep(0.05)  # a port has no readiness signal to wait on
        return {"down_s": round(time.monotonic() - stopped_at, 1), "acked_before": answered.acked}

    return await run_under_load(
        "redis-restart",
        stack,
        restart,
        requests=requests,
        rate_per_s=rate_per_s,
        workers=workers,
        max_new_tokens=max_new_tokens,
        progress=progress or Progress(),
        count_logs={
            "redis_retries": "redis unreachable; retrying with backoff",
            "workers_died": "[shutdown] brigade-work failed; stopping the worker",
        },
    )
