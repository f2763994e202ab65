"""Per-class models ("chef A and chef B") through the real ingress, broker, workers and Redis.

small and medium serve ``builtin:tiny`` (``BRIGADE_MODEL``), large serves ``builtin:tiny-wide``
(``BRIGADE_CLASS_LARGE_MODEL``); a worker of small and one of large run, each loading its class's model.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from brigade.inprocess import Fleet, finals, fleet, read_until_final
from schemas.events import DoneEvent, ErrorEvent
from schemas.settings import Settings

TINY, WIDE = "builtin:tiny", "builtin:tiny-wide"


@pytest.fixture
def two_models(settings: Settings) -> Settings:
    return settings.model_copy(update={"class_models": {"large": WIDE}})


@pytest.fixture
async def running(two_models: Settings, topics: list[str]) -> AsyncIterator[Fleet]:
    async with fleet(two_models, classes=["small", "large"]) as f:
        yield f


async def final_of(redis: aioredis.Redis, settings: Settings, ack: dict[str, str]) -> DoneEvent | ErrorEvent:
    key = settings.names.stream_key(ack["session_id"])
    events = (await read_until_final(redis, key, {ack["request_id"]}))[ack["request_id"]]
    (final,) = finals(events)
    assert isinstance(final, DoneEvent | ErrorEvent)
    return final


async def test_each_class_answers_from_its_own_model_and_routing_follows_model(
    two_models: Settings, running: Fleet, redis_client: aioredis.Redis
) -> None:
    async with httpx.AsyncClient(base_url=running.url, timeout=30) as http:
        base = {"prompt": "The pass is where plates go out.", "max_new_tokens": 4, "temperature": 0}
        cases = {
            "small": base,  # cheapest class by cost, BRIGADE_MODEL
            "large": base | {"model": WIDE},  # the cheapest class that serves tiny-wide
        }
        acks = {}
        for expected_class, body in cases.items():
            resp = await http.post("/v1/requests", json=body)
            assert resp.status_code == 202, resp.text
            assert resp.json()["cost_class"] == expected_class
            acks[expected_class] = resp.json()
        # tiny is served by small and medium: over small's bound (512) it lands in medium, not in large
        resp = await http.post("/v1/requests", json=base | {"model": TINY, "max_new_tokens": 600})
        assert resp.status_code == 202 and resp.json()["cost_class"] == "medium", resp.text
        for cost_class, model in (("small", TINY), ("large", WIDE)):
            final = await final_of(redis_client, two_models, acks[cost_class])
            assert isinstance(final, DoneEvent) and final.model == model, final

        # the OpenAI endpoints accept either model and answer from it
        chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        for model in (TINY, WIDE):
            resp = await http.post("/v1/chat/completions", json=chat | {"model": model})
            assert resp.status_code == 200, resp.text
            assert resp.json()["model"] == model


async def test_models_are_listed_with_their_classes_and_an_unknown_one_is_404(
    two_models: Settings, topics: list[str]
) -> None:
    async with fleet(two_models, classes=[]) as ingress, httpx.AsyncClient(base_url=ingress.url, timeout=30) as http:
        listed = (await http.get("/v1/models")).json()["data"]
        assert [(m["id"], m["cost_classes"]) for m in listed] == [(TINY, ["small", "medium"]), (WIDE, ["large"])]
        assert (await http.get(f"/v1/models/{WIDE}")).json()["cost_classes"] == ["large"]
        for path, body in (
            ("/v1/requests", {"prompt": "x", "model": "gpt-4o"}),
            ("/v1/completions", {"prompt": "x", "model": "gpt-4o"}),
        ):
            resp = await http.post(path, json=body)
            assert resp.status_code == 404, resp.text
            error = resp.json()["error"]
            assert error["code"] == "model_not_found" and error["param"] == "model"
            assert error["message"] == f"model 'gpt-4o' is not served here; served: {TINY}, {WIDE} (GET /v1/models)"
        resp = await http.post("/v1/requests", json={"prompt": "x", "model": WIDE, "cost_class": "small"})
        assert resp.status_code == 422 and resp.json()["error"]["code"] == "model_not_in_class", resp.text
        assert "cost_class 'small' serves model 'builtin:tiny', not 'builtin:tiny-wide'" in resp.text


async def test_a_worker_refuses_a_request_for_another_classes_model(
    two_models: Settings, running: Fleet, redis_client: aioredis.Redis
) -> None:
    """Straight to the small topic, past the ingress: the small worker names the model it serves."""
    producer = AIOKafkaProducer(bootstrap_servers=two_models.kafka_bootstrap)
    await producer.start()
    try:
        request = {"request_id": "r-wide", "session_id": "s-wide", "prompt": "hi", "model": WIDE}
        topic = two_models.names.request_topic("small")
        await producer.send_and_wait(topic, json.dumps(request).encode(), key=b"s-wide")
    finally:
        await producer.stop()
    final = await final_of(redis_client, two_models, {"request_id": "r-wide", "session_id": "s-wide"})
    assert isinstance(final, ErrorEvent) and final.code == "invalid_request"
    assert final.message == f"model {WIDE!r} is not served here; this worker serves {TINY!r}"
