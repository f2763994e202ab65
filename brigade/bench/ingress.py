"""Ingress throughput: accepted requests/s (POST /v1/requests → 202, i.e. the broker acked) against a bare producer.

Both sides send the same messages (the ingress's own encoding of the same request, keyed by session) to
the same topic of the same broker, acks=all with the ingress's linger, and both keep the same number of
requests in flight. The ingress runs in-process with no workers (``fleet(settings, classes=[])``) and
is driven by httpx clients on the same event loop (one client and connection per in-flight POST), so
the ingress figure also pays for its HTTP clients; the bare producer has no clients to pay for.

Measured twice: one request per ``POST /v1/requests``, and ``batch`` requests per ``POST /v1/requests/batch``
(``concurrency / batch`` clients, so the same number of requests is in flight): the second is how a bulk
publisher would use the ingress, and shows what the HTTP exchange itself costs per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass

import httpx
from aiokafka import AIOKafkaProducer

from brigade.bench.pipeline import Job, make_jobs
from brigade.inprocess import fleet
from brigade.kafka_config import kafka_client_options
from producer.topics import ensure_topics
from schemas.requests import InferenceRequest
from schemas.settings import Settings

# The ingress's producer (producer/publisher.py) lingers 2 ms; the bare producer must match it.
INGRESS_LINGER_MS = 2


@dataclass(frozen=True, slots=True)
class IngressConfig:
    requests: int = 2000
    concurrency: int = 64
    prompt_words: int = 24
    warmup: int = 64  # at least one request per client
    batch: int = 16  # requests per POST /v1/requests/batch on the batched side
    one_cpu: bool = True  # pin this process (ingress + clients, or bare producer) to one CPU while measuring

    @classmethod
    def quick(cls) -> IngressConfig:
        return cls(requests=500, concurrency=32, prompt_words=16)


@dataclass(frozen=True, slots=True)
class ThroughputResult:
    sent: int
    accepted: int
    seconds: float

    @property
    def accepted_per_s(self) -> float:
        return self.accepted / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True, slots=True)
class IngressResult:
    concurrency: int
    linger_ms: int
    cpu_affinity: list[int] | None
    ingress: ThroughputResult
    bare: ThroughputResult
    batch: int = 1
    batched: ThroughputResult | None = None  # POST /v1/requests/batch with ``batch`` requests each

    @property
    def ratio(self) -> float:
        return self.ingress.accepted_per_s / self.bare.accepted_per_s if self.bare.accepted_per_s > 0 else 0.0

    @property
    def batched_ratio(self) -> float | None:
        if self.batched is None or self.bare.accepted_per_s <= 0:
            return None
        return self.batched.accepted_per_s / self.bare.accepted_per_s


def chunks_of_work(n: int, workers: int) -> list[int]:
    """Split ``n`` requests over ``workers`` closed-loop clients as evenly as possible (first ones get more)."""
    if workers < 1:
        raise ValueError("workers must be >= 1")
    base, extra = divmod(n, workers)
    return [base + (1 if i < extra else 0) for i in range(min(workers, n))] if n else []


@contextlib.contextmanager
def one_cpu(enabled: bool) -> Iterator[list[int] | None]:
    """Pin the process to one of its allowed CPUs (Linux) for the duration; yields the affinity used."""
    if not enabled or not hasattr(os, "sched_setaffinity"):
        yield None
        return
    before = os.sched_getaffinity(0)
    cpu = min(before)
    os.sched_setaffinity(0, {cpu})
    try:
        yield [cpu]
    finally:
        os.sched_setaffinity(0, before)


async def _closed_loop(
    jobs: Sequence[Job],
    workers: int,
    send: Callable[[int, Sequence[Job]], Awaitable[int]],
    on_sent: Callable[[int], None] | None,
    *,
    per_send: int = 1,
) -> ThroughputResult:
    """``workers`` senders, each sending ``per_send`` jobs at a time and waiting for the answer (closed loop)."""
    groups = iter([jobs[i : i + per_send] for i in range(0, len(jobs), per_send)])
    accepted = 0

    async def worker(i: int, n: int) -> None:
        nonlocal accepted
        for _ in range(n):
            group = next(groups)
            accepted += await send(i, group)
            if on_sent is not None:
                on_sent(len(group))

    t0 = time.perf_counter()
    n_groups = -(-len(jobs) // per_send)
    await asyncio.gather(*(worker(i, n) for i, n in enumerate(chunks_of_work(n_groups, workers))))
    return ThroughputResult(sent=len(jobs), accepted=accepted, seconds=time.perf_counter() - t0)


def _settings(base: Settings, tag: str) -> Settings:
    return base.model_copy(update={"namespace": f"ing{tag}", "class_max_lag": (10**9,) * len(base.classes)})


async def run_ingress_side(
    base: Settings, config: IngressConfig, *, batch: int = 1, on_sent: Callable[[int], None] | None = None
) -> ThroughputResult:
    """Closed-loop POSTs: one request each (``batch`` 1) or ``batch`` each to ``/v1/requests/batch``."""
    tag = uuid.uuid4().hex[:8]
    settings = _settings(base, tag)
    await ensure_topics(settings)
    posters = max(1, config.concurrency // batch)
    # One client (one keep-alive connection) per closed-loop sender: a single shared httpx pool spends
    # more CPU assigning 32+ concurrent requests to connections than the ingress spends serving them.
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with contextlib.AsyncExitStack() as stack:
        f = await stack.enter_async_context(fleet(settings, classes=[]))
        clients = [
            await stack.enter_async_context(httpx.AsyncClient(base_url=f.url, timeout=30, limits=limits))
            for _ in range(posters)
        ]

        async def send(i: int, group: Sequence[Job]) -> int:
            if batch == 1:
                resp = await clients[i].post("/v1/requests", json=group[0].body)
                return 1 if resp.status_code == 202 else 0
            resp = await clients[i].post("/v1/requests/batch", json={"requests": [j.body for j in group]})
            return int(resp.json().get("accepted", 0)) if resp.status_code in (202, 207) else 0

        warm = make_jobs(config.warmup, prompt_words=config.prompt_words, new_tokens=8, tag=f"{tag}w")
        await _closed_loop(warm, posters, send, None, per_send=batch)
        jobs = make_jobs(config.requests, prompt_words=config.prompt_words, new_tokens=8, tag=tag)
        return await _closed_loop(jobs, posters, send, on_sent, per_send=batch)


async def run_bare_side(
    base: Settings, config: IngressConfig, *, on_sent: Callable[[int], None] | None = None
) -> ThroughputResult:
    tag = uuid.uuid4().hex[:8]
    settings = _settings(base, tag)
    await ensure_topics(settings)
    topic = settings.names.request_topic("small")
    producer = AIOKafkaProducer(
        **kafka_client_options(settings),
        acks="all",
        enable_idempotence=settings.kafka_idempotence,
        linger_ms=INGRESS_LINGER_MS,
    )
    await producer.start()
    try:

        async def send(_i: int, group: Sequence[Job]) -> int:
            (job,) = group
            # The bytes the ingress publishes for the same body (its model, its encoding).
            value = InferenceRequest.model_validate(job.body).to_bytes()
            await producer.send_and_wait(topic, value=value, key=job.session_id.encode())
            return 1

        warm = make_jobs(config.warmup, prompt_words=config.prompt_words, new_tokens=8, tag=f"{tag}w")
        await _closed_loop(warm, config.concurrency, send, None)
        jobs = make_jobs(config.requests, prompt_words=config.prompt_words, new_tokens=8, tag=tag)
        return await _closed_loop(jobs, config.concurrency, send, on_sent)
    finally:
        await producer.stop()


def run_ingress_figure(
    base: Settings,
    config: IngressConfig,
    *,
    on_sent_ingress: Callable[[int], None] | None = None,
    on_sent_batched: Callable[[int], None] | None = None,
    on_sent_bare: Callable[[int], None] | None = None,
) -> IngressResult:
    """Every side, one after the other, each in its own event loop, under the same CPU affinity."""
    with one_cpu(config.one_cpu) as cpus:
        ingress = asyncio.run(run_ingress_side(base, config, on_sent=on_sent_ingress))
        batched = (
            asyncio.run(run_ingress_side(base, config, batch=config.batch, on_sent=on_sent_batched))
            if config.batch > 1
            else None
        )
        bare = asyncio.run(run_bare_side(base, config, on_sent=on_sent_bare))
    return IngressResult(
        concurrency=config.concurrency,
        linger_ms=INGRESS_LINGER_MS,
        cpu_affinity=cpus,
        ingress=ingress,
        bare=bare,
        batch=config.batch,
        batched=batched,
    )
