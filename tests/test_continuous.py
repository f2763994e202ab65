"""Continuous batching through the real worker: a real broker, a real redis-server, a scripted engine.

One long request and a queue of short ones on a single partition, at most two sequences at a time.
Continuous batching fills the place a finished short one leaves at the next step, so every short
answer is written before the long one ends; static batching makes them wait for it. And a request
that arrives while a step computes joins right after that step.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import cast

import pytest
import redis.asyncio as aioredis

from consumer.batcher import Batch, Batcher, PendingItem
from consumer.execute import BatchExecutor, Joins
from consumer.metrics import WorkerMetrics
from consumer.sink import RedisSink
from producer.topics import ensure_topics
from schemas.events import ErrorCode, ErrorEvent, is_final, parse_event
from schemas.settings import Settings
from tests.test_worker import publish_requests, request, run_until_idle, stream
from tests.test_worker_engine import WordEngine, expected_text

Entry = tuple[str, dict[str, str]]


def entry_order(entry_id: str) -> tuple[int, int]:
    """Redis stream ids are (ms, seq) from one server clock: comparable across streams."""
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)


async def finals_and_firsts(
    redis: aioredis.Redis, settings: Settings, sessions: set[str]
) -> tuple[dict[str, tuple[int, int]], dict[str, tuple[int, int]]]:
    """request_id -> order of its final entry, and of its first entry."""
    finals: dict[str, tuple[int, int]] = {}
    firsts: dict[str, tuple[int, int]] = {}
    for session in sessions:
        for entry_id, fields in cast(list[Entry], await redis.xrange(settings.names.stream_key(session))):
            event = parse_event(fields)
            firsts.setdefault(event.request_id, entry_order(entry_id))
            if is_final(event):
                assert event.request_id not in finals, "one final per request"
                finals[event.request_id] = entry_order(entry_id)
    return finals, firsts


@pytest.mark.parametrize("batching", ["continuous", "static"])
async def test_short_answers_do_not_wait_for_a_long_one(
    settings: Settings, redis_client: aioredis.Redis, batching: str
) -> None:
    one_by_one = {"max_batch_size": 2, "batching": batching, "min_join": 1, "class_partitions": (1, 1, 1)}
    settings = settings.model_copy(update=one_by_one)
    await ensure_topics(settings)
    long = request("long", "s-long", max_new_tokens=40)
    shorts = [request(f"short{i}", f"s{i}", max_new_tokens=3) for i in range(5)]
    turns = [request("x1", "s-x", max_new_tokens=3), request("x2", "s-x", max_new_tokens=3)]
    reqs = [long, *shorts, *turns]
    await publish_requests(settings, reqs)
    engine = WordEngine()

    await run_until_idle(settings, engine)

    finals, firsts = await finals_and_firsts(redis_client, settings, {r.session_id for r in reqs})
    assert set(finals) == {r.request_id for r in reqs}
    assert firsts["x2"] > finals["x1"], "a session's next turn starts only after its previous final"
    later_than_long = [r.request_id for r in [*shorts, *turns] if finals[r.request_id] > finals["long"]]
    if batching == "continuous":
        assert later_than_long == []
        assert len(engine.runs) == 1 and engine.runs[0].joined, "everything after the first batch joined it"
        assert engine.runs[0].peak == 2, "never more than max_batch_size sequences at once"
    else:
        assert len(later_than_long) == len(shorts) + len(turns) - 1  # only the first batch's short one is ahead
        assert all(not run.joined for run in engine.runs)


async def until(condition: Callable[[], bool], *, timeout_s: float = 10.0) -> None:
    """For state the executor keeps without an event to wait on (its open sessions, the engine's steps)."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


def pending(rid: str, session: str, offset: int, **fields: object) -> PendingItem:
    return PendingItem(
        request=request(rid, session, **fields), tp=("t", 0), offset=offset, enqueued_at=time.monotonic()
    )


@dataclass
class HeldRun:
    """A continuous batch of one request, "a", whose engine steps wait for the test's permits."""

    engine: WordEngine
    runner: BatchExecutor
    batcher: Batcher
    arrived: asyncio.Event
    gate: threading.Semaphore
    metrics: WorkerMetrics
    finished: list[str] = field(default_factory=list)

    def arrive(self, item: PendingItem) -> None:
        self.batcher.add(item)
        self.arrived.set()


@contextlib.asynccontextmanager
async def held_run(settings: Settings, redis: aioredis.Redis, *, fail_at: int | None = None) -> AsyncIterator[HeldRun]:
    """Start the batch and yield while its first step computes; the run must have ended when the body does."""
    gate = threading.Semaphore(0)
    engine = WordEngine(gate=gate, fail_at=fail_at)
    executor, intake = ThreadPoolExecutor(max_workers=1), ThreadPoolExecutor(max_workers=1)
    metrics = WorkerMetrics(cost_class="small")
    runner = BatchExecutor(
        settings=settings,
        engine=engine,
        sink=RedisSink(redis, names=settings.names, ttl_s=settings.stream_ttl_s),
        metrics=metrics,
        executor=executor,
        intake_executor=intake,
    )
    batcher = Batcher(max_batch_size=4, max_batch_wait_s=0.0, capacity=8)
    held = HeldRun(engine, runner, batcher, asyncio.Event(), gate, metrics)

    def take(places: int, open_sessions: Collection[str]) -> Batch | None:
        return held.batcher.take(time.monotonic(), slots=4 - places, running_sessions=open_sessions)

    first = Batch(items=(pending("a", "s-a", 0, max_new_tokens=6),), planned_at=time.monotonic(), reason="full")
    run = asyncio.create_task(
        runner.run(
            first, done=lambda item: held.finished.append(item.request.request_id), joins=Joins(take, held.arrived)
        )
    )
    try:
        await until(lambda: bool(engine.runs) and engine.runs[0].steps == 1)  # step 1 computes (held)
        yield held
        gate.release(100)
        await asyncio.wait_for(run, timeout=10)
    finally:
        gate.release(100)
        run.cancel()
        executor.shutdown(wait=False)
        intake.shutdown(wait=False)


async def test_a_request_arriving_mid_step_joins_right_after_that_step(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    """Its admission starts while the step it arrived in computes, so its prefill is the next step.

    Admitting only at step boundaries would start it during the following step and join it one later.
    """
    async with held_run(settings, redis_client) as held:
        held.arrive(pending("b", "s-b", 1, max_new_tokens=2))
        await until(lambda: "s-b" in held.runner.open_sessions)  # taken while step 1 still computes
        assert held.engine.runs[0].steps == 1

    assert held.engine.runs[0].joined == [["b"]]
    assert held.engine.runs[0].joined_after == [1], "b's prefill is step 2, the one right after it arrived"
    assert sorted(held.finished) == ["a", "b"]
    events = await stream(redis_client, settings, "s-b")
    assert "".join(getattr(e, "text", "") for e in events) == expected_text(2)
    assert sum(is_final(e) for e in events) == 1


async def test_a_joiner_is_tokenized_while_the_step_it_arrived_in_computes(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    """The intake has its own thread: a chat turn's rendering and tokenizing (milliseconds for a long one) does not
    wait for the running step, then hold up the next one for every running sequence."""
    async with held_run(settings, redis_client) as held:
        turn = pending("b", "s-b", 1, max_new_tokens=2, prompt=None, messages=[{"role": "user", "content": "hi"}])
        held.arrive(turn)
        await until(lambda: any("hi" in text for text in held.engine.encoded))
        assert held.engine.runs[0].steps == 1, "step 1 is still held"

    assert held.engine.runs[0].joined == [["b"]] and sorted(held.finished) == ["a", "b"]


async def test_an_engine_failure_answers_the_joiners_not_yet_joined(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    """A request admitted during the step that fails never reached the engine, and still gets its one final."""
    async with held_run(settings, redis_client, fail_at=1) as held:
        held.arrive(pending("b", "s-b", 1, max_new_tokens=2))
        await until(lambda: "s-b" in held.runner.open_sessions)

    assert held.engine.runs[0].joined == []
    assert sorted(held.finished) == ["a", "b"]
    for session in ("s-a", "s-b"):
        (final,) = await stream(redis_client, settings, session)
        assert isinstance(final, ErrorEvent) and final.code is ErrorCode.INTERNAL
        assert "scripted failure at step 1" in final.message


async def test_the_free_slots_go_to_the_best_priorities(settings: Settings, redis_client: aioredis.Redis) -> None:
    """Four arrive while step 1 computes and three slots are free: the worst priority (highest number) waits."""
    async with held_run(settings, redis_client) as held:
        for offset, (rid, priority) in enumerate((("b", 0), ("c", 7), ("d", 0), ("u", -5)), start=1):
            held.arrive(pending(rid, f"s-{rid}", offset, max_new_tokens=2, priority=priority))
        await until(lambda: "s-u" in held.runner.open_sessions)
        assert "s-c" not in held.runner.open_sessions

    assert held.engine.runs[0].joined[0] == ["u", "b", "d"]
    assert sorted(held.finished) == ["a", "b", "c", "d", "u"]
