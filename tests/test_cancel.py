"""Cancelling: a caller marks the request key (``cancel``) and the request ends with one ``done`` whose
finish_reason is ``cancelled``: at once if it had not started, at the next step boundary if it was running,
and it leaves the engine's batch so its place goes to another."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import cast

import httpx
import pytest
import redis.asyncio as aioredis

from brigade.inprocess import fleet
from brigade.redis_config import RedisClient
from producer import openai_api
from producer.cancel import cancel
from producer.errors import CONTRACT_FIELDS, ApiError
from producer.ingress import Ingress
from producer.metrics import IngressMetrics
from schemas.events import DoneEvent, FinishReason, TokenEvent, is_final
from schemas.naming import CANCEL_FIELD
from schemas.requests import InferenceRequest, RequestAccepted
from schemas.settings import Settings
from tests.test_continuous import held_run, pending, until
from tests.test_worker import AnyEvent, stream
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
    assert held.metrics.finished.labels("small", "cancelled")._value.get() == 1


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
    assert final.model == held.engine.model_name, "it names the model that would have answered, as every done does"
    assert sorted(held.finished) == ["a", "b"]
    a_events = await stream(redis_client, settings, "s-a")
    assert a_events[-1].type == "done" and sum(is_final(e) for e in a_events) == 1


async def final_of(redis: aioredis.Redis, settings: Settings, session: str, request_id: str) -> list[AnyEvent]:
    """The request's events once its final is in the stream."""
    async with asyncio.timeout(30):
        while True:
            events = [e for e in await stream(redis, settings, session) if e.request_id == request_id]
            if events and is_final(events[-1]):
                return events
            await asyncio.sleep(0.02)


async def test_cancel_through_the_ingress_queued_running_and_finished(
    settings: Settings, topics: list[str], redis_client: aioredis.Redis
) -> None:
    long = {"prompt": "tell me everything", "max_new_tokens": 400, "ignore_eos": True}
    async with fleet(settings, classes=["small"]) as f, httpx.AsyncClient(base_url=f.url, timeout=30) as http:
        # Queued: marked before it was even published, it never runs.
        marked = await http.post("/v1/sessions/s-q/requests/q1/cancel")
        assert (marked.status_code, marked.json()["status"], marked.json()["cancelled"]) == (202, "queued", True)
        assert (await http.post("/v1/requests", json={"request_id": "q1", "session_id": "s-q", **long})).is_success
        (queued,) = await final_of(redis_client, settings, "s-q", "q1")
        assert isinstance(queued, DoneEvent) and queued.finish_reason is FinishReason.CANCELLED
        assert queued.completion_tokens == 0

        # Running: cancelled once its first token is out.
        assert (await http.post("/v1/requests", json={"request_id": "r1", "session_id": "s-r", **long})).is_success
        async with asyncio.timeout(30):
            while not await stream(redis_client, settings, "s-r"):  # noqa: ASYNC110
                await asyncio.sleep(0.005)
        marked = await http.post("/v1/sessions/s-r/requests/r1/cancel")
        assert (marked.status_code, marked.json()["status"]) == (202, "running")
        *tokens, running = await final_of(redis_client, settings, "s-r", "r1")
        assert isinstance(running, DoneEvent) and running.finish_reason is FinishReason.CANCELLED
        assert 0 < running.completion_tokens < 400 and running.prompt_tokens > 0
        assert all(isinstance(t, TokenEvent) for t in tokens)

        # Finished: nothing to cancel, and the answer stands.
        again = await http.post("/v1/sessions/s-r/requests/r1/cancel")
        assert (again.status_code, again.json()["status"], again.json()["cancelled"]) == (200, "finished", False)
        bad = await http.post("/v1/sessions/s-r/requests/r%20one/cancel")
        assert bad.status_code == 422 and "request_id" in bad.text

        metrics = (await http.get(f"http://127.0.0.1:{f.worker_ports[0]}/metrics")).text
        ingress_metrics = (await http.get("/metrics")).text
    assert 'brigade_request_success_total{class="small",finished_reason="cancelled"} 2.0' in metrics
    assert 'brigade_ingress_cancels_total{reason="requested"} 2.0' in ingress_metrics, "the finished one is not counted"


@dataclass
class RefusingIngress:
    """An ingress whose broker takes the first choice of an n=2 call and refuses the second (a class over its
    backlog between the two): the sampled lag makes that race impossible to stage against a real one."""

    settings: Settings
    redis: aioredis.Redis
    metrics: IngressMetrics = field(default_factory=IngressMetrics)

    async def submit_many(self, wires: list[InferenceRequest], **_: object) -> list[RequestAccepted | ApiError]:
        first = wires[0]
        accepted = RequestAccepted(
            request_id=first.request_id, session_id=first.session_id, cost_class="small", topic="t", partition=0,
            offset=0, stream=self.settings.names.stream_key(first.session_id), prompt_tokens=None, events_url="",
        )  # fmt: skip
        return [accepted, ApiError(429, "over its backlog", code="class_backlog")]


async def test_the_accepted_choices_of_a_refused_call_are_cancelled(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    ingress = RefusingIngress(settings, redis_client)
    wires = [InferenceRequest(request_id=f"c{i}", session_id=f"s-c{i}", prompt="x") for i in range(2)]
    with pytest.raises(ApiError, match="over its backlog"):
        await openai_api._publish(cast(Ingress, ingress), wires, (None, None), CONTRACT_FIELDS)
    assert await redis_client.hget(settings.names.request_key("c0", "s-c0"), CANCEL_FIELD) == "1"
    assert not await redis_client.exists(settings.names.request_key("c1", "s-c1")), "the refused one was never sent"
    assert ingress.metrics.cancels.labels("call_refused")._value.get() == 1


async def test_the_mark_says_what_the_request_was_doing_on_either_redis(
    any_redis: Settings, any_redis_client: RedisClient
) -> None:
    """The ingress's MARK script on standalone Redis and on a cluster (the key names the session's slot)."""
    names, ttl = any_redis.names, any_redis.stream_ttl_s
    key = names.request_key("m1", "s-m")
    assert await cancel(any_redis_client, names, session_id="s-m", request_id="m1", ttl_s=ttl) == "queued"
    assert await any_redis_client.hget(key, CANCEL_FIELD) == "1" and 0 < await any_redis_client.ttl(key) <= ttl
    await any_redis_client.hset(key, "status", "running")
    assert await cancel(any_redis_client, names, session_id="s-m", request_id="m1", ttl_s=ttl) == "running"
    await any_redis_client.hset(names.request_key("m2", "s-m"), "status", "finished")
    assert await cancel(any_redis_client, names, session_id="s-m", request_id="m2", ttl_s=ttl) == "finished"
    assert await any_redis_client.hget(names.request_key("m2", "s-m"), CANCEL_FIELD) is None, "left unmarked"
