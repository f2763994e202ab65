"""The ingress against a real broker and Redis. No worker runs here: where a test needs answers, it plays
the worker itself — it consumes the request from the real topic and XADDs events to the real stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Sequence

import httpx
import openai
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer

from brigade import __version__
from brigade.inprocess import fleet
from producer.client import BrigadeClient, BrigadeError, InvalidRequest, NotFound
from schemas.events import DoneEvent, ErrorEvent, TokenEvent
from schemas.requests import InferenceRequest
from schemas.settings import Settings
from tests.kafka_reader import read_records


@pytest.fixture
async def ingress(settings: Settings, topics: list[str]) -> AsyncIterator[str]:
    async with fleet(settings, classes=[]) as f:
        yield f.url


AnyEvent = TokenEvent | DoneEvent | ErrorEvent
Script = Callable[[InferenceRequest], Sequence[AnyEvent]]


def say(*words: str, attempt: int = 1) -> Script:
    """A worker that answers every request with ``words`` as tokens, then a done."""

    def script(req: InferenceRequest) -> list[AnyEvent]:
        events: list[AnyEvent] = [
            TokenEvent(request_id=req.request_id, seq=i, attempt=attempt, text=w) for i, w in enumerate(words)
        ]
        final = DoneEvent(
            request_id=req.request_id,
            seq=len(words),
            attempt=attempt,
            finish_reason="stop",
            prompt_tokens=3,
            completion_tokens=len(words),
        )
        return [*events, final]

    return script


def crash_then(partial: Sequence[str], full: Sequence[str]) -> Script:
    """Attempt 1 writes ``partial`` and dies; attempt 2 writes ``full`` and finishes: a redelivery."""

    def script(req: InferenceRequest) -> list[AnyEvent]:
        first = [TokenEvent(request_id=req.request_id, seq=i, text=w) for i, w in enumerate(partial)]
        return [*first, *say(*full, attempt=2)(req)]

    return script


HELLO = say("Hello", " world")


async def play_worker(
    settings: Settings, redis: aioredis.Redis, *, count: int, script: Script = HELLO
) -> list[InferenceRequest]:
    """Consume ``count`` requests from any class topic and XADD what ``script`` says for each."""
    topics = [settings.names.request_topic(c) for c in settings.classes]
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    seen: list[InferenceRequest] = []
    try:
        async with asyncio.timeout(30):
            while len(seen) < count:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    for record in records:
                        assert record.value is not None
                        req = InferenceRequest.from_bytes(record.value)
                        seen.append(req)
                        key = settings.names.stream_key(req.session_id)
                        for event in script(req):
                            await redis.xadd(key, event.to_fields())  # type: ignore[arg-type]
    finally:
        await consumer.stop()
    return seen


async def test_accepted_request_lands_on_its_class_topic_keyed_by_session(
    settings: Settings, ingress: str, redis_client: aioredis.Redis
) -> None:
    async with httpx.AsyncClient(base_url=ingress) as http:
        resp = await http.post("/v1/requests", json={"session_id": "s-1", "prompt": "hi", "max_new_tokens": 8})
        explicit = await http.post("/v1/requests", json={"prompt": "hi", "max_new_tokens": 8, "cost_class": "large"})
        big = await http.post("/v1/requests", json={"prompt": "hi", "max_new_tokens": 600})
    assert resp.status_code == 202, resp.text
    ack = resp.json()
    assert ack["cost_class"] == "small" and ack["session_id"] == "s-1"
    assert ack["topic"] == settings.names.request_topic("small")
    assert ack["stream"] == settings.names.stream_key("s-1")
    assert explicit.json()["cost_class"] == "large"
    assert big.json()["cost_class"] == "medium"  # 600 new tokens is over small's 512

    records = await read_records(settings.kafka_bootstrap, settings.names.request_topic("small"), count=1)
    (record,) = records
    assert record.key == b"s-1" and record.partition == ack["partition"] and record.offset == ack["offset"]
    assert InferenceRequest.from_bytes(record.value).request_id == ack["request_id"]


async def test_a_prompt_cache_key_is_the_record_key_of_requests_that_carry_their_whole_context(
    settings: Settings, ingress: str, redis_client: aioredis.Redis
) -> None:
    """So that the next call with the key lands on the partition, and the worker, that kept the last one's KV
    cache: native prompts and the OpenAI endpoints' calls alike. A session's chat turn stays keyed by its session
    (its turns must stay in order), and asking otherwise is answered with what to do instead."""
    chat = [{"role": "user", "content": "hi"}]
    oai = openai.AsyncOpenAI(base_url=f"{ingress}/v1", api_key="unused")
    async with httpx.AsyncClient(base_url=ingress) as http:
        native = await http.post("/v1/requests", json={"prompt": "hi", "prompt_cache_key": "conv-7"})
        assert native.status_code == 202, native.text
        stateful = await http.post("/v1/requests", json={"messages": chat, "prompt_cache_key": "conv-7"})
        whole = await http.post(
            "/v1/requests", json={"messages": chat, "trim_history": False, "prompt_cache_key": "user 8/conv 1"}
        )
        assert whole.status_code == 202, whole.text
        plain = await http.post("/v1/requests", json={"session_id": "s-9", "prompt": "hi"})
        assert plain.status_code == 202, plain.text
    assert stateful.status_code == 422, stateful.text
    error = stateful.json()["error"]
    assert error["param"] == "prompt_cache_key", error
    assert "session_id" in error["message"]

    worker = asyncio.create_task(play_worker(settings, redis_client, count=5))
    extra = {"prompt_cache_key": "conv-8"}
    async with oai:
        answered = await oai.chat.completions.create(
            model=settings.model, messages=[{"role": "user", "content": "hi"}], max_tokens=5, extra_body=extra
        )
        await oai.completions.create(model=settings.model, prompt="hi", max_tokens=5, extra_body=extra)
    assert answered.usage is not None and answered.usage.prompt_tokens_details is not None
    assert answered.usage.prompt_tokens_details.cached_tokens == 0  # the played worker says none were
    seen = await worker
    assert {r.request_id: r.prompt_cache_key for r in seen}[native.json()["request_id"]] == "conv-7"

    records = await read_records(settings.kafka_bootstrap, settings.names.request_topic("small"), count=5)
    keys = sorted(r.key for r in records if r.key is not None)
    assert keys == [b"conv-7", b"conv-8", b"conv-8", b"s-9", b"user 8/conv 1"]
    assert len({r.partition for r in records if r.key == b"conv-8"}) == 1


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"prompt": "x", "max_new_tokens": 0}, 422, "max_new_tokens"),
        ({"prompt": "x", "max_new_tokens": 5000}, 422, "BRIGADE_MAX_NEW_TOKENS_LIMIT"),
        ({"prompt": "x", "temperature": 7}, 422, "temperature"),
        ({"prompt": "x", "surprise": 1}, 422, "surprise"),
        ({"max_new_tokens": 3}, 422, "exactly one of 'prompt'"),
        ({"prompt": "x", "cost_class": "huge"}, 422, "cost_class"),
        ({"prompt": "x", "prompt_cache_key": "k" * 300}, 422, "at most 256 characters"),
        ({"prompt": "x", "model": "gpt-9"}, 404, "gpt-9"),
        ({"prompt": "word " * 3000}, 413, "BRIGADE_MAX_PROMPT_TOKENS"),
    ],
)
async def test_bad_input_gets_a_clear_error(ingress: str, body: dict[str, object], status: int, needle: str) -> None:
    async with httpx.AsyncClient(base_url=ingress) as http:
        resp = await http.post("/v1/requests", json=body)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert needle in error["message"], error
    assert {"message", "type", "param", "code"} <= set(error)


@pytest.mark.parametrize(
    ("body", "param", "needle"),
    [
        ({"prompt": "x", "trim_history": False}, "trim_history", "allowed only with messages"),
        ({"prompt": "x", "chat_template_kwargs": {"thinking": False}}, "chat_template_kwargs", "only with messages"),
        ({"prompt": "x", "min_tokens": 5, "max_new_tokens": 2}, "min_tokens", "5 is over max_new_tokens=2"),
        ({"messages": [{"role": "user", "content": "hi"}], "prompt_cache_key": "k"}, "prompt_cache_key", "session_id"),
        ({"max_new_tokens": 3}, "body", "exactly one of 'prompt'"),  # three fields: none of them is to blame
    ],
)
async def test_a_check_across_fields_names_the_field_it_blames(
    ingress: str, body: dict[str, object], param: str, needle: str
) -> None:
    """OpenAI's ``param`` (and the message's lead) name the field, not the body a model-level check sits on."""
    async with httpx.AsyncClient(base_url=ingress) as http:
        resp = await http.post("/v1/requests", json=body)
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["param"] == param and error["message"].startswith(f"{param}: ") and needle in error["message"], error


async def test_invalid_json_and_wrong_method(ingress: str) -> None:
    async with httpx.AsyncClient(base_url=ingress) as http:
        bad = await http.post("/v1/requests", content=b"{nope", headers={"content-type": "application/json"})
        wrong = await http.get("/v1/requests")
    assert bad.status_code == 422 and "not valid JSON" in bad.json()["error"]["message"]
    assert bad.json()["error"]["param"] == "body"  # not the character offset pydantic puts in the location
    assert wrong.status_code == 405 and "GET is not allowed" in wrong.json()["error"]["message"]


async def test_the_publish_routes_document_their_bodies(ingress: str) -> None:
    async with httpx.AsyncClient(base_url=ingress) as http:
        doc = (await http.get("/openapi.json")).json()
    paths = doc["paths"]
    one = paths["/v1/requests"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    many = paths["/v1/requests/batch"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"prompt", "messages", "max_new_tokens", "session_id"} <= set(one["properties"])
    assert "request_id" not in one.get("required", [])  # the ingress generates it
    item = many["properties"]["requests"]["items"]
    assert item["properties"].keys() == one["properties"].keys()
    # Inlined: a $ref into $defs would point nowhere inside an OpenAPI document.
    assert "$ref" not in json.dumps(one) and "$ref" not in json.dumps(many)


async def test_batch_publishes_every_valid_request_and_answers_each_in_order(settings: Settings, ingress: str) -> None:
    body = {
        "requests": [
            {"session_id": "b-1", "request_id": "b-r1", "prompt": "hi", "max_new_tokens": 8},
            {"session_id": "b-2", "prompt": "hi", "model": "gpt-9"},
            {"session_id": "b-3", "request_id": "b-r3", "prompt": "hi", "max_new_tokens": 4},
            {"session_id": "b-4", "prompt": "word " * 3000},
        ]
    }
    async with httpx.AsyncClient(base_url=ingress) as http:
        mixed = await http.post("/v1/requests/batch", json=body)
        clean = await http.post("/v1/requests/batch", json={"requests": [body["requests"][0]] * 2})
    assert mixed.status_code == 207, mixed.text
    answer = mixed.json()
    assert (answer["accepted"], answer["refused"]) == (2, 2)
    assert [r["status"] for r in answer["results"]] == [202, 404, 202, 413]
    assert "gpt-9" in answer["results"][1]["error"]["message"]
    assert "BRIGADE_MAX_PROMPT_TOKENS" in answer["results"][3]["error"]["message"]
    assert [answer["results"][i]["accepted"]["request_id"] for i in (0, 2)] == ["b-r1", "b-r3"]
    assert clean.status_code == 202 and clean.json()["accepted"] == 2

    records = await read_records(settings.kafka_bootstrap, settings.names.request_topic("small"), count=4)
    ids = sorted(InferenceRequest.from_bytes(r.value).request_id for r in records)
    assert ids == ["b-r1", "b-r1", "b-r1", "b-r3"]  # the refused two never reached Kafka


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"requests": [{"prompt": "x"}, {"prompt": "x", "max_new_tokens": 0}]}, "requests.1.max_new_tokens"),
        ({"requests": []}, "requests"),
        ({"requests": [{"prompt": "x"}] * 1001}, "at most 1000"),
        ({"prompt": "x"}, "requests"),
    ],
)
async def test_a_malformed_batch_is_refused_whole(ingress: str, body: dict[str, object], needle: str) -> None:
    async with httpx.AsyncClient(base_url=ingress) as http:
        resp = await http.post("/v1/requests/batch", json=body)
    assert resp.status_code == 422, resp.text
    assert needle in resp.json()["error"]["message"]


async def test_class_over_its_backlog_gets_429_while_cheaper_classes_flow(
    settings: Settings, topics: list[str]
) -> None:
    tight = settings.model_copy(update={"class_max_lag": (100, 100, 2)})
    async with fleet(tight, classes=[]) as f, httpx.AsyncClient(base_url=f.url) as http:
        for _ in range(3):
            assert (await http.post("/v1/requests", json={"prompt": "x", "cost_class": "large"})).status_code == 202
        async with asyncio.timeout(20):
            large = {"prompt": "x", "cost_class": "large"}
            while (resp := await http.post("/v1/requests", json=large)).status_code == 202:  # noqa: ASYNC110
                await asyncio.sleep(0.1)  # the lag sample is only observable through the answers
        assert resp.status_code == 429
        assert "BRIGADE_CLASS_MAX_LAG" in resp.json()["error"]["message"]
        assert 1 <= int(resp.headers["retry-after"]) <= 60
        assert (await http.post("/v1/requests", json={"prompt": "x", "cost_class": "small"})).status_code == 202


async def test_broker_unreachable_answers_503_quickly(settings: Settings) -> None:
    down = settings.model_copy(update={"kafka_bootstrap": "127.0.0.1:1", "request_timeout_s": 1.0})
    async with fleet(down, classes=[], broker_up=False) as f, httpx.AsyncClient(base_url=f.url, timeout=10) as http:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        resp = await http.post("/v1/requests", json={"prompt": "x"})
        assert resp.status_code == 503, resp.text
        assert loop.time() - t0 < 3
        assert "BRIGADE_KAFKA_BOOTSTRAP" in resp.json()["error"]["message"]
        assert (await http.get("/readyz")).status_code == 503


async def test_sse_events_resume_after_last_event_id(
    settings: Settings, ingress: str, redis_client: aioredis.Redis
) -> None:
    async with BrigadeClient(ingress) as client:
        sub = await client.submit("hi", session_id="sse-1")
        await play_worker(settings, redis_client, count=1, script=say("a", "b", "c"))
        async with httpx.AsyncClient(base_url=ingress) as http:
            ids, types = [], []
            params = {"request_id": sub.request_id}
            async with http.stream("GET", "/v1/sessions/sse-1/events", params=params) as resp:
                async for line in resp.aiter_lines():
                    if line.startswith("id:"):
                        ids.append(line[3:].strip())
                    if line.startswith("event:"):
                        types.append(line[6:].strip())
            assert types == ["token", "token", "token", "done"]
            headers = {"Last-Event-ID": ids[1]}
            async with http.stream("GET", "/v1/sessions/sse-1/events", params=params, headers=headers) as resp:
                resumed = [json.loads(line[5:]) async for line in resp.aiter_lines() if line.startswith("data:")]
        assert [e["text"] for e in resumed] == ["c", ""] and resumed[-1]["type"] == "done"
        events = [e async for e in client.stream("sse-1", request_id=sub.request_id)]
        assert [e.type for e in events] == ["token", "token", "token", "done"]


async def test_client_generate_and_errors(settings: Settings, ingress: str, redis_client: aioredis.Redis) -> None:
    async with BrigadeClient(ingress) as client:
        worker = asyncio.create_task(play_worker(settings, redis_client, count=1))
        completion = await client.generate("hi", max_new_tokens=4)
        await worker
        assert completion.text == "Hello world" and completion.finish_reason == "stop"
        with pytest.raises(BrigadeError) as err:
            await client.submit("x", max_new_tokens=100_000)
        assert err.value.status == 422 and "max_new_tokens" in err.value.message

        many = await client.submit_many([{"prompt": "a"}, {"prompt": "b", "model": "gpt-9"}, {"prompt": "c"}])
        assert [type(m).__name__ for m in many] == ["RequestAccepted", "NotFound", "RequestAccepted"]
        assert isinstance(many[1], NotFound) and "gpt-9" in many[1].message
        with pytest.raises(InvalidRequest) as bad:
            await client.submit_many([{"prompt": "a", "max_new_tokens": 0}])
        assert "requests.0.max_new_tokens" in bad.value.message


async def test_openai_sdk_completions_and_chat(settings: Settings, ingress: str, redis_client: aioredis.Redis) -> None:
    oai = openai.AsyncOpenAI(base_url=f"{ingress}/v1", api_key="unused")
    model = (await oai.models.list()).data[0].id
    assert model == settings.model

    worker = asyncio.create_task(play_worker(settings, redis_client, count=4))
    text = await oai.completions.create(model=model, prompt="Say hi", max_tokens=5)
    assert text.choices[0].text == "Hello world" and text.choices[0].finish_reason == "stop"
    assert text.usage is not None and text.usage.completion_tokens == 2

    chat = await oai.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    assert chat.choices[0].message.content == "Hello world" and chat.choices[0].message.role == "assistant"

    chunks = [
        c
        async for c in await oai.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    ]
    deltas = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert deltas == "Hello world"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 5

    streamed = [c async for c in await oai.completions.create(model=model, prompt="x", stream=True)]
    assert "".join(c.choices[0].text for c in streamed) == "Hello world"
    assert streamed[-1].choices[0].finish_reason == "stop"
    await worker

    with pytest.raises(openai.NotFoundError, match="not served here"):
        await oai.completions.create(model="gpt-9", prompt="x")
    await oai.close()


async def test_traceparent_travels_in_kafka_headers(settings: Settings, ingress: str) -> None:
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    async with httpx.AsyncClient(base_url=ingress) as http:
        resp = await http.post("/v1/requests", json={"prompt": "x"}, headers={"traceparent": trace})
    assert resp.status_code == 202
    records = await read_records(settings.kafka_bootstrap, settings.names.request_topic("small"), count=1)
    assert dict(records[0].headers)["traceparent"] == trace.encode()


async def test_metrics_count_outcomes_and_export_lag(settings: Settings, ingress: str) -> None:
    async with httpx.AsyncClient(base_url=ingress) as http:
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/health")).status_code == 200, "vLLM's name for it"
        assert (await http.get("/version")).json() == {"version": __version__}
        assert (await http.post("/v1/requests", json={"prompt": "x", "max_new_tokens": 4})).status_code == 202
        too_long = await http.post("/v1/requests", json={"prompt": "x", "max_new_tokens": 5000, "cost_class": "small"})
        assert too_long.status_code == 422
        ready = await http.get("/readyz")
        assert ready.status_code == 200 and ready.json() == {"ready": True, "kafka": True, "redis": True}
        async with asyncio.timeout(20):
            while 'brigade_class_lag{class="small"} 1.0' not in (text := (await http.get("/metrics")).text):  # noqa: ASYNC110
                await asyncio.sleep(0.1)  # the lag sampler runs on its own period; /metrics is how it shows
    assert 'brigade_ingress_requests_total{class="small",outcome="accepted"} 1.0' in text
    assert 'brigade_ingress_requests_total{class="small",outcome="rejected"} 1.0' in text
    assert 'brigade_ingress_publish_seconds_count{class="small"} 1.0' in text


async def test_redis_unreachable_answers_503_before_publishing(settings: Settings, topics: list[str]) -> None:
    down = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0", "request_timeout_s": 1.0})
    async with fleet(down, classes=[]) as f, httpx.AsyncClient(base_url=f.url, timeout=10) as http:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        events = await http.get("/v1/sessions/s/events")
        chat = await http.post("/v1/completions", json={"model": settings.model, "prompt": "x"})
        assert loop.time() - t0 < 4
        for resp in (events, chat):
            assert resp.status_code == 503, resp.text
            assert "BRIGADE_REDIS_URL" in resp.json()["error"]["message"]
            assert resp.headers["retry-after"] == "1"
        ready = await http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["redis"] is False
        # Publishing needs only Kafka: a native submit is still accepted, to be read once Redis is back.
        assert (await http.post("/v1/requests", json={"prompt": "x"})).status_code == 202
