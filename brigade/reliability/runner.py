"""``brigade reliability``: the fault scenarios at full size, on a broker and a redis-server of their own.

One Tansu broker and one append-only redis-server serve every scenario in turn; each scenario gets a
fresh namespace (topics, group, keys), so none sees another's leftovers. Prints one row per scenario
(sent, acknowledged, completed, lost, duplicated finals, attempts > 1, wall time) and what the fault did,
and writes them as JSON. Exit status 1 when any acknowledged request was lost, doubled or garbled.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichBar
from rich.table import Table

from brigade.devtools.process import free_port
from brigade.devtools.servers import kafka_service, on_dev_servers, redis_service
from brigade.reliability import handover, scenarios
from brigade.reliability.scenarios import Progress, Report, Stack
from producer.topics import ensure_topics
from schemas.settings import Settings

SCENARIOS = ("kill9", "broker-sigstop", "redis-restart", "sigterm", "conversation")


@dataclass(frozen=True)
class ReliabilityConfig:
    """Sizes of the full run (``brigade reliability``); the tests use smaller ones."""

    scenarios: tuple[str, ...] = SCENARIOS
    requests: int = 500  # kill9
    rate_per_s: float = 5.0  # kill9
    kill_every_s: float = 3.0
    workers: int = 3  # kill9
    freeze_s: float = 10.0
    redis_down_s: float = 5.0
    requests_per_outage: int = 200  # broker-sigstop, redis-restart
    max_new_tokens: int = 200
    partitions: int = 6  # of the small class
    session_timeout_ms: int = 3000  # Tansu accepts it; real Kafka's floor is 6000
    seed: int = 1


class BarProgress(Progress):
    """Each phase of a scenario as a rich progress line: a bar when counted, a spinner otherwise."""

    def __init__(self, bar: RichBar) -> None:
        self._bar = bar
        self._task: Any = None

    def phase(self, description: str, total: int | None = None) -> None:
        if self._task is not None:  # the previous phase is over: fill its bar, stop its spinner
            previous = next(t for t in self._bar.tasks if t.id == self._task)
            done = previous.total or 1
            self._bar.update(self._task, total=done, completed=done)
        self._task = self._bar.add_task(description, total=total)

    def advance(self, steps: int = 1) -> None:
        if self._task is not None:
            self._bar.advance(self._task, steps)


def plan(
    config: ReliabilityConfig, stack: Stack, progress: Progress
) -> dict[str, Callable[[], Awaitable[list[Report]]]]:
    """Scenario name → a run of it against ``stack`` (the namespace is set per scenario by the caller)."""
    c = config

    async def one(run: Awaitable[Report]) -> list[Report]:
        return [await run]

    return {
        "kill9": lambda: one(
            scenarios.worker_kills(
                stack,
                requests=c.requests,
                rate_per_s=c.rate_per_s,
                every_s=c.kill_every_s,
                workers=c.workers,
                max_new_tokens=c.max_new_tokens,
                seed=c.seed,
                progress=progress,
            )
        ),
        "broker-sigstop": lambda: one(
            scenarios.broker_freeze(
                stack,
                requests=c.requests_per_outage,
                freeze_s=c.freeze_s,
                max_new_tokens=c.max_new_tokens,
                progress=progress,
            )
        ),
        "redis-restart": lambda: one(
            scenarios.redis_restart(
                stack,
                requests=c.requests_per_outage,
                down_s=c.redis_down_s,
                max_new_tokens=c.max_new_tokens,
                progress=progress,
            )
        ),
        "sigterm": lambda: _sigterm_both(stack, progress),
        "conversation": lambda: one(handover.conversation_handover(stack, turns=5, progress=progress)),
    }


async def _sigterm_both(stack: Stack, progress: Progress) -> list[Report]:
    drained = await handover.sigterm_mid_batch(stack, requests=16, drain_timeout_s=30.0, progress=progress)
    stack.settings = await _fresh_namespace(stack.settings)
    abandoned = await handover.sigterm_mid_batch(stack, requests=16, drain_timeout_s=0.0, progress=progress)
    return [drained, abandoned]


async def _fresh_namespace(settings: Settings) -> Settings:
    fresh = settings.model_copy(update={"namespace": f"rel{uuid.uuid4().hex[:8]}"})
    await ensure_topics(fresh)
    return fresh


async def run_reliability(
    config: ReliabilityConfig, *, base: Settings, log_dir: Path | None, console: Console
) -> list[Report]:
    """Start the broker and Redis, run each scenario in a fresh namespace, stop everything."""
    logs = log_dir or Path(tempfile.mkdtemp(prefix="brigade-reliability-"))
    logs.mkdir(parents=True, exist_ok=True)
    console.print(f"logs in {logs}")
    kafka = kafka_service(port=free_port(), log_dir=logs).start()
    redis = redis_service(port=free_port(), log_dir=logs, appendonly=True).start()
    settings = base.model_copy(
        update={
            **on_dev_servers(kafka, redis),
            "class_partitions": (config.partitions, *base.class_partitions[1:]),
            "kafka_session_timeout_ms": config.session_timeout_ms,
            "drain_timeout_s": 10.0,
            "metrics_port": 0,
        }
    )
    reports: list[Report] = []
    try:
        with RichBar(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        ) as bar:
            stack = Stack(settings=settings, kafka=kafka, redis=redis, log_dir=logs)
            runs = plan(config, stack, BarProgress(bar))
            for name in config.scenarios:
                stack.settings = await _fresh_namespace(settings)
                reports += await runs[name]()
    finally:
        await asyncio.to_thread(redis.stop)
        await asyncio.to_thread(kafka.stop)
    return reports


COLUMNS = ("scenario", "sent", "acked", "completed", "lost", "dup finals", "attempts>1", "unacked answered", "wall s")


def report_table(reports: list[Report]) -> Table:
    table = Table(title="brigade reliability")
    for column in COLUMNS:
        table.add_column(column, justify="left" if column == "scenario" else "right", no_wrap=True)
    for r in reports:
        t = r.tally
        row = [r.name, t.sent, t.acknowledged, t.completed, t.lost, t.duplicated, t.retried]
        row += [t.unacknowledged_answered, t.wall_s]
        table.add_row(*(str(v) for v in row), style=None if t.ok else "red")
    return table


HIDDEN = ("stored_messages", "replies")  # long; in the JSON file


def fault_lines(reports: list[Report]) -> list[str]:
    """What each fault did, one line per scenario (the conversation's messages stay in the JSON)."""
    return [f"{r.name}: " + ", ".join(f"{k}={v}" for k, v in r.fault.items() if k not in HIDDEN) for r in reports]


def reports_json(reports: list[Report]) -> str:
    return json.dumps(
        [
            {"scenario": r.name, **asdict(r.tally), "ok": r.tally.ok, "committed": r.committed, "fault": r.fault}
            for r in reports
        ],
        indent=2,
        default=str,
    )
