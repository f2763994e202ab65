"""Conversation state against the real broker, redis-server and builtin:tiny: turns, TTL, trimming, atomicity."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
import redis.asyncio as aioredis

from brigade.inprocess import finals, fleet, read_until_final
from brigade.redis_config import RedisClient
from consumer.session import SessionAppend
from consumer.sink import Outgoing, RedisSink, RequestRef, SessionWrite
from schemas.events import DoneEvent, ErrorCode, ErrorEvent, FinishReason
from schemas.requests import ChatMessage, InferenceRequest
from schemas.settings import Settings
from tests.test_worker import publish_requests, run_until_idle, stream

SYSTEM = {"role": "system", "content": "You are the expediter."}


def chat(rid: str, session: str, *messages: dict[str, str], **fields: Any) -> InferenceRequest:
    base: dict[str, Any] = {"max_new_tokens": 6, "temperature": 0, "ignore_eos": True}
    return InferenceRequest(request_id=rid, session_id=session, messages=list(messages), **(base | fields))


async def stored(redis: RedisClient, settings: Settings, session: str) -> dict[str, Any]:
    raw = await redis.get(settings.names.session_key(session))
    assert raw is not None, f"no session {session}"
    doc: dict[str, Any] = json.loads(raw)
    return doc


def roles(doc: dict[str, Any]) -> list[str]:
    return [m["role"] for m in doc["messages"]]


def the_done(events: dict[str, list[Any]], rid: str) -> DoneEvent:
    (final,) = finals(events[rid])
    assert isinstance(final, DoneEvent), final
    return final


async def test_three_turns_through_the_ingress_grow_the_session_and_refresh_its_ttl(
    any_redis: Settings, topics: list[str], any_redis_client: RedisClient
) -> None:
    """On a plain Redis and on a Redis Cluster: the worker's session load and append, the ingress's session
    routes and the stream all name their keys the same way."""
    settings, redis_client = any_redis, any_redis_client
    key = settings.names.session_key("conv")
    turns = [
        [SYSTEM, {"role": "user", "content": "Fire table two."}],
        [{"role": "user", "content": "And the fish?"}],  # only the new turn from here on
        [{"role": "user", "content": "Send it to the pass."}],
    ]
    prompt_tokens: list[int] = []
    async with fleet(settings, classes=["small"]) as f, httpx.AsyncClient(base_url=f.url, timeout=30) as http:
        for n, messages in enumerate(turns, start=1):
            body = {"session_id": "conv", "messages": messages, "max_new_tokens": 6, "cost_class": "small"}
            body |= {"temperature": 0, "ignore_eos": True}
            ack = await http.post("/v1/requests", json=body)
            assert ack.status_code == 202, ack.text
            rid = ack.json()["request_id"]
            done = the_done(await read_until_final(redis_client, settings.names.stream_key("conv"), {rid}), rid)
            prompt_tokens.append(done.prompt_tokens)

            got = (await http.get("/v1/sessions/conv")).json()
            assert got["object"] == "session" and got["session_id"] == "conv" and got["turns"] == n
            assert roles(got) == ["system", *["user", "assistant"] * n]
            assert got["messages"][-2] == messages[-1] and got["messages"][-1]["content"]
            assert got["model"] == settings.model and got["last_request_id"] == rid
            assert got["context_tokens"] == done.prompt_tokens + done.completion_tokens
            assert settings.session_ttl_s - 60 < got["ttl_s"] <= settings.session_ttl_s
            await redis_client.expire(key, 100)  # the next turn must push the expiry out again

        assert prompt_tokens[0] < prompt_tokens[1] < prompt_tokens[2], "each turn renders the whole history"
        assert got["completion_tokens"] == 3 * 6 and got["prompt_tokens"] == sum(prompt_tokens)
        assert (await http.get("/v1/sessions/conv")).json()["ttl_s"] <= 100, "reading does not extend the TTL"

        assert (await http.delete("/v1/sessions/conv")).status_code == 204
        assert (await http.delete("/v1/sessions/conv")).status_code == 204  # idempotent
        missing = await http.get("/v1/sessions/conv")
        assert missing.status_code == 404
        error = missing.json()["error"]
        assert error["code"] == "session_not_found" and error["type"] == "not_found_error"
        assert "conv" in error["message"] and "BRIGADE_SESSION_TTL_S" in error["message"]
        assert (await http.get("/v1/sessions/bad%20id")).status_code == 422


async def test_a_second_worker_continues_the_conversation(
    settings: Settings, topics: list[str], redis_client: aioredis.Redis
) -> None:
    stream = settings.names.stream_key("handover")
    first = chat("t1", "handover", {"role": "user", "content": "Fire table two."})
    second = chat("t2", "handover", {"role": "user", "content": "And the fish?"})
    async with fleet(settings, classes=["small"], ingress=False):
        await publish_requests(settings, [first])
        one = the_done(await read_until_final(redis_client, stream, {"t1"}), "t1")
    async with fleet(settings, classes=["small"], ingress=False):  # a fresh worker: nothing in memory
        await publish_requests(settings, [second])
        two = the_done(await read_until_final(redis_client, stream, {"t2"}), "t2")

    doc = await stored(redis_client, settings, "handover")
    assert roles(doc) == ["user", "assistant", "user", "assistant"] and doc["turns"] == 2
    assert doc["messages"][0]["content"] == "Fire table two." and doc["messages"][2]["content"] == "And the fish?"
    assert two.prompt_tokens > one.prompt_tokens + one.completion_tokens - 2, "turn 2 saw turn 1 and its reply"


async def test_a_long_history_is_trimmed_oldest_first_keeping_the_system_message(
    settings: Settings, topics: list[str], redis_client: aioredis.Redis
) -> None:
    history = [{"role": "system", "content": "Keep this."}]
    for i in range(40):  # far beyond builtin:tiny's 512-token context
        history += [
            {"role": "user", "content": f"Order {i}: the fish, the roast and the pastry for table {i}."},
            {"role": "assistant", "content": f"Table {i} is fired; the pass will call it when the plates are up."},
        ]
    doc = {"session_id": "long", "messages": history, "turns": 40}
    await redis_client.set(settings.names.session_key("long"), json.dumps(doc))
    await publish_requests(settings, [chat("next", "long", {"role": "user", "content": "Table forty?"})])

    await run_until_idle(settings)

    events = await read_until_final(redis_client, settings.names.stream_key("long"), {"next"}, timeout_s=5)
    done = the_done(events, "next")
    assert done.prompt_tokens + 6 <= 512
    after = await stored(redis_client, settings, "long")
    assert after["messages"][0] == history[0], "the system message survives trimming"
    assert after["messages"][1]["role"] == "user" and after["trimmed"] > 0
    assert after["messages"][-2] == {"role": "user", "content": "Table forty?"}
    assert after["messages"][1:-2] == history[1 + after["trimmed"] :], "only the oldest messages went"
    assert after["turns"] == 41 and after["context_tokens"] == done.prompt_tokens + done.completion_tokens


def long_conversation(turns: int = 40) -> list[dict[str, str]]:
    """Far beyond builtin:tiny's 512-token context."""
    history = [{"role": "system", "content": "Keep this."}]
    for i in range(turns):
        history += [
            {"role": "user", "content": f"Order {i}: the fish, the roast and the pastry for table {i}."},
            {"role": "assistant", "content": f"Table {i} is fired; the pass will call it when the plates are up."},
        ]
    return [*history, {"role": "user", "content": "Table forty?"}]


