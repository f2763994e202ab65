"""Queue hop latency: time to first token through the whole path minus the engine's own prefill.

The ingress and the worker run as their own processes (``brigade ingress``, ``brigade worker``), as in
production; the client runs here. The whole path is HTTP submit → ingress → Kafka ack → worker fetch →
(batch window, static batching only) → prefill → first token event written to Redis. The clock starts at
the client's wall-clock time just before the POST and stops at the first event's stream entry id, which
is the redis-server's wall-clock time of the XADD in milliseconds (same machine, same clock): the event became readable
then, whatever the client was doing, and no reader per request loads the process under test. The
engine's prefill for the same prompt (first ``step()`` of a batch of one) is measured
in-process beforehand and subtracted per request, which leaves the hop: everything brigade adds.

Load: a burst first measures the run's capacity (requests/s through the whole path); then an open-loop
Poisson arrival process at half that rate, bounded in count and in time, gives the latency sample.
The default model is ``builtin:tiny`` so that the hop, not the model, dominates.
"""

from __future__ import annotations

import asyncio
import math
import random
import statistics
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import aiohttp
import redis.asyncio as aioredis

from brigade import eventloop
from brigade.bench.engine_loop import bench_prompt
from brigade.bench.pipeline import Job, await_finals, isolated_settings, make_jobs
from brigade.bench.replicas import process_fleet
from consumer.engine.interface import GenerationInput, InferenceEngine
from producer.topics import ensure_topics
from schemas.events import DoneEvent, parse_event
from schemas.requests import SamplingParams
from schemas.settings import Settings

LATENCY_MODEL = "builtin:tiny"


