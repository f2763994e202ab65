"""Continuous batching through the real worker: a real broker, a real redis-server, a scripted engine.

One long request and a queue of short ones on a single partition, at most two sequences at a time.
Continuous batching fills the place a finished short one leaves at the next step, so every short
answer is written before the long one ends; static batching makes them wait for it.
"""

from __future__ import annotations

from typing import cast

import pytest
import redis.asyncio as aioredis

from producer.topics import ensure_topics
from schemas.events import is_final, parse_event
from schemas.settings import Settings
from tests.test_worker import publish_requests, request, run_until_idle
from tests.test_worker_engine import WordEngine

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
