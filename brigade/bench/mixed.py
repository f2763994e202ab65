"""Figure 5: continuous against static batching on a mix of answer lengths, through one real worker.

The same seeded backlog (``max_new_tokens`` spread evenly from 8 to 256) goes to a worker with
``BRIGADE_BATCHING=static`` and then to one with ``continuous``, each through Kafka and Redis. Static
batching holds a batch's slots until its longest answer ends, so the queue behind it waits; continuous
batching gives a finished request's slot to the next one at the following step. Both throughput and
time to first token (from the burst's send to each request's first event) are reported, because
a scheduler that wins tokens/s by starving the queue would show it there.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from brigade.bench.engine_loop import bench_prompt
from brigade.bench.latency import summarize
from brigade.bench.pipeline import Job, await_finals, isolated_settings, publish
from brigade.inprocess import fleet
from consumer.worker import EngineFactory
from producer.topics import ensure_topics
from schemas.settings import Settings

Mode = Literal["static", "continuous"]
MODES: tuple[Mode, Mode] = ("static", "continuous")


@dataclass(frozen=True, slots=True)
class MixedConfig:
    requests: int = 64
    min_new_tokens: int = 8
    max_new_tokens: int = 256
    prompt_words: int = 24
    batch_size: int = 32
    seed: int = 5

    @classmethod
    def quick(cls) -> MixedConfig:
        # batch 16 leaves room for joins of BRIGADE_MIN_JOIN (8) while a batch runs; at 8 every join waited for all
        return cls(requests=24, max_new_tokens=16, prompt_words=16, batch_size=16)

    def new_tokens(self) -> list[int]:
        """The backlog's answer lengths: seeded, so both modes (and reruns) get the same mix."""
        rng = random.Random(self.seed)
        return [rng.randint(self.min_new_tokens, self.max_new_tokens) for _ in range(self.requests)]


@dataclass(frozen=True, slots=True)
class ModeResult:
    mode: Mode
    requests: int
    tokens: int
    seconds: float
    ttft_ms: dict[str, float] = field(default_factory=dict)  # n, p50, p90, p99, max
    ttft_samples_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True, slots=True)
class MixedResult:
    model: str
    config: MixedConfig
    static: ModeResult
    continuous: ModeResult

    @property
    def speedup(self) -> float:
        """Continuous over static tokens/s (target ≥ 2 at the same p50 TTFT or better)."""
        return self.continuous.tokens_per_s / self.static.tokens_per_s if self.static.tokens_per_s else 0.0


def mixed_jobs(config: MixedConfig, *, tag: str) -> list[Job]:
    jobs = []
    for i, n in enumerate(config.new_tokens()):
        rid, sid = f"{tag}-r{i}", f"{tag}-s{i}"
        body: dict[str, object] = {
            "request_id": rid,
            "session_id": sid,
            "prompt": bench_prompt(i, words=config.prompt_words),
            "max_new_tokens": n,
            "temperature": 0,
            "ignore_eos": True,
        }
        jobs.append(Job(rid, sid, body))
    return jobs


async def run_mode(
    base: Settings,
    config: MixedConfig,
    mode: Mode,
    *,
    on_final: Callable[[], None] | None = None,
    engines: EngineFactory | None = None,
) -> ModeResult:
    """One worker in ``mode`` serves the whole backlog, pre-published as a burst to its topic."""
    tag = uuid.uuid4().hex[:8]
    settings = isolated_settings(
        base, namespace=f"mix{tag}", batch_size=config.batch_size, queue_size=config.requests + 1
    ).model_copy(update={"batching": mode})
    await ensure_topics(settings)
    redis = aioredis.from_url(settings.redis_url, decode_responses=True)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        async with fleet(settings, classes=["small"], ingress=False, engines=engines):
            warm_body: dict[str, object] = {"request_id": f"{tag}-w", "session_id": f"{tag}-w", "prompt": "warm"}
            warm = [Job(f"{tag}-w", f"{tag}-w", warm_body | {"max_new_tokens": 2})]
            await publish(producer, settings, warm)
            await await_finals(redis, settings, warm, timeout_s=300)
            jobs = mixed_jobs(config, tag=tag)
            first_seen: dict[str, float] = {}
            t0 = time.perf_counter()
            sender = asyncio.create_task(publish(producer, settings, jobs))
            tokens = await await_finals(redis, settings, jobs, timeout_s=3600, on_final=on_final, first_seen=first_seen)
            elapsed = time.perf_counter() - t0
            await sender
    finally:
        await producer.stop()
        await redis.aclose()
    ttft = [(first_seen[j.request_id] - t0) * 1000 for j in jobs]
    return ModeResult(
        mode=mode, requests=len(jobs), tokens=tokens, seconds=elapsed, ttft_ms=summarize(ttft), ttft_samples_ms=ttft
    )


async def run_mixed(
    base: Settings,
    config: MixedConfig,
    *,
    on_final: Callable[[], None] | None = None,
    engines: EngineFactory | None = None,
) -> MixedResult:
    static = await run_mode(base, config, "static", on_final=on_final, engines=engines)
    continuous = await run_mode(base, config, "continuous", on_final=on_final, engines=engines)
    return MixedResult(model=base.model, config=config, static=static, continuous=continuous)