# --- pure helpers -------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0–100) with linear interpolation between order statistics (numpy's default)."""
    if not values:
        raise ValueError("percentile of an empty sample")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be within [0, 100], got {q}")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """n, mean, min, p50, p90, p99 and max of a sample (empty sample: just n=0)."""
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "mean": statistics.fmean(values),
        "min": min(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values),
    }


def arrival_schedule(rate_per_s: float, *, max_count: int, max_seconds: float, seed: int = 0) -> list[float]:
    """Offsets (seconds from the start) of an open-loop Poisson arrival process, bounded in count and time."""
    if rate_per_s <= 0:
        raise ValueError(f"rate must be positive, got {rate_per_s}")
    if max_count < 0 or max_seconds < 0:
        raise ValueError("max_count and max_seconds must be >= 0")
    rng = random.Random(seed)
    out: list[float] = []
    t = 0.0
    while len(out) < max_count:
        t += rng.expovariate(rate_per_s)
        if t > max_seconds:
            break
        out.append(t)
    return out


def hop_latencies(ttft_s: Mapping[str, float], prefill_s: Mapping[str, float]) -> list[float]:
    """Per request: end-to-end time to first token minus the engine's prefill for the same request.

    Requests without a prefill figure are left out (a KeyError would hide the rest of the sample).
    """
    return [t - prefill_s[rid] for rid, t in ttft_s.items() if rid in prefill_s]


STAGES = (
    ("ingress: POST → Kafka record", "published_at_ms"),
    ("Kafka: record → worker queue", "fetched_at_ms"),
    ("worker queue → scheduled", "scheduled_at_ms"),
    ("scheduled → first token (admit, join, prefill)", "first_token_at_ms"),
    ("first token → in Redis (write)", None),
)


def stage_times(sent_ms: float, done: DoneEvent, first_event_ms: float) -> dict[str, float] | None:
    """Milliseconds spent in each stage of one request's time to first token, from its ``done`` event's stage
    times; None when the event lacks them (an older worker). The stages add up to the TTFT."""
    marks = [sent_ms]
    for _, attr in STAGES[:-1]:
        value = getattr(done, attr)
        if value is None:
            return None
        marks.append(float(value))
    marks.append(first_event_ms)
    return {name: b - a for (name, _), a, b in zip(STAGES, marks[:-1], marks[1:], strict=True)}


# --- measurement ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LatencyConfig:
    model: str = LATENCY_MODEL
    capacity_requests: int = 64  # burst that measures capacity
    max_arrivals: int = 300  # bounds of the open-loop phase
    max_seconds: float = 30.0
    load: float = 0.5  # fraction of the measured capacity
    rate: float | None = None  # offered requests/s instead (runs of two builds then compare at one load)
    prompt_words: int = 24
    new_tokens: int = 4
    batch_size: int = 32
    # Real Kafka answers a fetch as soon as records arrive; the dev broker (Tansu) holds it for the whole
    # max wait, so the worker's default (50 ms) would measure Tansu's polling, not the hop.
    fetch_max_wait_ms: int = 5
    # The hop brigade adds when it is asked for low latency: continuous batching starts a request at once
    # (static batching adds up to BRIGADE_MAX_BATCH_WAIT_MS of batch window on top).
    batching: str = "continuous"
    # The worker shares two cores with the ingress, the broker, Redis and this client: spinning ORT threads
    # took the CPU the others needed (TTFT p99 50–86 ms with it, 27–31 ms without, at 120 requests/s).
    ort_allow_spinning: bool = False

    @classmethod
    def quick(cls) -> LatencyConfig:
        return cls(capacity_requests=32, max_arrivals=80, max_seconds=8.0, prompt_words=16)

    def offered(self, capacity_rps: float) -> float:
        """Requests/s of the open-loop phase: ``rate`` if set, else ``load`` of the measured capacity."""
        return self.rate if self.rate is not None else capacity_rps * self.load


@dataclass
class LatencyResult:
    model: str
    capacity_rps: float
    offered_rps: float
    arrivals: int
    completed: int
    seconds: float
    max_batch_wait_ms: float
    batching: str
    fetch_max_wait_ms: int
    kafka_linger_ms: int
    ort_allow_spinning: bool
    event_loop: str  # the ingress's and the worker's, e.g. "ingress uvloop, worker asyncio" (BRIGADE_EVENT_LOOP)
    ttft_ms: dict[str, float] = field(default_factory=dict)
    prefill_ms: dict[str, float] = field(default_factory=dict)
    hop_ms: dict[str, float] = field(default_factory=dict)
    hop_samples_ms: list[float] = field(default_factory=list)
    stages_ms: dict[str, dict[str, float]] = field(default_factory=dict)  # stage -> summary; see ``stage_times``


def measure_prefill(engine: InferenceEngine, prompts: Sequence[str], *, repeats: int = 3) -> dict[str, float]:
    """Seconds of the first ``step()`` (prefill and first token) of a batch of one, median of ``repeats``."""
    sampling = SamplingParams(temperature=0.0, ignore_eos=True)
    out: dict[str, float] = {}
    for prompt in dict.fromkeys(prompts):
        ids = engine.encode(prompt)
        runs: list[float] = []
        for _ in range(repeats + 1):  # the first, untimed, pays for the shape
            run = engine.start([GenerationInput(request_id="p", prompt_ids=ids, max_new_tokens=1, sampling=sampling)])
            t0 = time.perf_counter()
            run.step()
            runs.append(time.perf_counter() - t0)
        out[prompt] = statistics.median(runs[1:])
    return out


async def _submit(http: aiohttp.ClientSession, job: Job) -> float:
    """POST one request; return the wall-clock time (seconds) just before it was sent.

    aiohttp, not httpx: the client shares two cores with the fleet under test, and httpx spent about three
    times aiohttp's CPU per request (see ``loadgen``), time the ingress and the worker then waited for.
    """
    sent = time.time()
    async with http.post("/v1/requests", json=job.body, raise_for_status=True) as resp:
        await resp.read()
    return sent


async def first_events_and_finals(
    redis: aioredis.Redis, settings: Settings, jobs: Sequence[Job]
) -> tuple[dict[str, float], dict[str, DoneEvent]]:
    """Each request's first event time, read from its stream entry id (the server's clock, in ms), and its
    ``done`` event (for the stage times).

    Reading the ids after the run, rather than blocking a reader per request while it runs, keeps
    the client's own work off the event loop that the ingress and worker under test share with it;
    the bench's redis-server runs on this machine, so its clock is the client's clock.
    """
    first: dict[str, float] = {}
    finals: dict[str, DoneEvent] = {}
    for job in jobs:
        entries = cast(list[tuple[str, dict[str, str]]], await redis.xrange(settings.names.stream_key(job.session_id)))
        for entry_id, fields in entries:
            if fields.get("request_id") != job.request_id:
                continue
            first.setdefault(job.request_id, float(entry_id.split("-")[0]))
            event = parse_event(fields)
            if isinstance(event, DoneEvent):
                finals[job.request_id] = event
    return first, finals


async def run_latency(
    base: Settings,
    config: LatencyConfig,
    *,
    prefill_s: Mapping[str, float],
    on_capacity: Callable[[float, int], None] | None = None,
    on_done: Callable[[], None] | None = None,
) -> LatencyResult:
    """Capacity burst, then open-loop arrivals at ``config.offered(capacity)``; hop = TTFT − prefill per request."""
    tag = uuid.uuid4().hex[:8]
    settings = isolated_settings(
        base,
        namespace=f"lat{tag}",
        batch_size=config.batch_size,
        queue_size=config.capacity_requests + config.max_arrivals + 1,
    ).model_copy(
        update={
            "fetch_max_wait_ms": config.fetch_max_wait_ms,
            "batching": config.batching,
            "ort_allow_spinning": config.ort_allow_spinning,
        }
    )
    await ensure_topics(settings)
    redis = aioredis.from_url(settings.redis_url, decode_responses=True)
    kw = {"prompt_words": config.prompt_words, "new_tokens": config.new_tokens}
    try:
        with process_fleet(settings, cost_class="small") as url:
            async with aiohttp.ClientSession(url, timeout=aiohttp.ClientTimeout(total=60)) as http:
                warm = make_jobs(3, tag=f"{tag}w", **kw)  # group join, connections, first shapes
                for job in warm:
                    await _submit(http, job)
                    await await_finals(redis, settings, [job], timeout_s=120)

                burst = make_jobs(config.capacity_requests, tag=f"{tag}c", **kw)
                t0 = time.perf_counter()
                await asyncio.gather(*(_submit(http, j) for j in burst))
                await await_finals(redis, settings, burst, timeout_s=600)
                capacity = len(burst) / (time.perf_counter() - t0)

                rate = config.offered(capacity)
                schedule = arrival_schedule(rate, max_count=config.max_arrivals, max_seconds=config.max_seconds, seed=6)
                if on_capacity is not None:
                    on_capacity(capacity, len(schedule))
                jobs = make_jobs(len(schedule), tag=f"{tag}o", **kw)
                sent: dict[str, float] = {}

                async def timed(job: Job) -> None:
                    sent[job.request_id] = await _submit(http, job)
                    if on_done is not None:
                        on_done()

                tasks: list[asyncio.Task[None]] = []
                start = time.perf_counter()
                for offset, job in zip(schedule, jobs, strict=True):
                    delay = start + offset - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)  # the open-loop arrival schedule itself
                    tasks.append(asyncio.create_task(timed(job)))
                await asyncio.gather(*tasks)
                await await_finals(redis, settings, jobs, timeout_s=600)  # every request also ran to its final
                elapsed = time.perf_counter() - start
                first_ms, finals = await first_events_and_finals(redis, settings, jobs)
    finally:
        await redis.aclose()

    ttft = {rid: (first_ms[rid] - sent[rid] * 1000) / 1000 for rid in sent if rid in first_ms}
    prompts = {j.request_id: str(j.body["prompt"]) for j in jobs}
    per_request_prefill = {rid: prefill_s[p] for rid, p in prompts.items() if p in prefill_s}
    hops = hop_latencies(ttft, per_request_prefill)

    def ms(values: Sequence[float]) -> dict[str, float]:
        return {k: (v * 1000 if k != "n" else v) for k, v in summarize(values).items()}

    split = [
        t
        for rid in sent
        if rid in first_ms
        and rid in finals
        and (t := stage_times(sent[rid] * 1000, finals[rid], first_ms[rid])) is not None
    ]
    stages = {name: summarize([t[name] for t in split]) for name, _ in STAGES} if split else {}

    return LatencyResult(
        model=settings.model,
        capacity_rps=capacity,
        offered_rps=rate,
        arrivals=len(schedule),
        completed=len(ttft),
        seconds=elapsed,
        max_batch_wait_ms=settings.max_batch_wait_ms,
        batching=settings.batching,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        kafka_linger_ms=settings.kafka_linger_ms,
        ort_allow_spinning=settings.ort_allow_spinning,
        event_loop=eventloop.describe(settings.event_loop),
        ttft_ms=ms(list(ttft.values())),
        prefill_ms=ms(list(per_request_prefill.values())),
        hop_ms=ms(hops),
        hop_samples_ms=[h * 1000 for h in hops],
        stages_ms=stages,
    )


def latency_prompts(config: LatencyConfig) -> list[str]:
    """Every prompt the run may send (``make_jobs`` cycles through these), for ``measure_prefill``."""
    n = max(config.capacity_requests, config.max_arrivals, 3)
    return list(dict.fromkeys(bench_prompt(i, words=config.prompt_words) for i in range(n)))