async def test_trim_history_false_answers_a_conversation_too_long_with_context_length_exceeded(
    settings: Settings, topics: list[str], redis_client: aioredis.Redis
) -> None:
    whole = long_conversation()
    await publish_requests(
        settings, [chat("strict", "strict", *whole, trim_history=False), chat("trimmed", "trimmed", *whole)]
    )

    await run_until_idle(settings)

    events = await stream(redis_client, settings, "strict")
    assert len(events) == 1 and isinstance(events[0], ErrorEvent), events
    assert events[0].code is ErrorCode.CONTEXT_LENGTH_EXCEEDED
    assert "the conversation has" in events[0].message and "512" in events[0].message, events[0].message
    assert await redis_client.exists(settings.names.session_key("strict")) == 0, "an error leaves no session"
    (done,) = [e for e in await stream(redis_client, settings, "trimmed") if isinstance(e, DoneEvent)]
    assert done.prompt_tokens + 6 <= 512, "absent, trim_history trims as before"


async def test_the_openai_chat_endpoint_refuses_a_conversation_too_long_instead_of_trimming_it(
    settings: Settings, topics: list[str]
) -> None:
    one_class = settings.model_copy(update={"class_max_cost": (100_000, 200_000)})  # the long one goes to "small" too
    async with fleet(one_class, classes=["small"]) as f, httpx.AsyncClient(base_url=f.url, timeout=30) as http:
        body = {"model": settings.model, "messages": long_conversation(), "max_tokens": 4}
        resp = await http.post("/v1/chat/completions", json=body)
        fits = await http.post("/v1/chat/completions", json=body | {"messages": long_conversation(1)})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["code"] == "context_length_exceeded" and "the conversation has" in error["message"], error
    assert fits.status_code == 200, fits.text


