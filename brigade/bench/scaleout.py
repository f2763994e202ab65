"""Figure 6 (scale-out) and the per-replica throughput and cold start the KEDA generator needs.

Scale-out: 1, 2, then 4 ``brigade worker`` processes of one class on the bench's broker and Redis, one topic with
``partitions`` partitions. Consumers are added to the same group between runs (so each step pays one rebalance,
outside the timed window); each run waits until every consumer owns partitions, sends a warm-up request per
partition, then a backlog spread evenly over the partitions (round robin, so no consumer idles because keys
hashed unevenly) and times from the first send to the last final event read back from Redis.

The one-consumer run is also what ``deploy/keda`` calls per-replica throughput: requests/s and tokens/s of one
replica under a saturating backlog at a stated request shape.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from brigade.bench.pipeline import Job, await_finals, isolated_settings, make_jobs
from brigade.bench.replicas import cold_start_s, wait_balanced, worker_pool, worker_service
from brigade.models.registry import resolve_model
from producer.topics import ensure_topics
from schemas.settings import Settings


@dataclass(frozen=True, slots=True)
class ScaleoutConfig:
    model: str = "builtin:tiny"
    consumers: tuple[int, ...] = (1, 2, 4)
    partitions: int = 8  # more than the largest consumer count, as a class topic should have
    requests: int = 2048  # the backlog of each run
    prompt_words: int = 24
    new_tokens: int = 32
    batch_size: int = 32

    @classmethod
    def quick(cls) -> ScaleoutConfig:
        return cls(consumers=(1, 2), requests=128, new_tokens=16)


@dataclass(frozen=True, slots=True)
class ColdStartConfig:
    models: tuple[str, ...] = ("builtin:tiny", "builtin:gpt2-small-shape")
    repeats: int = 3  # with the model cache warm; the median is the figure
    fresh_cache: bool = True  # also one start with an empty cache (a built-in model generated first)

    @classmethod
    def quick(cls) -> ColdStartConfig:
        return cls(models=("builtin:tiny",), repeats=1, fresh_cache=False)


@dataclass(frozen=True, slots=True)
class ScaleoutRun:
    consumers: int
    partitions_owned: tuple[int, ...]  # per consumer, when the run started
    requests: int
    tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


@dataclass
class ScaleoutResult:
    config: ScaleoutConfig
    runs: list[ScaleoutRun] = field(default_factory=list)

    def ratios(self) -> dict[int, float]:
        """Tokens/s with n consumers over tokens/s with the first (smallest) count."""
        if not self.runs:
            return {}
        base = self.runs[0].tokens_per_s
        return {r.consumers: (r.tokens_per_s / base if base else 0.0) for r in self.runs}


@dataclass
class ColdStartResult:
    config: ColdStartConfig
    warm_cache_s: dict[str, list[float]] = field(default_factory=dict)  # model → each start, seconds
    fresh_cache_s: dict[str, float] = field(default_factory=dict)  # model → one start with an empty cache

    def medians(self) -> dict[str, float]:
        return {m: statistics.median(v) for m, v in self.warm_cache_s.items() if v}


def run_scaleout(
    base: Settings, config: ScaleoutConfig, *, on_run: Callable[[ScaleoutRun], None] | None = None
) -> ScaleoutResult:
    """Add consumers step by step to one group and measure each step under a fresh backlog."""
    tag = uuid.uuid4().hex[:8]
    settings = isolated_settings(
        base, namespace=f"scale{tag}", batch_size=config.batch_size, queue_size=config.requests + config.partitions
    )
    partitions = (config.partitions, *settings.class_partitions[1:])
    settings = settings.model_copy(update={"model": config.model, "class_partitions": partitions})
    asyncio.run(ensure_topics(settings))
    log_dir = Path(tempfile.mkdtemp(prefix="brigade-scaleout-"))
    result = ScaleoutResult(config=config)
    with worker_pool(settings) as workers:
        for n in sorted(config.consumers):
            while len(workers) < n:
                svc = worker_service(settings, name=f"worker-{len(workers)}", log_dir=log_dir)
                workers.append(svc.start(wait=False))
            for svc in workers:
                svc.wait_port(timeout_s=300)
            owned = wait_balanced(workers, partitions=config.partitions)
            run = asyncio.run(_timed_backlog(settings, config, consumers=n, owned=owned, tag=f"{tag}n{n}"))
            result.runs.append(run)
            if on_run is not None:
                on_run(run)
    return result


async def _timed_backlog(
    settings: Settings, config: ScaleoutConfig, *, consumers: int, owned: list[int], tag: str
) -> ScaleoutRun:
    redis = aioredis.from_url(settings.redis_url, decode_responses=True)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        warm = make_jobs(config.partitions, prompt_words=config.prompt_words, new_tokens=2, tag=f"{tag}w")
        await _publish_round_robin(producer, settings, warm, partitions=config.partitions)
        await await_finals(redis, settings, warm, timeout_s=300)
        jobs = make_jobs(config.requests, prompt_words=config.prompt_words, new_tokens=config.new_tokens, tag=tag)
        t0 = time.perf_counter()
        sender = asyncio.create_task(_publish_round_robin(producer, settings, jobs, partitions=config.partitions))
        tokens = await await_finals(redis, settings, jobs, timeout_s=3600)
        elapsed = time.perf_counter() - t0
        await sender
    finally:
        await producer.stop()
        await redis.aclose()
    return ScaleoutRun(
        consumers=consumers, partitions_owned=tuple(owned), requests=config.requests, tokens=tokens, seconds=elapsed
    )


async def _publish_round_robin(
    producer: AIOKafkaProducer, settings: Settings, jobs: list[Job], *, partitions: int
) -> None:
    topic = settings.names.request_topic("small")
    futures = [
        await producer.send(topic, json.dumps(j.body).encode(), key=j.session_id.encode(), partition=i % partitions)
        for i, j in enumerate(jobs)
    ]
    await asyncio.gather(*futures)


def run_cold_starts(
    base: Settings, config: ColdStartConfig, *, on_start: Callable[[str, float], None] | None = None
) -> ColdStartResult:
    """Median of ``repeats`` starts per model with the cache warm, plus one start on an empty cache when
    ``fresh_cache`` (that one generates the built-in model; without it the model is written in-process, untimed,
    which spares a quick run a whole worker start)."""
    result = ColdStartResult(config=config)
    settings = base.model_copy(update={"worker_class": "small", "namespace": f"cold{uuid.uuid4().hex[:8]}"})
    for model in config.models:
        cache = Path(tempfile.mkdtemp(prefix="brigade-coldstart-cache-"))
        if config.fresh_cache:
            result.fresh_cache_s[model] = cold_start_s(settings, model=model, cache_dir=cache)
        else:
            resolve_model(model, cache_dir=cache)
        times: list[float] = []
        for _ in range(config.repeats):
            times.append(cold_start_s(settings, model=model, cache_dir=cache))
            if on_start is not None:
                on_start(model, times[-1])
        result.warm_cache_s[model] = times
    return result


def scaleout_json(result: ScaleoutResult) -> dict[str, Any]:
    runs = [{**asdict(r), "tokens_per_s": r.tokens_per_s, "requests_per_s": r.requests_per_s} for r in result.runs]
    return {"config": asdict(result.config), "runs": runs, "ratios": {str(k): v for k, v in result.ratios().items()}}


def cold_start_json(result: ColdStartResult) -> dict[str, Any]:
    return {
        "config": asdict(result.config),
        "warm_cache_s": result.warm_cache_s,
        "median_s": result.medians(),
        "fresh_cache_s": result.fresh_cache_s,
    }


def scaleout_lines(result: ScaleoutResult) -> list[str]:
    """One line per run: ratio first, then the absolute figures it is made of."""
    cfg, ratios = result.config, result.ratios()
    lines = []
    for r in result.runs:
        lines.append(
            f"scale-out on {cfg.model}, {r.consumers} consumer(s) (partitions {list(r.partitions_owned)}): "
            f"[bold]{ratios[r.consumers]:.2f}×[/] of {result.runs[0].consumers} — {r.tokens_per_s:.0f} tokens/s, "
            f"{r.requests_per_s:.1f} requests/s ({r.requests} requests × {cfg.new_tokens} tokens in {r.seconds:.2f} s)"
        )
    return lines


def cold_start_lines(result: ColdStartResult) -> list[str]:
    lines = []
    for model, median in result.medians().items():
        each = ", ".join(f"{t:.2f}" for t in result.warm_cache_s[model])
        line = f"cold start of brigade worker on {model}, process start → /readyz 200: [bold]median {median:.2f} s[/]"
        line += f" (model cache warm; {each} s)"
        if model in result.fresh_cache_s:
            line += f"; empty cache (model generated first): {result.fresh_cache_s[model]:.2f} s"
        lines.append(line)
    return lines
