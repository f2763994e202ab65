"""Retries with backoff: the sink rides out a real redis-server restart; the policy's bounds and its choice of errors.

The restart test uses its own redis-server (append-only on), never the session one: it stops it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import httpx
import pytest
import redis.asyncio as aioredis
import redis.exceptions
from aiokafka.errors import CommitFailedError, KafkaConnectionError, RequestTimedOutError, UnknownMemberIdError
from prometheus_client import CollectorRegistry

from brigade.devtools.process import Service, free_port, port_open
from brigade.devtools.servers import redis_service
from consumer.health import HealthServer
from consumer.retry import NO_CLIENT_RETRY, Backoff, kafka_retryable, redis_retryable
from consumer.sink import Outgoing, RedisSink, RequestRef
from schemas.events import DoneEvent, FinishReason, TokenEvent, parse_event
from schemas.naming import Names

NAMES = Names("retry")


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[Service]:
    service = redis_service(port=free_port(), log_dir=tmp_path, appendonly=True).start()
    yield service
    service.stop()


async def restart_when_unreachable(service: Service, unreachable: asyncio.Event) -> None:
    """Bring ``service`` back once the sink has reported it unreachable (its first retry has failed by then)."""
    async with asyncio.timeout(30):
        await unreachable.wait()
        service.start(wait=False)
        while True:
            if port_open("127.0.0.1", service.port):
                return
            await asyncio.sleep(0.02)  # a port has no readiness signal to wait on


async def test_the_sink_waits_out_a_redis_restart_and_writes_each_event_once(
    own_redis: Service, caplog: pytest.LogCaptureFixture
) -> None:
    changes: list[tuple[str, bool]] = []
    unreachable = asyncio.Event()

    def on_change(dependency: str, reachable: bool) -> None:
        changes.append((dependency, reachable))
        if not reachable:
            unreachable.set()

    backoff = Backoff("redis", retryable=redis_retryable, deadline_s=30, on_change=on_change)
    client = aioredis.from_url(f"redis://127.0.0.1:{own_redis.port}/0", decode_responses=True, retry=NO_CLIENT_RETRY)
    sink = RedisSink(client, names=NAMES, ttl_s=60, retry=backoff)
    try:
        assert await sink.begin([RequestRef("s", "r1")]) == [1]  # the scripts are cached and a connection is pooled
        await sink.write([Outgoing("s", TokenEvent(request_id="r1", seq=0, text="a"))])
        await asyncio.to_thread(own_redis.stop)  # SIGTERM: Redis flushes its append-only file and exits

        caplog.set_level(logging.INFO, logger="consumer.retry")
        done = DoneEvent(
            request_id="r1", seq=1, finish_reason=FinishReason.LENGTH, prompt_tokens=1, completion_tokens=1
        )
        writing = asyncio.create_task(sink.write([Outgoing("s", done)]))
        await restart_when_unreachable(own_redis, unreachable)
        assert (await asyncio.wait_for(writing, timeout=30)).lost == [], "the final is in place, written once"

        entries = cast(list[tuple[str, dict[str, str]]], await client.xrange(NAMES.stream_key("s")))
        assert [(e.type, e.seq) for e in (parse_event(f) for _, f in entries)] == [("token", 0), ("done", 1)]
        assert await sink.begin([RequestRef("s", "r1")]) == [0], (
            "the finished status survived the restart (append-only file)"
        )
    finally:
        await client.aclose()
    assert changes == [("redis", False), ("redis", True)], "readiness: off while failing, on again after"
    retried = [r for r in caplog.records if r.getMessage() == "redis call failed; retrying"]
    assert retried and all(getattr(r, "operation", None) == "write" for r in retried)
    assert all(getattr(r, "retry_in_s", -1) >= 0 for r in retried)
    assert any(r.getMessage() == "redis reachable again" for r in caplog.records)


async def test_the_retries_stop_at_the_deadline_and_other_errors_are_not_retried() -> None:
    calls = 0

    async def refused() -> None:
        nonlocal calls
        calls += 1
        raise redis.exceptions.ConnectionError("refused")

    backoff = Backoff("redis", retryable=redis_retryable, deadline_s=0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(redis.exceptions.ConnectionError):
        await backoff.call("begin", refused)
    assert 0.3 <= loop.time() - started < 3 and calls >= 3

    async def wrong_type() -> None:
        raise redis.exceptions.ResponseError("WRONGTYPE")

    retries = backoff.retries
    with pytest.raises(redis.exceptions.ResponseError):
        await backoff.call("begin", wrong_type)
    assert backoff.retries == retries, "a command error is no outage: raised at once"


@pytest.mark.parametrize(
    ("error", "retry"),
    [
        (redis.exceptions.ConnectionError("refused"), True),
        (redis.exceptions.TimeoutError("slow"), True),
        (redis.exceptions.BusyLoadingError("loading the append-only file"), True),
        (redis.exceptions.ClusterDownError("CLUSTERDOWN The cluster is down"), True),
        (redis.exceptions.MasterDownError("MASTERDOWN Link with MASTER is down"), True),
        (redis.exceptions.TryAgainError("TRYAGAIN Multiple keys request during rehashing of slot"), True),
        (redis.exceptions.ReadOnlyError("READONLY You can't write against a read only replica."), True),
        (redis.exceptions.ResponseError("WRONGTYPE"), False),
        (redis.exceptions.AuthenticationError("WRONGPASS invalid username-password pair"), False),  # revoked
        (redis.exceptions.ClusterCrossSlotError("CROSSSLOT Keys in request don't hash to the same slot"), False),
    ],
)
def test_redis_errors_worth_retrying(error: Exception, retry: bool) -> None:
    assert redis_retryable(error) is retry


@pytest.mark.parametrize(
    ("error", "retry"),
    [
        (TimeoutError(), True),  # one commit attempt ran out of time (a frozen broker)
        (RequestTimedOutError(), True),
        (KafkaConnectionError(), True),
        (CommitFailedError(), False),  # rebalanced: the partitions may be someone else's now
        (UnknownMemberIdError(), False),
    ],
)
def test_kafka_errors_worth_retrying(error: Exception, retry: bool) -> None:
    assert kafka_retryable(error) is retry


async def test_readiness_is_off_while_a_dependency_is_unreachable_and_names_it() -> None:
    health = HealthServer(registry=CollectorRegistry(), host="127.0.0.1", port=0)
    port = await health.start()
    try:
        health.ready = True
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            assert (await http.get("/readyz")).status_code == 200
            health.dependency("redis", False)
            down = await http.get("/readyz")
            assert down.status_code == 503 and down.json()["unreachable"] == ["redis"]
            assert (await http.get("/healthz")).status_code == 200, "alive: no restart while it waits"
            health.dependency("redis", True)
            assert (await http.get("/readyz")).json() == {"ready": True, "partitions": 0, "unreachable": []}
    finally:
        await health.stop()