async def test_a_redelivered_chat_turn_appends_once_and_prompts_stay_stateless(
    settings: Settings, topics: list[str], redis_client: aioredis.Redis
) -> None:
    turn = chat("once", "dup", {"role": "user", "content": "Fire table two."})
    completion = InferenceRequest(request_id="raw", session_id="plain", prompt="The pass", max_new_tokens=3)
    await publish_requests(settings, [turn, turn, completion])  # the second copy: a redelivery

    await run_until_idle(settings)

    events = await read_until_final(redis_client, settings.names.stream_key("dup"), {"once"}, timeout_s=5)
    assert len(finals(events["once"])) == 1
    doc = await stored(redis_client, settings, "dup")
    assert roles(doc) == ["user", "assistant"] and doc["turns"] == 1
    await read_until_final(redis_client, settings.names.stream_key("plain"), {"raw"}, timeout_s=5)
    assert await redis_client.exists(settings.names.session_key("plain")) == 0, "a prompt never writes a session"


def _write(
    settings: Settings, rid: str, attempt: int = 1, *, reply: str = "Yes chef", continues: bool = False
) -> Outgoing:
    append = SessionAppend(
        session_id="s",
        model="m",
        ttl_s=settings.session_ttl_s,
        drop=0,
        append=(ChatMessage(role="user", content=f"question {rid}"),),
        system=None,
        prompt_tokens=7,
        trimmed=0,
        continues=continues,
    )
    patch = append.patch_json(reply=reply, completion_tokens=2, request_id=rid, now=datetime.now(UTC))
    done = DoneEvent(
        request_id=rid, seq=3, attempt=attempt, finish_reason=FinishReason.STOP, prompt_tokens=7, completion_tokens=2
    )
    return Outgoing("s", done, session=SessionWrite(ttl_s=settings.session_ttl_s, patch=patch))


async def test_the_session_append_lands_with_the_final_or_not_at_all(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    sink = RedisSink(redis_client, names=settings.names, ttl_s=settings.stream_ttl_s)
    key = settings.names.session_key("s")
    assert await sink.begin([RequestRef("s", "r1")]) == [1]
    assert (await sink.write([_write(settings, "r1", reply="Oui / chef ✓")])).lost == []
    doc = await stored(redis_client, settings, "s")
    assert doc["messages"] == [
        {"role": "user", "content": "question r1"},
        {"role": "assistant", "content": "Oui / chef ✓"},  # cjson's escaping round-trips
    ]
    assert 0 < await redis_client.ttl(key) <= settings.session_ttl_s

    again = await sink.write([_write(settings, "r1")])
    assert again.lost == [], "the same attempt again (a retried write) is in place"
    assert (await stored(redis_client, settings, "s"))["turns"] == 1, "and appends nothing twice"
    assert await sink.begin([RequestRef("s", "r2")]) == [1]
    assert await sink.begin([RequestRef("s", "r2")]) == [2]  # a rebalance: a newer attempt started
    assert (await sink.write([_write(settings, "r2", attempt=1)])).lost == ["r2"], "the stale attempt loses"
    assert (await stored(redis_client, settings, "s"))["turns"] == 1, "losing finals append nothing"

    error = ErrorEvent(request_id="r2", seq=0, attempt=2, code=ErrorCode.INTERNAL, message="boom")
    assert (await sink.write([Outgoing("s", error)])).lost == []
    assert (await stored(redis_client, settings, "s"))["turns"] == 1, "an error leaves the session as it was"

    assert await sink.begin([RequestRef("s", "r3")]) == [1]
    assert (await sink.write([_write(settings, "r3")])).lost == []
    await redis_client.delete(settings.names.request_key("r3", "s"))  # its request key expired, then a redelivery
    assert await sink.begin([RequestRef("s", "r3")]) == [1]
    assert (await sink.write([_write(settings, "r3")])).lost == []
    doc = await stored(redis_client, settings, "s")
    assert doc["turns"] == 2 and doc["last_request_id"] == "r3" and len(doc["messages"]) == 4, "still one append"


async def test_a_session_deleted_while_its_turn_ran_is_not_brought_back(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    """DELETE /v1/sessions/<id> during a turn: the turn's answer still lands, but its reply does not recreate a
    conversation that would start mid-way (its earlier turns are gone). A first turn still creates one."""
    sink = RedisSink(redis_client, names=settings.names, ttl_s=settings.stream_ttl_s)
    key = settings.names.session_key("s")
    assert await sink.begin([RequestRef("s", "r1")]) == [1]
    assert (await sink.write([_write(settings, "r1")])).lost == []
    assert await sink.begin([RequestRef("s", "r2")]) == [1]
    await redis_client.delete(key)  # while r2 runs
    assert (await sink.write([_write(settings, "r2", continues=True)])).lost == []
    assert not await redis_client.exists(key)
    finals = [e for e in await stream(redis_client, settings, "s") if e.type == "done"]
    assert [e.request_id for e in finals] == ["r1", "r2"], "the answer is delivered either way"
    assert await sink.begin([RequestRef("s", "r3")]) == [1]
    assert (await sink.write([_write(settings, "r3")])).lost == []
    assert (await stored(redis_client, settings, "s"))["turns"] == 1, "a new first turn starts a new conversation"
