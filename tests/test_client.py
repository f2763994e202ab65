"""``BrigadeClient`` against a real ingress, broker and Redis; the test plays the worker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from brigade.inprocess import fleet
from producer.client import (
    BrigadeClient,
    BrigadeError,
    GenerationFailed,
    InvalidRequest,
    NotFound,
    Overloaded,
    PromptTooLong,
    Unavailable,
    error_for,
)
from schemas.events import ErrorEvent
from schemas.naming import CANCEL_FIELD
from schemas.requests import ChatMessage, InferenceRequest
from schemas.settings import Settings
from tests.kafka_reader import read_records
from tests.test_ingress import AnyEvent, crash_then, play_worker, say


@pytest.fixture
async def client(settings: Settings, topics: list[str]) -> AsyncIterator[BrigadeClient]:
    async with fleet(settings, classes=[]) as f, BrigadeClient(f.url) as c:
        yield c


async def test_submit_publishes_what_was_asked(client: BrigadeClient, settings: Settings) -> None:
    sub = await client.submit(
        messages=[ChatMessage(role="system", content="Be brief."), {"role": "user", "content": "hi"}],
        session_id="client-1",
        max_new_tokens=9,
        temperature=0.0,
        seed=5,
        stop="\n",
        cost_class="medium",
        top_k=20,
        repetition_penalty=1.2,
    )
    assert (sub.session_id, sub.cost_class) == ("client-1", "medium")
    assert sub.stream == settings.names.stream_key("client-1")
    assert sub.prompt_tokens is None  # its few bytes settled its class and the limit: the ingress did not count
    (record,) = await read_records(settings.kafka_bootstrap, sub.topic, count=1)
    req = InferenceRequest.from_bytes(record.value or b"")
    assert req.request_id == sub.request_id and req.stop == ["\n"] and req.seed == 5 and req.temperature == 0
    assert req.messages is not None and [m.role for m in req.messages] == ["system", "user"]
    assert (req.top_k, req.repetition_penalty, req.min_p, req.presence_penalty) == (20, 1.2, None, None)


async def test_max_new_tokens_none_asks_for_what_the_context_leaves(client: BrigadeClient, settings: Settings) -> None:
    sub = await client.submit("x", max_new_tokens=None)
    (record,) = await read_records(settings.kafka_bootstrap, sub.topic, count=1)
    assert b'"max_new_tokens":null' in (record.value or b"")
    assert InferenceRequest.from_bytes(record.value or b"").max_new_tokens is None


async def test_refusals_raise_the_matching_error(client: BrigadeClient) -> None:
    with pytest.raises(InvalidRequest, match="BRIGADE_MAX_NEW_TOKENS_LIMIT") as invalid:
        await client.submit("x", max_new_tokens=5000)
    assert invalid.value.status == 422 and invalid.value.param == "max_new_tokens"
    with pytest.raises(NotFound, match="gpt-9"):
        await client.submit("x", model="gpt-9")
    with pytest.raises(PromptTooLong, match="BRIGADE_MAX_PROMPT_TOKENS"):
        await client.submit("word " * 3000)
    with pytest.raises(InvalidRequest, match="exactly one of 'prompt'"):
        await client.submit()


async def test_unreachable_broker_raises_unavailable_with_retry_after(settings: Settings) -> None:
    down = settings.model_copy(update={"kafka_bootstrap": "127.0.0.1:1", "request_timeout_s": 1.0})
    async with fleet(down, classes=[], broker_up=False) as f, BrigadeClient(f.url) as client:
        with pytest.raises(Unavailable, match="BRIGADE_KAFKA_BOOTSTRAP") as err:
            await client.submit("x")
    assert err.value.status == 503 and err.value.retry_after == 1.0


def test_error_classes_follow_the_status() -> None:
    assert isinstance(error_for(429, "busy", retry_after=3), Overloaded)
    assert type(error_for(418, "teapot")) is BrigadeError
    assert error_for(502, "bad gateway").status == 502


async def test_generate_drops_the_partial_attempt(
    client: BrigadeClient, settings: Settings, redis_client: aioredis.Redis
) -> None:
    # Attempt 1 wrote text that attempt 2 does not repeat (unseeded sampling): only attempt 2 counts.
    script = crash_then(["Soup", " of the"], ["Fish", " of", " the day"])
    worker = asyncio.create_task(play_worker(settings, redis_client, count=1, script=script))
    completion = await client.generate("Today's special?", timeout_s=30)
    await worker
    assert completion.text == "Fish of the day" and completion.attempts == 2
    assert completion.finish_reason == "stop" and completion.completion_tokens == 3


async def test_generate_raises_on_an_error_event(
    client: BrigadeClient, settings: Settings, redis_client: aioredis.Redis
) -> None:
    def expired(req: InferenceRequest) -> list[AnyEvent]:
        return [ErrorEvent(request_id=req.request_id, seq=0, code="expired", message="deadline passed")]

    worker = asyncio.create_task(play_worker(settings, redis_client, count=1, script=expired))
    with pytest.raises(GenerationFailed, match="deadline passed") as err:
        await client.generate("x", timeout_s=30)
    await worker
    assert err.value.code == "expired" and err.value.status == 408


async def test_generate_times_out_when_nobody_answers_and_cancels_the_request(
    client: BrigadeClient, settings: Settings, redis_client: aioredis.Redis
) -> None:
    with pytest.raises(TimeoutError):
        await client.generate("x", session_id="s-late", request_id="late", timeout_s=0.5)
    key = settings.names.request_key("late", "s-late")
    assert await redis_client.hget(key, CANCEL_FIELD) == "1", "a worker that takes it later answers it cancelled"
    assert await client.cancel("s-late", "late") is True, "still not finished: marked again"
    await redis_client.hset(key, "status", "finished")  # as a worker's final would leave it
    assert await client.cancel("s-late", "late") is False


async def test_stream_follows_a_session_and_resumes(
    client: BrigadeClient, settings: Settings, redis_client: aioredis.Redis
) -> None:
    first = await client.submit("one", session_id="chat-1")
    second = await client.submit("two", session_id="chat-1")
    await play_worker(settings, redis_client, count=2, script=say("ok"))

    seen: list[AnyEvent] = []
    async for event in client.stream("chat-1"):  # no request_id: the caller decides when to stop
        seen.append(event)
        if event.request_id == second.request_id and event.type == "done":
            break
    assert [(e.request_id, e.type) for e in seen] == [
        (first.request_id, "token"),
        (first.request_id, "done"),
        (second.request_id, "token"),
        (second.request_id, "done"),
    ]
    entries = await redis_client.xrange(settings.names.stream_key("chat-1"))
    assert entries is not None
    after_first = str(entries[1][0])  # the first request's done: resume right after it
    resumed = [e async for e in client.stream("chat-1", request_id=second.request_id, last_event_id=after_first)]
    assert [(e.request_id, e.type) for e in resumed] == [(second.request_id, "token"), (second.request_id, "done")]
