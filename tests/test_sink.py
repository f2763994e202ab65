"""The Redis sink against a real redis-server, and against a Redis Cluster: attempts, one pipeline per step,
exactly one final."""

from __future__ import annotations

from typing import cast

from brigade.redis_config import RedisClient
from consumer.sink import Outgoing, RedisSink, RequestRef
from schemas.events import DoneEvent, ErrorCode, ErrorEvent, FinishReason, TokenEvent, parse_event
from schemas.naming import CANCEL_FIELD
from schemas.settings import Settings


def sink(redis: RedisClient, settings: Settings) -> RedisSink:
    return RedisSink(redis, names=settings.names, ttl_s=settings.stream_ttl_s)


async def read(redis: RedisClient, key: str) -> list[TokenEvent | DoneEvent | ErrorEvent]:
    entries = cast(list[tuple[str, dict[str, str]]], await redis.xrange(key))
    return [parse_event(fields) for _, fields in entries]


def refs(*request_ids: str, session: str = "s") -> list[RequestRef]:
    return [RequestRef(session, rid) for rid in request_ids]


def done(rid: str, seq: int, attempt: int = 1) -> DoneEvent:
    return DoneEvent(
        request_id=rid, seq=seq, attempt=attempt, finish_reason=FinishReason.STOP, prompt_tokens=3, completion_tokens=2
    )


async def test_begin_counts_attempts_until_finished(any_redis: Settings, any_redis_client: RedisClient) -> None:
    s = sink(any_redis_client, any_redis)
    assert await s.begin(refs("r1", "r2")) == [1, 1]
    assert await s.begin(refs("r1")) == [2]
    await s.write([Outgoing("s", done("r1", 0, attempt=2))])
    assert await s.begin(refs("r1", "r2")) == [0, 2]  # finished: skip without compute
    assert await any_redis_client.ttl(any_redis.names.request_key("r2", "s")) > 0


async def test_begin_turns_loads_the_sessions_with_the_attempts(
    any_redis: Settings, any_redis_client: RedisClient
) -> None:
    """A chat turn's admission: attempts and stored sessions from one pipeline, each loaded session's TTL
    refreshed (on a cluster the sessions live in several slots)."""
    names = any_redis.names
    await any_redis_client.set(names.session_key("chat-a"), '{"messages": []}', ex=5)
    begun = await sink(any_redis_client, any_redis).begin_turns(
        [RequestRef("chat-a", "r1"), RequestRef("chat-b", "r2"), RequestRef("plain", "r3")],
        ["chat-a", "chat-b"],
        ttl_s=600,
    )
    assert begun.attempts == [1, 1, 1]
    assert begun.sessions == {"chat-a": '{"messages": []}', "chat-b": None}
    assert 5 < await any_redis_client.ttl(names.session_key("chat-a")) <= 600
    assert await any_redis_client.exists(names.session_key("chat-b")) == 0, "loading creates nothing"


async def test_step_write_skips_empty_text_keeps_order_and_sets_ttl(
    any_redis: Settings, any_redis_client: RedisClient
) -> None:
    s = sink(any_redis_client, any_redis)
    events = [
        Outgoing("s1", TokenEvent(request_id="a", seq=0, text="Hel")),
        Outgoing("s2", TokenEvent(request_id="b", seq=0, text="")),
        Outgoing("s1", TokenEvent(request_id="a", seq=1, text="lo")),
        Outgoing("s1", done("a", 2)),
    ]
    await s.begin(refs("a", session="s1"))
    assert (await s.write(events)).lost == []
    key = any_redis.names.stream_key("s1")
    entries = await read(any_redis_client, key)
    assert [(e.type, e.seq) for e in entries] == [("token", 0), ("token", 1), ("done", 2)]
    assert await any_redis_client.exists(any_redis.names.stream_key("s2")) == 0
    assert 0 < await any_redis_client.ttl(key) <= any_redis.stream_ttl_s
    assert await any_redis_client.hget(any_redis.names.request_key("a", "s1"), "status") == "finished"


async def test_second_final_loses_and_writes_nothing(any_redis: Settings, any_redis_client: RedisClient) -> None:
    s = sink(any_redis_client, any_redis)
    assert await s.begin(refs("r")) == [1]
    assert (await s.write([Outgoing("s", done("r", 3, attempt=1))])).lost == []
    error = ErrorEvent(request_id="r", seq=0, attempt=2, code=ErrorCode.INTERNAL, message="late")
    assert (await s.write([Outgoing("s", error)])).lost == ["r"]
    assert [e.type for e in await read(any_redis_client, any_redis.names.stream_key("s"))] == ["done"]


async def test_a_stale_attempt_cannot_write_the_final(any_redis: Settings, any_redis_client: RedisClient) -> None:
    """A rebalance mid-generation: the old owner (attempt 1) finishes after the new one started attempt 2."""
    s = sink(any_redis_client, any_redis)
    assert await s.begin(refs("r")) == [1]
    assert await s.begin(refs("r")) == [2]
    assert (await s.write([Outgoing("s", done("r", 5, attempt=1))])).lost == ["r"]
    assert (await s.write([Outgoing("s", done("r", 2, attempt=2))])).lost == []
    assert [(e.type, e.attempt) for e in await read(any_redis_client, any_redis.names.stream_key("s"))] == [("done", 2)]


