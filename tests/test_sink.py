"""The Redis sink against a real redis-server: attempts, one pipeline per step, exactly one final."""

from __future__ import annotations

from typing import cast

import redis.asyncio as aioredis

from consumer.sink import Outgoing, RedisSink
from schemas.events import DoneEvent, ErrorCode, ErrorEvent, FinishReason, TokenEvent, parse_event
from schemas.settings import Settings


def sink(redis: aioredis.Redis, settings: Settings) -> RedisSink:
    return RedisSink(redis, names=settings.names, ttl_s=settings.stream_ttl_s)


async def read(redis: aioredis.Redis, key: str) -> list[TokenEvent | DoneEvent | ErrorEvent]:
    entries = cast(list[tuple[str, dict[str, str]]], await redis.xrange(key))
    return [parse_event(fields) for _, fields in entries]


def done(rid: str, seq: int, attempt: int = 1) -> DoneEvent:
    return DoneEvent(
        request_id=rid, seq=seq, attempt=attempt, finish_reason=FinishReason.STOP, prompt_tokens=3, completion_tokens=2
    )


async def test_begin_counts_attempts_until_finished(settings: Settings, redis_client: aioredis.Redis) -> None:
    s = sink(redis_client, settings)
    assert await s.begin(["r1", "r2"]) == [1, 1]
    assert await s.begin(["r1"]) == [2]
    await s.write([Outgoing("s", done("r1", 0, attempt=2))])
    assert await s.begin(["r1", "r2"]) == [0, 2]  # finished: skip without compute
    assert await redis_client.ttl(settings.names.request_key("r2")) > 0


async def test_step_write_skips_empty_text_keeps_order_and_sets_ttl(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    s = sink(redis_client, settings)
    events = [
        Outgoing("s1", TokenEvent(request_id="a", seq=0, text="Hel")),
        Outgoing("s2", TokenEvent(request_id="b", seq=0, text="")),
        Outgoing("s1", TokenEvent(request_id="a", seq=1, text="lo")),
        Outgoing("s1", done("a", 2)),
    ]
    await s.begin(["a"])
    assert await s.write(events) == []
    key = settings.names.stream_key("s1")
    entries = await read(redis_client, key)
    assert [(e.type, e.seq) for e in entries] == [("token", 0), ("token", 1), ("done", 2)]
    assert await redis_client.exists(settings.names.stream_key("s2")) == 0
    assert 0 < await redis_client.ttl(key) <= settings.stream_ttl_s
    assert await redis_client.hget(settings.names.request_key("a"), "status") == "finished"


async def test_second_final_loses_and_writes_nothing(settings: Settings, redis_client: aioredis.Redis) -> None:
    s = sink(redis_client, settings)
    assert await s.begin(["r"]) == [1]
    assert await s.write([Outgoing("s", done("r", 3, attempt=1))]) == []
    error = ErrorEvent(request_id="r", seq=0, attempt=2, code=ErrorCode.INTERNAL, message="late")
    assert await s.write([Outgoing("s", error)]) == ["r"]
    assert [e.type for e in await read(redis_client, settings.names.stream_key("s"))] == ["done"]


async def test_a_stale_attempt_cannot_write_the_final(settings: Settings, redis_client: aioredis.Redis) -> None:
    """A rebalance mid-generation: the old owner (attempt 1) finishes after the new one started attempt 2."""
    s = sink(redis_client, settings)
    assert await s.begin(["r"]) == [1]
    assert await s.begin(["r"]) == [2]
    assert await s.write([Outgoing("s", done("r", 5, attempt=1))]) == ["r"]
    assert await s.write([Outgoing("s", done("r", 2, attempt=2))]) == []
    assert [(e.type, e.attempt) for e in await read(redis_client, settings.names.stream_key("s"))] == [("done", 2)]


async def test_a_retried_step_writes_its_final_once_and_reports_no_loss(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    """Redis ran the write but the reply was lost: the sink sends the same step again."""
    s = sink(redis_client, settings)
    assert await s.begin(["r"]) == [1]
    step = [Outgoing("s", TokenEvent(request_id="r", seq=0, text="a")), Outgoing("s", done("r", 1))]
    assert await s.write(step) == []
    assert await s.write(step) == [], "the final already in place is this attempt's own: not a lost race"
    events = await read(redis_client, settings.names.stream_key("s"))
    assert [(e.type, e.seq) for e in events] == [("token", 0), ("done", 1), ("token", 0)]  # readers drop the repeat


async def test_a_retried_begin_only_raises_the_attempt_number(settings: Settings, redis_client: aioredis.Redis) -> None:
    s = sink(redis_client, settings)
    assert await s.begin(["r"]) == [1]
    assert await s.begin(["r"]) == [2]  # the retry: this run carries attempt 2
    assert await s.write([Outgoing("s", done("r", 0, attempt=2))]) == []
    assert await s.begin(["r"]) == [0]
