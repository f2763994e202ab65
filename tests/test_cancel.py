"""Cancelling: a caller marks the request key (``cancel``) and the request ends with one ``done`` whose
finish_reason is ``cancelled``: at once if it had not started, at the next step boundary if it was running,
and it leaves the engine's batch so its place goes to another."""

from __future__ import annotations

import redis.asyncio as aioredis

from schemas.events import DoneEvent, FinishReason, TokenEvent, is_final
from schemas.naming import CANCEL_FIELD
from schemas.settings import Settings
from tests.test_continuous import held_run, pending, until
from tests.test_worker import stream
from tests.test_worker_engine import expected_text


async def test_a_running_request_stops_at_the_step_after_its_mark_is_seen(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    names = settings.names
    async with held_run(settings, redis_client) as held:  # "a" asks for 6 tokens; its step 1 computes
        await redis_client.hset(names.request_key("a", "s-a"), CANCEL_FIELD, "1")

    assert held.engine.runs[0].dropped == ["a"], "the sequence left the engine's batch"
    events = await stream(redis_client, settings, "s-a")
    assert sum(is_final(e) for e in events) == 1
    *tokens, final = events
    assert isinstance(final, DoneEvent) and final.finish_reason is FinishReason.CANCELLED
    # Step 1's write finds the mark while step 2 computes; step 2's tokens go out, then the final.
    assert final.completion_tokens == 2 < 6
    assert "".join(e.text for e in tokens if isinstance(e, TokenEvent)) == expected_text(2)
    assert held.finished == ["a"]
    assert held.metrics.cancelled.labels("small")._value.get() == 1


async def test_a_queued_request_is_answered_without_running(settings: Settings, redis_client: aioredis.Redis) -> None:
    names = settings.names
    async with held_run(settings, redis_client) as held:
        await redis_client.hset(names.request_key("b", "s-b"), CANCEL_FIELD, "1")
        held.arrive(pending("b", "s-b", 1, max_new_tokens=4))
        await until(lambda: "b" in held.finished)

    assert held.engine.runs[0].joined == [], "it never reached the engine"
    (final,) = await stream(redis_client, settings, "s-b")
    assert isinstance(final, DoneEvent) and final.finish_reason is FinishReason.CANCELLED
    assert (final.prompt_tokens, final.completion_tokens, final.attempt) == (0, 0, 1)
    assert sorted(held.finished) == ["a", "b"]
    a_events = await stream(redis_client, settings, "s-a")
    assert a_events[-1].type == "done" and sum(is_final(e) for e in a_events) == 1