async def test_a_retried_step_writes_its_final_once_and_reports_no_loss(
    any_redis: Settings, any_redis_client: RedisClient
) -> None:
    """Redis ran the write but the reply was lost: the sink sends the same step again."""
    s = sink(any_redis_client, any_redis)
    assert await s.begin(refs("r")) == [1]
    step = [Outgoing("s", TokenEvent(request_id="r", seq=0, text="a")), Outgoing("s", done("r", 1))]
    assert (await s.write(step)).lost == []
    assert (await s.write(step)).lost == [], "the final already in place is this attempt's own: not a lost race"
    events = await read(any_redis_client, any_redis.names.stream_key("s"))
    assert [(e.type, e.seq) for e in events] == [("token", 0), ("done", 1), ("token", 0)]  # readers drop the repeat


async def test_a_retried_begin_only_raises_the_attempt_number(
    any_redis: Settings, any_redis_client: RedisClient
) -> None:
    s = sink(any_redis_client, any_redis)
    assert await s.begin(refs("r")) == [1]
    assert await s.begin(refs("r")) == [2]  # the retry: this run carries attempt 2
    assert (await s.write([Outgoing("s", done("r", 0, attempt=2))])).lost == []
    assert await s.begin(refs("r")) == [0]


async def test_one_step_for_many_sessions_lands_in_each_stream(
    any_redis: Settings, any_redis_client: RedisClient
) -> None:
    """A continuous batch's step carries many sessions; on a cluster their streams live in different slots."""
    s = sink(any_redis_client, any_redis)
    sessions = [f"table-{n}" for n in range(12)]
    assert await s.begin([RequestRef(sid, f"r-{sid}") for sid in sessions]) == [1] * 12
    step = [Outgoing(sid, TokenEvent(request_id=f"r-{sid}", seq=0, text=sid)) for sid in sessions]
    step += [Outgoing(sid, done(f"r-{sid}", 1)) for sid in sessions[::2]]  # half of them finish in this step
    assert (await s.write(step)).lost == []
    for n, sid in enumerate(sessions):
        events = await read(any_redis_client, any_redis.names.stream_key(sid))
        expected = [("token", 0, sid), ("done", 1, "")] if n % 2 == 0 else [("token", 0, sid)]
        assert [(e.type, e.seq, getattr(e, "text", "")) for e in events] == expected
    finished = [await any_redis_client.hget(any_redis.names.request_key(f"r-{sid}", sid), "status") for sid in sessions]
    assert finished == ["finished", "running"] * 6


async def test_a_cancel_mark_is_found_by_begin_and_by_a_step_write(
    any_redis: Settings, any_redis_client: RedisClient
) -> None:
    """The ``cancel`` field any publisher may set: a queued request begins negated, a running one is named by the
    write that carries its tokens (on a cluster each session's share answers from its own node)."""
    s = sink(any_redis_client, any_redis)
    names = any_redis.names
    await any_redis_client.hset(names.request_key("queued", "s0"), CANCEL_FIELD, "1")
    assert await s.begin([RequestRef("s0", "queued"), RequestRef("s0", "other")]) == [-1, 1]
    sessions = [f"table-{n}" for n in range(6)]
    assert await s.begin([RequestRef(sid, f"r-{sid}") for sid in sessions]) == [1] * 6
    for sid in sessions[1::2]:
        await any_redis_client.hset(names.request_key(f"r-{sid}", sid), CANCEL_FIELD, "1")
    step = [Outgoing(sid, TokenEvent(request_id=f"r-{sid}", seq=0, text=sid)) for sid in sessions]
    written = await s.write(step)
    assert written.cancelled == sorted(f"r-{sid}" for sid in sessions[1::2])
    assert written.lost == []
    assert [e.text for e in await read(any_redis_client, names.stream_key("table-1"))] == ["table-1"], (
        "a cancelled request's tokens of the step still land: its final follows them"
    )


async def test_a_cancelled_request_redelivered_after_a_crash_is_not_run_again(
    any_redis: Settings, any_redis_client: RedisClient
) -> None:
    """Its worker died mid-generation after the mark was set and before it wrote a final: the next owner's begin
    says cancelled, with the next attempt number, so readers drop the cut-off attempt's tokens as usual."""
    s = sink(any_redis_client, any_redis)
    assert await s.begin(refs("r")) == [1]
    await any_redis_client.hset(any_redis.names.request_key("r", "s"), CANCEL_FIELD, "1")
    assert await s.begin(refs("r")) == [-2]
    assert (await s.write([Outgoing("s", done("r", 0, attempt=2))])).lost == []
    assert await s.begin(refs("r")) == [0], "finished: a later redelivery is skipped"
