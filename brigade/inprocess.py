"""An in-process fleet for tests and benchmarks: the real ingress and real workers on one event loop.

Same code paths as ``brigade ingress`` / ``brigade worker`` (their ``serve`` functions), without
the process start-up cost; ``brigade dev`` is the multi-process stack.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from brigade.redis_config import RedisClient
from brigade.streams import xread
from consumer.main import serve as serve_worker
from consumer.worker import EngineFactory
from producer.main import serve as serve_ingress
from schemas.events import DoneEvent, ErrorEvent, TokenEvent, is_final, parse_event
from schemas.settings import Settings

AnyEvent = TokenEvent | DoneEvent | ErrorEvent


@dataclass
class Fleet:
    settings: Settings
    ingress_port: int = 0
    worker_ports: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ingress_port}"


ServeFactory = Callable[[Callable[[int], None]], Coroutine[Any, Any, None]]


async def _started(factory: ServeFactory, ports: list[int], tasks: list[asyncio.Task[None]], timeout_s: float) -> None:
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def on_ready(port: int) -> None:
        if not ready.done():
            ready.set_result(port)

    task: asyncio.Task[None] = asyncio.create_task(factory(on_ready))
    tasks.append(task)
    waiters: set[asyncio.Future[Any]] = {task, ready}
    done, _ = await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()  # raises the start-up failure
        raise RuntimeError("service exited during start-up")
    if ready not in done:
        raise TimeoutError(f"service not ready after {timeout_s}s")
    ports.append(ready.result())


def _worker_factory(settings: Settings, stop: asyncio.Event, engines: EngineFactory | None) -> ServeFactory:
    def factory(on_ready: Callable[[int], None]) -> Coroutine[Any, Any, None]:
        if engines is None:
            return serve_worker(settings, stop=stop, ready=on_ready)
        return serve_worker(settings, stop=stop, ready=on_ready, engine_factory=engines)

    return factory


@contextlib.asynccontextmanager
async def fleet(
    settings: Settings,
    *,
    classes: Sequence[str] | None = None,
    ingress: bool = True,
    broker_up: bool = True,
    timeout_s: float = 60,
    engines: EngineFactory | None = None,
) -> AsyncIterator[Fleet]:
    """Start the ingress and one worker per class; stop them all (drain) on exit.

    With ``broker_up`` (a test of an unreachable broker sets it False) the fleet is yielded once the ingress's
    producer has connected, as traffic reaches a pod once its readiness probe passes: the ingress listens
    before that and answers 503 until it has.

    ``engines`` is the workers' engine factory (the bench shares one loaded model between its fleets).
    """
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    result = Fleet(settings=settings)
    try:
        if ingress:
            ports: list[int] = []
            await _started(lambda cb: serve_ingress(settings, stop=stop, ready=cb), ports, tasks, timeout_s)
            result.ingress_port = ports[0]
            if broker_up:
                await _producer_connected(result.url, timeout_s)
        for cls in classes if classes is not None else settings.classes:
            s = settings.model_copy(update={"worker_class": cls})
            await _started(_worker_factory(s, stop, engines), result.worker_ports, tasks, timeout_s)
        yield result
    finally:
        stop.set()
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=timeout_s)
            for task in pending:
                task.cancel()
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]


async def _producer_connected(url: str, timeout_s: float) -> None:
    async with httpx.AsyncClient(base_url=url) as http, asyncio.timeout(timeout_s):
        while not (await http.get("/readyz")).json()["kafka"]:  # noqa: ASYNC110
            await asyncio.sleep(0.02)  # polling a probe: HTTP offers nothing to wait on


async def read_until_final(
    redis: RedisClient, key: str, request_ids: set[str], *, timeout_s: float = 60
) -> dict[str, list[AnyEvent]]:
    """XREAD the stream until every request in ``request_ids`` has a final event (or time runs out)."""
    events: dict[str, list[AnyEvent]] = {rid: [] for rid in request_ids}
    pending = set(request_ids)
    last = "0-0"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while pending:
        left = deadline - loop.time()
        if left <= 0:
            raise TimeoutError(f"{len(pending)} requests without a final event on {key}: {sorted(pending)[:5]}")
        reply = await xread(redis, {key: last}, block_ms=int(min(left, 1.0) * 1000))
        for _stream, entries in reply:
            for entry_id, fields in entries:
                last = entry_id
                event = parse_event(fields)
                events.setdefault(event.request_id, []).append(event)
                if is_final(event):
                    pending.discard(event.request_id)
    return events


def finals(events: list[AnyEvent]) -> list[AnyEvent]:
    return [e for e in events if is_final(e)]
