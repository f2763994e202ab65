"""The worker end to end against a real broker (Tansu), a real redis-server and the builtin:tiny model.

Each test publishes with a plain aiokafka producer, runs the worker until idle (no sleeps: the
worker itself decides it is idle on a monotonic clock) and then checks streams and committed offsets.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import httpx
import pytest
import redis.asyncio as aioredis
import redis.exceptions
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from brigade.devtools.process import free_port
from brigade.kafka_config import kafka_client_options
from brigade.streams import xread
from consumer.engine.interface import InferenceEngine
from consumer.worker import Worker, default_engine_factory
from schemas.events import DoneEvent, ErrorCode, ErrorEvent, TokenEvent, is_final, parse_event
from schemas.requests import InferenceRequest
from schemas.settings import Settings
from tests.test_worker_engine import CountingEngine, SlowEngine

AnyEvent = TokenEvent | DoneEvent | ErrorEvent
IDLE_S = 1.0
RUN_TIMEOUT_S = 60.0


def request(rid: str, session: str, **fields: Any) -> InferenceRequest:
    base: dict[str, Any] = {"prompt": "The pass is where plates go out.", "max_new_tokens": 4}
    base |= {"temperature": 0, "ignore_eos": True}
    return InferenceRequest(request_id=rid, session_id=session, **(base | fields))


async def publish(settings: Settings, messages: Sequence[tuple[str, bytes]]) -> dict[int, int]:
    """Send (key, value) pairs to the class topic; return partition → log end offset of what we sent."""
    producer = AIOKafkaProducer(**kafka_client_options(settings), acks="all")
    await producer.start()
    ends: dict[int, int] = {}
    try:
        topic = settings.names.request_topic(settings.worker_class)
        for key, value in messages:
            meta = await producer.send_and_wait(topic, value=value, key=key.encode())
            ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
    finally:
        await producer.stop()
    return ends


async def publish_requests(settings: Settings, requests: Sequence[InferenceRequest]) -> dict[int, int]:
    return await publish(settings, [(r.session_id, r.to_bytes()) for r in requests])


async def run_until_idle(settings: Settings, engine: InferenceEngine | None = None) -> Worker:
    worker = Worker(settings, engine_factory=(lambda _s: engine) if engine else default_engine_factory, idle_s=IDLE_S)
    await asyncio.wait_for(worker.run(stop=asyncio.Event()), timeout=RUN_TIMEOUT_S)
    return worker


async def committed(settings: Settings, partitions: Sequence[int]) -> dict[int, int | None]:
    consumer = AIOKafkaConsumer(
        **kafka_client_options(settings),
        group_id=settings.names.consumer_group(settings.worker_class),
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        topic = settings.names.request_topic(settings.worker_class)
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in partitions}
    finally:
        await consumer.stop()


async def stream(redis: aioredis.Redis, settings: Settings, session: str) -> list[AnyEvent]:
    entries = cast(list[tuple[str, dict[str, str]]], await redis.xrange(settings.names.stream_key(session)))
    return [parse_event(fields) for _, fields in entries]


def by_request(events: Sequence[AnyEvent]) -> dict[str, list[AnyEvent]]:
    out: dict[str, list[AnyEvent]] = {}
    for e in events:
        out.setdefault(e.request_id, []).append(e)
    return out


def only_final(events: Sequence[AnyEvent]) -> AnyEvent:
    finals = [e for e in events if is_final(e)]
    assert len(finals) == 1, events
    assert events[-1] is finals[0], "the final event comes last"
    return finals[0]


async def test_every_request_gets_one_final_and_offsets_reach_the_log_end(
    settings: Settings, topics: list[str], redis_client: aioredis.Redis
) -> None:
    settings = settings.model_copy(update={"max_batch_size": 4})
    reqs = [request(f"r{i}", f"s{i % 5}", max_new_tokens=2 + i % 4) for i in range(18)]
    reqs.append(request("chat", "s-chat", prompt=None, messages=[{"role": "user", "content": "Fire table two."}]))
    ends = await publish_requests(settings, reqs)

    worker = await run_until_idle(settings)

    sessions = {r.session_id for r in reqs}
    events = {rid: evs for s in sessions for rid, evs in by_request(await stream(redis_client, settings, s)).items()}
    assert set(events) == {r.request_id for r in reqs}
    for r in reqs:
        evs = events[r.request_id]
        final = only_final(evs)
        assert isinstance(final, DoneEvent), final
        assert final.completion_tokens == r.max_new_tokens and final.prompt_tokens > 0
        assert [e.seq for e in evs] == list(range(len(evs))) and {e.attempt for e in evs} == {1}
        stamps = (final.published_at_ms, final.fetched_at_ms, final.scheduled_at_ms, final.first_token_at_ms)
        stages = [t for t in stamps if t is not None]
        assert len(stages) == 4 and stages == sorted(stages), stamps  # where its time went, in order
    for s in sessions:  # a session's turns are answered in publish order
        order = [e.request_id for e in await stream(redis_client, settings, s) if is_final(e)]
        assert order == [r.request_id for r in reqs if r.session_id == s]
    for batch in worker.batches:
        assert len({i.session_id for i in batch.items}) == batch.size <= 4
    assert await committed(settings, list(ends)) == ends


async def test_poison_messages_are_dead_lettered_and_the_next_request_completes(
    settings: Settings, topics: list[str], redis_client: aioredis.Redis
) -> None:
    no_session = json.dumps({"request_id": "bad-1", "prompt": "hi"}).encode()
    good = request("good-1", "poisoned")
    ends = await publish(
        settings, [("poisoned", b"\x00not json{"), ("poisoned", no_session), ("poisoned", good.to_bytes())]
    )

    worker = await run_until_idle(settings)

    final = only_final(await stream(redis_client, settings, "poisoned"))
    assert isinstance(final, DoneEvent) and final.request_id == "good-1"
    assert await committed(settings, list(ends)) == ends
    dead = await read_dlq(settings, count=2)
    assert [h["reason"] for h in dead] == ["not_json", "invalid_request"]
    assert "session_id" in dead[1]["error"] and dead[1]["value"] == no_session
    assert dead[0]["value"] == b"\x00not json{"
    assert {h["source_topic"] for h in dead} == {settings.names.request_topic(settings.worker_class).encode()}
    assert [h["source_offset"] for h in dead] == [b"0", b"1"]
    metrics = worker_metrics(worker)
    assert b'brigade_dlq_messages_total{class="small"} 2.0' in metrics
    (partition,) = ends
    assert f'brigade_consumer_lag{{class="small",partition="{partition}"}} 0.0'.encode() in metrics
    assert worker.fetcher is not None and worker.fetcher.lag()[partition] == 0
    assert worker.fetcher.highwater(TopicPartition(settings.names.request_topic("small"), partition)) == 3


async def test_an_invalid_record_naming_its_request_is_dead_lettered_and_answered_once(
    settings: Settings, topics: list[str], redis_client: aioredis.Redis
) -> None:
    """What an older worker does with a field or value only a newer publisher knows: its caller is not left
    waiting for a final that never comes. The same record twice (a redelivery) is answered once."""
    odd = {"request_id": "odd-1", "session_id": "odd", "prompt": "hi", "max_new_tokens": "lots", "surprise": 1}
    raw = json.dumps(odd).encode()
    ends = await publish(settings, [("odd", raw), ("odd", raw), ("odd", request("fine-1", "odd").to_bytes())])

    worker = await run_until_idle(settings)

    events = by_request(await stream(redis_client, settings, "odd"))
    final = only_final(events["odd-1"])
    assert isinstance(final, ErrorEvent) and final.code is ErrorCode.INVALID_REQUEST, final
    assert "max_new_tokens: Input should be a valid integer" in final.message
    assert "surprise: Extra inputs are not permitted" in final.message
    assert settings.names.dlq_topic in final.message and "upgrade the workers first" in final.message
    assert isinstance(only_final(events["fine-1"]), DoneEvent)
    dead = await read_dlq(settings, count=2)
    assert [(h["reason"], h["value"]) for h in dead] == [("invalid_request", raw)] * 2
    assert await committed(settings, list(ends)) == ends
    metrics = worker_metrics(worker)
    assert b'brigade_dlq_messages_total{class="small"} 2.0' in metrics
    # The redelivery is answered once, so counted once; the fine one ended with its own reason.
    assert b'brigade_request_errors_total{class="small",code="invalid_request"} 1.0' in metrics
    reason = only_final(events["fine-1"])
    assert isinstance(reason, DoneEvent)
    assert (
        f'brigade_request_success_total{{class="small",finished_reason="{reason.finish_reason.value}"}} 1.0'.encode()
        in metrics
    )


async def read_dlq(settings: Settings, *, count: int) -> list[dict[str, Any]]:
    consumer = AIOKafkaConsumer(
        settings.names.dlq_topic, **kafka_client_options(settings), auto_offset_reset="earliest"
    )
    await consumer.start()
    out: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(20):
            while len(out) < count:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for rec in records:
                        headers: dict[str, Any] = dict(rec.headers)
                        headers["reason"] = headers["reason"].decode()
                        headers["error"] = headers["error"].decode()
                        out.append(headers | {"value": rec.value})
    finally:
        await consumer.stop()
    return out


def worker_metrics(worker: Worker) -> bytes:
    from prometheus_client import generate_latest

    return generate_latest(worker.metrics.registry)


async def test_expired_invalid_and_too_long_requests_get_errors_without_compute(
    settings: Settings, topics: list[str], redis_client: aioredis.Redis
) -> None:
    past = datetime.now(UTC) - timedelta(seconds=1)
    reqs = [
        request("late", "a", deadline=past),
        request("wrong-model", "b", model="someone-else"),
        request("too-long", "c", max_new_tokens=1000),
        request("fine", "d", deadline=datetime.now(UTC) + timedelta(minutes=5)),
        request("unknown-token", "e", logit_bias={3: 1.0, 10**9: -5.0}),
        request("unknown-stop", "f", stop_token_ids=[3, 10**8]),
    ]
    await publish_requests(settings, reqs)
    engine = CountingEngine(default_engine_factory(settings))

    await run_until_idle(settings, engine)

    expected = {
        "a": ErrorCode.EXPIRED,
        "b": ErrorCode.INVALID_REQUEST,
        "c": ErrorCode.CONTEXT_LENGTH_EXCEEDED,
    }
    for session, code in expected.items():
        final = only_final(await stream(redis_client, settings, session))
        assert isinstance(final, ErrorEvent) and final.code is code and final.seq == 0, final
    assert isinstance(only_final(await stream(redis_client, settings, "d")), DoneEvent)
    assert engine.started_ids == {"fine"}
    unknown = only_final(await stream(redis_client, settings, "e"))
    assert isinstance(unknown, ErrorEvent) and unknown.code is ErrorCode.INVALID_REQUEST
    assert f"logit_bias names token id {10**9}, outside" in unknown.message, unknown.message
    stop = only_final(await stream(redis_client, settings, "f"))
    assert isinstance(stop, ErrorEvent) and f"stop_token_ids names token id {10**8}, outside" in stop.message


async def test_a_null_max_new_tokens_gets_what_the_context_leaves_up_to_the_limit(
    settings: Settings, topics: list[str], redis_client: aioredis.Redis
) -> None:
    settings = settings.model_copy(update={"max_new_tokens_limit": 12})
    engine = CountingEngine(default_engine_factory(settings))
    context = engine.max_context
    prompts = {"short": "a" * 8, "near-end": "a" * (context - 5), "full": "a" * context}
    counts = {name: len(engine.encode(text)) for name, text in prompts.items()}
    assert counts["near-end"] < context <= counts["full"] <= settings.max_prompt_tokens
    await publish_requests(
        settings, [request(name, name, prompt=text, max_new_tokens=None) for name, text in prompts.items()]
    )

    await run_until_idle(settings, engine)

    for name, left in (("short", 12), ("near-end", context - counts["near-end"])):
        final = only_final(await stream(redis_client, settings, name))
        assert isinstance(final, DoneEvent) and final.finish_reason == "length", final
        assert final.completion_tokens == left and final.prompt_tokens == counts[name], final
    full = only_final(await stream(redis_client, settings, "full"))
    assert isinstance(full, ErrorEvent) and full.code is ErrorCode.CONTEXT_LENGTH_EXCEEDED, full
    assert "max_new_tokens is null" in full.message and str(context) in full.message
    assert engine.started_ids == {"short", "near-end"}


async def test_a_redelivered_finished_request_is_skipped(
    settings: Settings, topics: list[str], redis_client: aioredis.Redis
) -> None:
    first = request("once", "dup")
    await publish_requests(settings, [first])
    await run_until_idle(settings)
    # The same request again: a producer retry, or a redelivery after a crash before the commit.
    ends = await publish_requests(settings, [first])
    engine = CountingEngine(default_engine_factory(settings))

    await run_until_idle(settings, engine)

    events = await stream(redis_client, settings, "dup")
    assert isinstance(only_final(events), DoneEvent)
    assert engine.started == []
    assert await committed(settings, list(ends)) == ends


async def test_a_small_queue_pauses_partitions_and_still_serves_everything(
    settings: Settings, topics: list[str], redis_client: aioredis.Redis
) -> None:
    settings = settings.model_copy(update={"queue_size": 2, "max_batch_size": 1})
    reqs = [request(f"bp{i}", f"bp-s{i}", max_new_tokens=2) for i in range(12)]
    ends = await publish_requests(settings, reqs)

    worker = await run_until_idle(settings)

    assert worker.fetcher is not None and worker.fetcher.pause_count >= 1
    assert all(b.size == 1 for b in worker.batches)
    for r in reqs:
        assert isinstance(only_final(await stream(redis_client, settings, r.session_id)), DoneEvent)
    assert await committed(settings, list(ends)) == ends


async def test_stop_drains_the_running_batch_and_the_rest_is_redelivered(
    settings: Settings, topics: list[str], redis_client: aioredis.Redis
) -> None:
    settings = settings.model_copy(update={"max_batch_size": 2, "max_batch_wait_ms": 0.0})
    reqs = [request(f"dr{i}", f"dr-s{i}", max_new_tokens=200) for i in range(8)]
    ports: list[int] = []
    stop = asyncio.Event()
    worker = Worker(settings, ready=ports.append)
    task = asyncio.create_task(worker.run(stop=stop))
    async with asyncio.timeout(RUN_TIMEOUT_S):
        while not ports:  # ready is reported before joining the group
            await asyncio.wait({task}, timeout=0.05)
            assert not task.done(), task
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports[0]}") as http:
            assert (await http.get("/healthz")).status_code == 200
            assert (await http.get("/readyz")).status_code == 200
            ends = await publish_requests(settings, reqs)
            keys = {settings.names.stream_key(f"dr-s{i}"): "0-0" for i in range(8)}
            async with asyncio.timeout(30):  # the first token of the first batch
                while not await xread(redis_client, keys, block_ms=1000):
                    pass
            body = (await http.get("/metrics")).text
            assert 'brigade_num_requests_running{class="small"}' in body
            assert "brigade_time_to_first_token_seconds_bucket" in body
        stop.set()
        await task
    assert worker.state == "stopped"

    started = {e.request_id for r in reqs for e in await stream(redis_client, settings, r.session_id)}
    assert started and len(started) < len(reqs), "the drain stops before the backlog is done"
    for r in reqs:
        if r.request_id in started:  # the running batch finished during the drain
            assert isinstance(only_final(await stream(redis_client, settings, r.session_id)), DoneEvent)

    await run_until_idle(settings)  # the queued rest was not committed: Kafka redelivers it
    for r in reqs:
        events = await stream(redis_client, settings, r.session_id)
        assert isinstance(only_final(events), DoneEvent) and {e.attempt for e in events} == {1}
    assert await committed(settings, list(ends)) == ends


async def test_a_dead_redis_fails_the_worker_loudly(settings: Settings, topics: list[str]) -> None:
    """Past BRIGADE_DEPENDENCY_RETRY_S of retries an unreachable Redis takes the worker down, uncommitted."""
    settings = settings.model_copy(
        update={"redis_url": f"redis://127.0.0.1:{free_port()}/0", "dependency_retry_s": 1.0}
    )
    await publish_requests(settings, [request("lost", "nowhere")])
    worker = Worker(settings)
    with pytest.raises(redis.exceptions.ConnectionError):
        await asyncio.wait_for(worker.run(stop=asyncio.Event()), timeout=RUN_TIMEOUT_S)
    assert worker.state == "stopped"
    assert await committed(settings, [0, 1]) == {0: 0, 1: 0}, "nothing past the failed request is committed"


async def test_a_second_worker_joining_mid_run_leaves_exactly_one_final_per_request(
    settings: Settings, topics: list[str], redis_client: aioredis.Redis
) -> None:
    """The rebalance revokes the first worker's partitions mid-work; nothing is lost or doubled."""
    settings = settings.model_copy(update={"max_batch_size": 2})
    reqs = [request(f"rb{i}", f"rb-s{i % 6}", max_new_tokens=20) for i in range(24)]
    ends = await publish_requests(settings, reqs)
    slow = SlowEngine(default_engine_factory(settings), step_s=0.05)  # 12 batches of ~1 s: still busy after the join
    first = Worker(settings, idle_s=IDLE_S, engine_factory=lambda _s: slow)
    second = Worker(settings, idle_s=IDLE_S)
    async with asyncio.timeout(2 * RUN_TIMEOUT_S):
        first_task = asyncio.create_task(first.run(stop=asyncio.Event()))
        while first.fetcher is None or not first.fetcher.assigned_once.is_set():
            await asyncio.wait({first_task}, timeout=0.05)
            assert not first_task.done(), first_task
        await asyncio.gather(first_task, second.run(stop=asyncio.Event()))

    for s in {r.session_id for r in reqs}:
        for rid, events in by_request(await stream(redis_client, settings, s)).items():
            final = only_final(events)
            assert isinstance(final, DoneEvent), (rid, final)
            assert final.attempt == max(e.attempt for e in events)  # the newest attempt's final won
    assert await committed(settings, list(ends)) == ends
    assert second.batches, "the second worker took over some partition"
