"""Ingress throughput: accepted requests/s (POST /v1/requests → 202, i.e. the broker acked) against a bare producer.

Both sides send the same messages (the ingress's own encoding of the same request, keyed by session) to
the same topic of the same broker, acks=all with the ingress's linger (``BRIGADE_KAFKA_LINGER_MS``), and both
keep the same number of requests in flight. The ingress runs in this process with no workers
(``fleet(settings, classes=[])``), pinned to one CPU; its HTTP clients run in a child process pinned to another CPU
(``brigade/bench/loadgen.py``), as a load generator would. The bare producer runs in this process on the
same CPU.

Measured twice: one request per ``POST /v1/requests``, and ``batch`` requests per ``POST /v1/requests/batch``
(``concurrency / batch`` clients, so the same number of requests is in flight): the second is how a bulk
publisher would use the ingress, and shows what the HTTP exchange itself costs per request.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer

from brigade import eventloop
from brigade.bench.loadgen import HttpLoad, ThroughputResult, closed_loop, http_load
from brigade.bench.pipeline import Job, make_jobs
from brigade.bench.rounds import median_run
from brigade.inprocess import fleet
from brigade.kafka_config import kafka_client_options
from producer.topics import ensure_topics
from schemas.requests import InferenceRequest
from schemas.settings import Settings


@dataclass(frozen=True, slots=True)
class IngressConfig:
    requests: int = 10_000  # per side and round: at 13 000 requests/s, 2000 was 0.15 s, too short on a noisy box
    concurrency: int = 64
    prompt_words: int = 24
    warmup: int = 64  # at least one request per client
    batch: int = 16  # requests per POST /v1/requests/batch on the batched side
    one_cpu: bool = True  # pin this process (the ingress, or the bare producer) to one CPU while measuring
    rounds: int = 3  # the sides take turns, round after round; each side's median round is reported

    @classmethod
    def quick(cls) -> IngressConfig:
        return cls(requests=500, concurrency=32, prompt_words=16, rounds=1)


@dataclass(frozen=True, slots=True)
class IngressResult:
    concurrency: int
    linger_ms: int
    cpu_affinity: list[int] | None
    ingress: ThroughputResult
    bare: ThroughputResult
    batch: int = 1
    batched: ThroughputResult | None = None  # POST /v1/requests/batch with ``batch`` requests each
    event_loop: str = "asyncio"  # the ingress's loop under BRIGADE_EVENT_LOOP: every side ran on it
    rounds: dict[str, list[float]] = field(default_factory=dict)  # side -> accepted requests/s of each round

    @property
    def ratio(self) -> float:
        return self.ingress.accepted_per_s / self.bare.accepted_per_s if self.bare.accepted_per_s > 0 else 0.0

    @property
    def batched_ratio(self) -> float | None:
        if self.batched is None or self.bare.accepted_per_s <= 0:
            return None
        return self.batched.accepted_per_s / self.bare.accepted_per_s


@dataclass(frozen=True, slots=True)
class Pinning:
    cpus: list[int] | None  # what this process is pinned to (None: not pinned)
    spare: int | None  # another CPU this process may use, for the load generator (None: none, or not pinned)


@contextlib.contextmanager
def one_cpu(enabled: bool) -> Iterator[Pinning]:
    """Pin the process to one of its allowed CPUs (Linux) for the duration; the spare comes from the same
    allowed set (a container's cpuset need not start at CPU 0)."""
    if not enabled or not hasattr(os, "sched_setaffinity"):
        yield Pinning(cpus=None, spare=None)
        return
    before = os.sched_getaffinity(0)
    cpu = min(before)
    others = sorted(before - {cpu})
    os.sched_setaffinity(0, {cpu})
    try:
        yield Pinning(cpus=[cpu], spare=others[0] if others else None)
    finally:
        os.sched_setaffinity(0, before)


def _settings(base: Settings, tag: str) -> Settings:
    return base.model_copy(update={"namespace": f"ing{tag}", "class_max_lag": (10**9,) * len(base.classes)})


async def run_ingress_side(
    base: Settings, config: IngressConfig, *, batch: int = 1, load_cpu: int | None = None
) -> ThroughputResult:
    """Closed-loop POSTs from the load generator (pinned to ``load_cpu``): one request each (``batch`` 1) or
    ``batch`` each to ``/v1/requests/batch``, with ``concurrency // batch`` senders so the same requests are in
    flight."""
    tag = uuid.uuid4().hex[:8]
    settings = _settings(base, tag)
    await ensure_topics(settings)
    async with fleet(settings, classes=[]) as f:
        load = HttpLoad(
            url=f.url,
            requests=config.requests,
            warmup=config.warmup,
            posters=max(1, config.concurrency // batch),
            batch=batch,
            prompt_words=config.prompt_words,
            tag=tag,
            cpu=load_cpu,
        )
        return await http_load(load)


async def run_bare_side(base: Settings, config: IngressConfig) -> ThroughputResult:
    tag = uuid.uuid4().hex[:8]
    settings = _settings(base, tag)
    await ensure_topics(settings)
    topic = settings.names.request_topic("small")
    producer = AIOKafkaProducer(
        **kafka_client_options(settings),
        acks="all",
        enable_idempotence=settings.kafka_idempotence,
        linger_ms=settings.kafka_linger_ms,
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
        await closed_loop(warm, config.concurrency, send)
        jobs = make_jobs(config.requests, prompt_words=config.prompt_words, new_tokens=8, tag=tag)
        return await closed_loop(jobs, config.concurrency, send)
    finally:
        await producer.stop()


def run_ingress_figure(
    base: Settings, config: IngressConfig, *, on_side: Callable[[str], None] | None = None
) -> IngressResult:
    """Every side in turn, ``config.rounds`` times, each on its own event loop, under the same CPU affinity.

    Each loop is the one ``brigade ingress`` runs on (``BRIGADE_EVENT_LOOP``), the bare producer's too.
    Taking turns spreads the machine's slow spells over all sides instead of charging them to one.
    """
    loop = eventloop.resolve(base.event_loop, "ingress")
    sides: dict[str, Callable[[Pinning], Coroutine[Any, Any, ThroughputResult]]] = {
        "ingress": lambda pinned: run_ingress_side(base, config, load_cpu=pinned.spare),
        "bare": lambda _pinned: run_bare_side(base, config),
    }
    if config.batch > 1:
        sides["batched"] = lambda pinned: run_ingress_side(base, config, batch=config.batch, load_cpu=pinned.spare)
    runs: dict[str, list[ThroughputResult]] = {name: [] for name in sides}
    with one_cpu(config.one_cpu) as pinned:
        for _ in range(config.rounds):
            for name, side in sides.items():
                runs[name].append(eventloop.run(side(pinned), loop=loop, role="ingress"))
                if on_side is not None:
                    on_side(name)
    return IngressResult(
        concurrency=config.concurrency,
        linger_ms=base.kafka_linger_ms,
        cpu_affinity=pinned.cpus,
        ingress=_median(runs["ingress"]),
        bare=_median(runs["bare"]),
        batch=config.batch,
        batched=_median(runs["batched"]) if "batched" in runs else None,
        event_loop=loop,
        rounds={name: [r.accepted_per_s for r in results] for name, results in runs.items()},
    )


def _median(runs: Sequence[ThroughputResult]) -> ThroughputResult:
    return median_run(runs, lambda r: r.accepted_per_s)
