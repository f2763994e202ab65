"""Through the fleet: a saturating backlog into one worker, and the whole path from HTTP to a Redis reader.

Each run first sends one warm-up batch at the measured shapes (batch size, prompt length, new tokens)
and waits for its answers, so group join, connection set-up and ONNX Runtime's first use of those
shapes (its memory arena grows on first use: a fresh worker's first batch-32 prefill took 720-975 ms
against 630-680 ms warm) are outside the measured window, as they are for the engine loop; then it
sends the backlog as a burst and times from the first send to the last final event read back from Redis.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from brigade.bench.engine_loop import LoopResult, bench_prompt
from brigade.inprocess import fleet
from brigade.streams import xread
from consumer.worker import EngineFactory
from producer.topics import ensure_topics
from schemas.events import DoneEvent, is_final, parse_event
from schemas.settings import Settings


@dataclass(frozen=True, slots=True)
class Job:
    request_id: str
    session_id: str
    body: dict[str, object]


def make_jobs(n: int, *, prompt_words: int, new_tokens: int, tag: str) -> list[Job]:
    """One session per request, so the batcher may put all of them in one batch."""
    jobs = []
    for i in range(n):
        rid, sid = f"{tag}-r{i}", f"{tag}-s{i}"
        body: dict[str, object] = {
            "request_id": rid,
            "session_id": sid,
            "prompt": bench_prompt(i, words=prompt_words),
            "max_new_tokens": new_tokens,
            "temperature": 0,
            "ignore_eos": True,
            "cost_class": "small",
        }
        jobs.append(Job(rid, sid, body))
    return jobs


async def await_finals(
    redis: aioredis.Redis,
    settings: Settings,
    jobs: list[Job],
    *,
    timeout_s: float,
    on_final: Callable[[], None] | None = None,
    first_seen: dict[str, float] | None = None,
) -> int:
    """Read every job's stream until its final event; return the completion tokens reported by ``done``.

    ``first_seen``, when given, receives each request's first event time (``time.perf_counter``).
    """
    cursors = {settings.names.stream_key(j.session_id): "0-0" for j in jobs}
    pending = {j.request_id for j in jobs}
    tokens = 0
    deadline = time.monotonic() + timeout_s
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} of {len(jobs)} requests unfinished after {timeout_s}s")
        live = {k: v for k, v in cursors.items() if v != "done"}
        reply = await xread(redis, live, block_ms=1000)
        for key, entries in reply:
            for entry_id, fields in entries:
                cursors[key] = entry_id
                event = parse_event(fields)
                if first_seen is not None:
                    first_seen.setdefault(event.request_id, time.perf_counter())
                if is_final(event) and event.request_id in pending:
                    pending.discard(event.request_id)
                    cursors[key] = "done"
                    if isinstance(event, DoneEvent):
                        tokens += event.completion_tokens
                    if on_final is not None:
                        on_final()
    return tokens


async def publish(producer: AIOKafkaProducer, settings: Settings, jobs: list[Job]) -> None:
    topic = settings.names.request_topic("small")
    futures = [await producer.send(topic, json.dumps(j.body).encode(), key=j.session_id.encode()) for j in jobs]
    await asyncio.gather(*futures)


async def _submit_http(http: aiohttp.ClientSession, jobs: list[Job]) -> None:
    """aiohttp, not httpx, as the latency figure's client: it shares the two cores with the fleet under test, and
    httpx's CPU per request (about three times aiohttp's) held up the backlog's start by 80-170 ms a run."""

    async def one(job: Job) -> None:
        async with http.post("/v1/requests", json=job.body, raise_for_status=True) as resp:
            await resp.read()

    await asyncio.gather(*(one(j) for j in jobs))


def isolated_settings(base: Settings, *, namespace: str, batch_size: int, queue_size: int) -> Settings:
    """One run's settings: its own namespace, one ``small`` worker at ``batch_size``, a queue that holds the
    whole backlog, and admission control out of the way (the benchmark measures the path, not the breaker)."""
    return base.model_copy(
        update={
            "namespace": namespace,
            "worker_class": "small",
            "max_batch_size": batch_size,
            "queue_size": max(base.queue_size, queue_size),
            "class_max_lag": (10**9,) * len(base.classes),
        }
    )


async def run_through_fleet(
    base: Settings,
    *,
    via_http: bool,
    batch_size: int,
    requests: int,
    prompt_words: int,
    new_tokens: int,
    on_final: Callable[[], None] | None = None,
    engines: EngineFactory | None = None,
) -> LoopResult:
    """Tokens/s of one worker (batch ``batch_size``) fed by Kafka directly or through the ingress; ``engines``:
    the worker's engine factory (``brigade/bench/engines.py``)."""
    tag = uuid.uuid4().hex[:8]
    settings = isolated_settings(base, namespace=f"bench{tag}", batch_size=batch_size, queue_size=requests + 1)
    await ensure_topics(settings)
    redis = aioredis.from_url(settings.redis_url, decode_responses=True)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        async with (
            fleet(settings, classes=["small"], ingress=via_http, engines=engines) as f,
            aiohttp.ClientSession(f.url, timeout=aiohttp.ClientTimeout(total=60)) as http,
        ):
            warm = make_jobs(batch_size, prompt_words=prompt_words, new_tokens=new_tokens, tag=f"{tag}w")
            await (_submit_http(http, warm) if via_http else publish(producer, settings, warm))
            await await_finals(redis, settings, warm, timeout_s=300)
            jobs = make_jobs(requests, prompt_words=prompt_words, new_tokens=new_tokens, tag=tag)
            t0 = time.perf_counter()
            sender = asyncio.create_task(_submit_http(http, jobs) if via_http else publish(producer, settings, jobs))
            tokens = await await_finals(redis, settings, jobs, timeout_s=3600, on_final=on_final)
            elapsed = time.perf_counter() - t0
            await sender
    finally:
        await producer.stop()
        await redis.aclose()
    return LoopResult(batch_size=batch_size, requests=requests, tokens=tokens, seconds=elapsed)
