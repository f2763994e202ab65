"""Trace context end to end against the real broker and redis-server: HTTP header → Kafka record header →
worker (its log lines) → the request's final event in Redis, on every route that publishes and for raw
publishers that send no header at all."""

from __future__ import annotations

import logging
import re

import httpx
import openai
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from brigade.inprocess import finals, fleet, read_until_final
from producer.client import BrigadeClient
from schemas.events import DoneEvent, ErrorEvent, TokenEvent
from schemas.requests import InferenceRequest
from schemas.settings import Settings
from schemas.tracing import TraceContext, parse_traceparent
from tests.kafka_reader import read_records

TRACE_ID, SPAN_ID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
GIVEN = f"00-{TRACE_ID}-{SPAN_ID}-01"
HEADER = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
AnyEvent = TokenEvent | DoneEvent | ErrorEvent


async def final_of(redis: aioredis.Redis, settings: Settings, session_id: str, request_id: str) -> AnyEvent:
    events = await read_until_final(redis, settings.names.stream_key(session_id), {request_id}, timeout_s=60)
    (final,) = finals(events[request_id])
    return final


def worker_lines(caplog: pytest.LogCaptureFixture) -> dict[str, logging.LogRecord]:
    """The worker's "request finished" line per request_id."""
    return {r.request_id: r for r in caplog.records if r.getMessage() == "request finished"}  # type: ignore[attr-defined]


def trace_of(event: AnyEvent) -> TraceContext:
    assert isinstance(event, DoneEvent | ErrorEvent)
    ctx = parse_traceparent(event.traceparent)
    assert ctx is not None, event
    return ctx


async def test_http_requests_keep_the_callers_trace_or_get_a_new_one(
    settings: Settings, topics: list[str], redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="consumer.worker")
    body = {"prompt": "The pass is where plates go out.", "max_new_tokens": 3, "temperature": 0}
    async with fleet(settings, classes=["small"]) as f, httpx.AsyncClient(base_url=f.url, timeout=30) as http:
        given = await http.post("/v1/requests", json=body, headers={"traceparent": GIVEN, "tracestate": "v=1"})
        absent = await http.post("/v1/requests", json=body)
        invalid = await http.post("/v1/requests", json=body, headers={"traceparent": "00-xyz", "tracestate": "v=2"})
        accepted = [r.json() for r in (given, absent, invalid)]
        finals_ = [await final_of(redis_client, settings, a["session_id"], a["request_id"]) for a in accepted]

    # The caller's trace: passed through unchanged, repeated by the worker as a child span of the caller's.
    assert accepted[0]["traceparent"] == GIVEN
    worker_span = trace_of(finals_[0])
    assert isinstance(finals_[0], DoneEvent)
    assert (worker_span.trace_id, worker_span.flags) == (TRACE_ID, 1) and worker_span.span_id != SPAN_ID
    # No header, or an invalid one: a new trace, which the 202 names and the worker continues.
    for a, final in zip(accepted[1:], finals_[1:], strict=True):
        assert HEADER.fullmatch(a["traceparent"]) and TRACE_ID not in a["traceparent"]
        assert trace_of(final).trace_id == parse_traceparent(a["traceparent"]).trace_id  # type: ignore[union-attr]

    records = await read_records(settings.kafka_bootstrap, settings.names.request_topic("small"), count=3)
    by_id = {InferenceRequest.model_validate_json(r.value).request_id: dict(r.headers) for r in records}
    assert by_id[accepted[0]["request_id"]] == {"traceparent": GIVEN.encode(), "tracestate": b"v=1"}
    assert by_id[accepted[2]["request_id"]] == {"traceparent": accepted[2]["traceparent"].encode()}  # state dropped

    lines = worker_lines(caplog)
    line = lines[accepted[0]["request_id"]]
    assert (line.trace_id, line.span_id, line.parent_span_id) == (TRACE_ID, worker_span.span_id, SPAN_ID)  # type: ignore[attr-defined]
    assert line.session_id == accepted[0]["session_id"] and getattr(line, "class") == "small"  # type: ignore[attr-defined]
    assert (line.partition, line.offset) == (accepted[0]["partition"], accepted[0]["offset"])  # type: ignore[attr-defined]
    assert lines[accepted[1]["request_id"]].trace_id == trace_of(finals_[1]).trace_id  # type: ignore[attr-defined]


async def test_openai_routes_and_the_python_client_carry_the_trace(
    settings: Settings, topics: list[str], redis_client: aioredis.Redis
) -> None:
    async with fleet(settings, classes=["small"]) as f, BrigadeClient(f.url) as client:
        oai = openai.AsyncOpenAI(base_url=f"{f.url}/v1", api_key="unused", default_headers={"traceparent": GIVEN})
        await oai.completions.create(model=settings.model, prompt="x", max_tokens=2)
        await oai.chat.completions.create(
            model=settings.model, messages=[{"role": "user", "content": "x"}], max_tokens=2
        )
        await oai.close()
        answer = await client.generate("x", max_new_tokens=2, traceparent=GIVEN)
        fresh = await client.generate("x", max_new_tokens=2)
    assert parse_traceparent(answer.traceparent).trace_id == TRACE_ID  # type: ignore[union-attr]
    assert fresh.traceparent is not None and TRACE_ID not in fresh.traceparent
    records = await read_records(settings.kafka_bootstrap, settings.names.request_topic("small"), count=4)
    headers = [dict(r.headers)["traceparent"] for r in records]
    assert headers.count(GIVEN.encode()) == 3 and all(HEADER.fullmatch(h.decode()) for h in headers)


async def test_raw_publishers_with_and_without_a_header(
    settings: Settings, topics: list[str], redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="consumer.worker")
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    topic = settings.names.request_topic("small")
    try:
        async with fleet(settings, classes=["small"], ingress=False):
            for rid, headers in (("bare", None), ("traced", [("traceparent", GIVEN.encode())])):
                req = InferenceRequest(request_id=rid, session_id=f"s-{rid}", prompt="hi", max_new_tokens=2)
                await producer.send_and_wait(topic, req.to_bytes(), key=req.session_id.encode(), headers=headers)
            bare = await final_of(redis_client, settings, "s-bare", "bare")
            traced = await final_of(redis_client, settings, "s-traced", "traced")
    finally:
        await producer.stop()
    assert trace_of(traced).trace_id == TRACE_ID
    started = trace_of(bare)  # no header: the worker starts a trace of its own, and its log line says so
    line = worker_lines(caplog)["bare"]
    assert (line.trace_id, line.span_id, line.parent_span_id) == (started.trace_id, started.span_id, None)  # type: ignore[attr-defined]
