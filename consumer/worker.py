"""One worker's lifecycle: STARTING → RUNNING → DRAINING → STOPPED, and the loop in between.

STARTING loads and warms the model in the executor thread, then reports ready, and only then
joins the consumer group, so a cold pod never holds partitions. RUNNING runs two tasks under one
supervisor (STYLE practice 5): the fetch task (Kafka → bounded queue) and the work task
(plan → engine → Redis → offsets complete). The supervisor waits FIRST_COMPLETED on the stop
event and both tasks; a task that dies takes the worker down loudly, with its own traceback.

DRAINING, in dependency order: stop fetching and pause every partition (no new work), let the
running batch finish and write its finals (so its offsets become committable), drop what is still
queued (uncommitted, so Kafka redelivers it), commit the completed prefix, leave the group (the
rebalance hands our partitions over now rather than after a session timeout), close the engine.
``drain_timeout_s`` bounds the wait for the running batch; past it the batch is abandoned and its
requests are regenerated elsewhere with a higher attempt.

``idle_s`` is the run-until-idle mode for tests (like arq's burst mode): the worker stops by itself
once it holds partitions, has nothing queued or in flight, and nothing arrived for ``idle_s``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from redis.exceptions import AuthenticationError

from brigade.kafka_config import check_kafka
from brigade.redis_config import RedisClient, RedisCredentialsRejected, open_redis
from consumer.batcher import Batch, Batcher, PendingItem
from consumer.dlq import DeadLetters, Rejected, parse_record
from consumer.engine.interface import InferenceEngine
from consumer.engine.kv_cache import SessionKvCache
from consumer.execute import BatchExecutor, Joins
from consumer.fetch import Fetcher, wait_any
from consumer.health import HealthServer
from consumer.metrics import WorkerMetrics
from consumer.offsets import OffsetTracker
from consumer.request_log import request_fields, worker_trace
from consumer.retry import NO_CLIENT_RETRY, Backoff, kafka_retryable, redis_retryable
from consumer.sink import RedisSink
from schemas.settings import Settings

log = logging.getLogger(__name__)

EngineFactory = Callable[[Settings], InferenceEngine]

FETCH_STOP_S = 1.0  # how long the drain waits for the fetch task to notice the stop before cancelling it
MAX_FIELDS_CHARS = 1000  # the offending fields quoted in an unreadable request's error event


class State(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


def default_engine_factory(settings: Settings) -> InferenceEngine:
    """The ONNX Runtime engine for the worker's class's model (imported lazily: it pulls in onnxruntime)."""
    from consumer.engine.onnx_engine import load_engine

    engine: InferenceEngine = load_engine(settings)
    return engine


class Worker:
    """A consumer of one cost class's topic. ``run`` once; it returns after a clean drain."""

    def __init__(
        self,
        settings: Settings,
        *,
        engine_factory: EngineFactory = default_engine_factory,
        ready: Callable[[int], None] | None = None,
        idle_s: float | None = None,
    ) -> None:
        self.settings = settings
        self.state = State.STARTING
        self.metrics = WorkerMetrics(cost_class=settings.worker_class)
        self.metrics.set_batch_limit(settings.max_batch_size)
        # Continuous batching needs no window: whoever arrives after a batch starts joins it at the next step.
        window_s = settings.max_batch_wait_ms / 1000 if settings.batching == "static" else 0.0
        self.batcher = Batcher(
            max_batch_size=settings.max_batch_size, max_batch_wait_s=window_s, capacity=settings.queue_size
        )
        self.offsets: OffsetTracker[TopicPartition] = OffsetTracker()
        self.health = HealthServer(registry=self.metrics.registry, port=settings.metrics_port)
        self.fetcher: Fetcher | None = None
        self.batches: list[Batch] = []  # the last few batches run (tests, debugging); bounded below
        self._engine_factory = engine_factory
        self._ready = ready
        self._idle_s = idle_s
        self._arrived = asyncio.Event()  # an item entered the queue
        self._space = asyncio.Event()  # items left the queue: a paused fetcher may resume
        self._draining = asyncio.Event()
        self._last_work = time.monotonic()
        self._dlq: DeadLetters | None = None
        self._started = False

    async def run(self, *, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set (or, in run-until-idle mode, until idle), then drain."""
        if self._started:
            raise RuntimeError("Worker.run may be called once")
        self._started = True
        loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="brigade-engine")
        intake_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="brigade-intake")
        redis: RedisClient | None = None
        engine: InferenceEngine | None = None
        try:
            await self.health.start()
            redis = await open_redis(self.settings, retry=NO_CLIENT_RETRY)
            await check_kafka(self.settings)
            engine = await loop.run_in_executor(executor, self._load)
            self._watch_kv_cache(engine)
            self.health.ready = True
            log.info("model ready; joining the group", extra={"port": self.health.port, "model": engine.model_name})
            if self._ready is not None:
                self._ready(self.health.port)
            runner = BatchExecutor(
                settings=self.settings,
                engine=engine,
                sink=RedisSink(
                    redis,
                    names=self.settings.names,
                    ttl_s=self.settings.stream_ttl_s,
                    retry=self._backoff("redis", redis_retryable),
                ),
                metrics=self.metrics,
                executor=executor,
                intake_executor=intake_executor,
            )
            await self._serve(runner, stop)
        except AuthenticationError as exc:  # on a reconnect: not retried (consumer/retry.py)
            raise RedisCredentialsRejected.refused(self.settings.redis_url, exc, running=True) from None
        finally:
            self.health.ready = False
            if engine is not None:
                await loop.run_in_executor(executor, engine.close)
            executor.shutdown(wait=False)
            intake_executor.shutdown(wait=False)
            if redis is not None:
                await redis.aclose()
            await self.health.stop()
            self.state = State.STOPPED
            log.info("[shutdown] stopped")

    def _backoff(self, dependency: str, retryable: Callable[[BaseException], bool]) -> Backoff:
        """Retries for one dependency's calls; readiness is off while they fail (``consumer/retry.py``)."""
        deadline_s = self.settings.dependency_retry_s
        return Backoff(dependency, retryable=retryable, deadline_s=deadline_s, on_change=self.health.dependency)

    def _watch_kv_cache(self, engine: InferenceEngine) -> None:
        """``brigade_kv_cache_usage_ratio`` for an engine that keeps KV caches (the ONNX engine, with a budget)."""
        kv = getattr(engine, "kv", None)
        if isinstance(kv, SessionKvCache) and kv.max_bytes:
            self.metrics.watch_kv_cache(lambda: kv.nbytes / kv.max_bytes)

    def _load(self) -> InferenceEngine:
        """Executor thread: load and warm the model at the largest batch we will run."""
        started = time.monotonic()
        engine = self._engine_factory(self.settings)
        engine.warmup(batch_size=self.settings.max_batch_size)
        log.info("model loaded and warmed", extra={"seconds": round(time.monotonic() - started, 3)})
        return engine

    async def _serve(self, runner: BatchExecutor, stop: asyncio.Event) -> None:
        kafka = self._backoff("kafka", kafka_retryable)  # one, so readiness sees every Kafka call's state
        self._dlq = DeadLetters(self.settings, retry=kafka)
        await self._dlq.start()
        fetcher = self.fetcher = Fetcher(
            self.settings,
            batcher=self.batcher,
            offsets=self.offsets,
            metrics=self.metrics,
            admit=lambda record: self._admit(record, runner),
            space=self._space,
            retry=kafka,
        )
        self.health.partitions = lambda: len(fetcher.assignment())
        fetch_stop = asyncio.Event()
        try:
            await fetcher.start()
            self.state = State.RUNNING
            await self._supervise(fetcher, runner, stop, fetch_stop)
        finally:
            fetch_stop.set()
            await self._dlq.stop()

    async def _supervise(
        self, fetcher: Fetcher, runner: BatchExecutor, stop: asyncio.Event, fetch_stop: asyncio.Event
    ) -> None:
        fetch_task = asyncio.create_task(fetcher.run(fetch_stop), name="brigade-fetch")
        work_task = asyncio.create_task(self._work(runner), name="brigade-work")
        stop_task = asyncio.create_task(stop.wait(), name="brigade-stop")
        tasks: set[asyncio.Task[Any]] = {fetch_task, work_task, stop_task}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in (fetch_task, work_task):
                if task in done and task.exception() is not None:
                    log.error("[shutdown] %s failed; stopping the worker", task.get_name())
                    raise task.exception()  # type: ignore[misc]
            reason = "stop requested" if stop_task in done else "idle" if work_task in done else "fetch ended"
            await self._drain(fetcher, fetch_task, work_task, fetch_stop, reason)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await fetcher.close()

    async def _drain(
        self,
        fetcher: Fetcher,
        fetch_task: asyncio.Task[None],
        work_task: asyncio.Task[None],
        fetch_stop: asyncio.Event,
        reason: str,
    ) -> None:
        self.state = State.DRAINING
        self.health.ready = False
        log.info("[shutdown] draining", extra={"reason": reason, "queued": len(self.batcher)})
        self._draining.set()  # first: no new batch starts from here on
        fetch_stop.set()
        await asyncio.wait({fetch_task}, timeout=FETCH_STOP_S)
        if fetch_task.done():
            fetch_task.result()  # re-raises a fetch failure
        else:  # getmany blocks while a rebalance is in progress; what it held stays uncommitted
            fetch_task.cancel()
            await asyncio.gather(fetch_task, return_exceptions=True)
        fetcher.pause_all()
        try:
            await asyncio.wait_for(asyncio.shield(work_task), timeout=self.settings.drain_timeout_s)
        except TimeoutError:
            log.warning("[shutdown] running batch did not finish in drain_timeout_s; abandoning it")
        dropped = self.batcher.drain()
        log.info("[shutdown] committing and leaving the group", extra={"left_for_redelivery": len(dropped)})

    # --- the work loop ---

    async def _work(self, runner: BatchExecutor) -> None:
        """Plan → run → complete, until draining (or idle in run-until-idle mode)."""
        while not self._draining.is_set():
            self._arrived.clear()
            now = time.monotonic()
            plan = self.batcher.plan(now, running_sessions=runner.open_sessions)
            self.metrics.set_waiting(plan.waiting)
            if plan.batch is None:
                if self._idle():
                    log.info("[shutdown] idle: nothing queued, nothing arrived", extra={"idle_s": self._idle_s})
                    return
                await wait_any(self._arrived, self._draining, at_most=self._wait_for(plan.wake_at, now))
                continue
            self._started_batch(plan.batch)
            joins = Joins(self._join, self._arrived) if self.settings.batching == "continuous" else None
            try:
                await runner.run(plan.batch, done=self._complete, joins=joins, shrink=self._shrink)
            finally:
                self._last_work = time.monotonic()

    def _join(self, running: int, open_sessions: Collection[str]) -> Batch | None:
        """Continuous batching: queued requests for the running batch's free slots (none once draining).

        The batch limit is the batcher's, so an out-of-memory halving (``_shrink``) bounds joins too.
        """
        slots = self.batcher.max_batch_size - running
        if self._draining.is_set() or slots <= 0:
            return None
        batch = self.batcher.take(
            time.monotonic(), slots=slots, running_sessions=open_sessions, min_join=self.settings.min_join
        )
        if batch is not None:
            self._started_batch(batch)
            self.metrics.set_waiting(len(self.batcher))
        return batch

    def _shrink(self, items: Sequence[PendingItem], limit: int) -> None:
        """Out of memory: these requests go back to the head of the queue; batches hold at most ``limit``."""
        self.batcher.requeue(items)
        self.batcher.max_batch_size = limit
        self.metrics.set_batch_limit(limit)
        self._arrived.set()

    def _started_batch(self, batch: Batch) -> None:
        self._space.set()
        self.batches = [*self.batches[-99:], batch]

    def _complete(self, item: PendingItem) -> None:
        self.offsets.complete(TopicPartition(*item.tp), item.offset)
        fields = request_fields(item, cost_class=self.settings.worker_class)
        log.info("request finished", extra=fields | {"seconds": round(time.monotonic() - item.enqueued_at, 4)})

    def _wait_for(self, wake_at: float | None, now: float) -> float | None:
        """How long to wait for an arrival: until the oldest item is due, or until idle would be reached."""
        if wake_at is not None:
            return max(0.0, wake_at - now)
        if self._idle_s is None or self.fetcher is None:
            return None
        quiet_since = max(self.fetcher.last_activity, self._last_work)
        return max(0.01, quiet_since + self._idle_s - time.monotonic())

    def _idle(self) -> bool:
        if self._idle_s is None or self.fetcher is None or not self.fetcher.assignment():
            return False  # not yet in the group, or mid-rebalance: messages may still come
        if len(self.batcher) or self.offsets.in_flight() or self.offsets.to_commit():
            return False
        quiet_since = max(self.fetcher.last_activity, self._last_work)
        return time.monotonic() - quiet_since >= self._idle_s

    async def _admit(self, record: ConsumerRecord[bytes, bytes], runner: BatchExecutor) -> None:
        """Fetch task: parse one record into the queue, or dead-letter it (answering its caller, if it names
        one) and count it complete."""
        tp = TopicPartition(record.topic, record.partition)
        parsed = parse_record(record.value)
        if isinstance(parsed, Rejected):
            assert self._dlq is not None
            await self._dlq.send(
                value=record.value,
                key=record.key,
                rejected=parsed,
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
            )
            self.metrics.add_dlq()
            if parsed.addressed is not None:
                message = (
                    f"not a valid request, so not run ({parsed.fields[:MAX_FIELDS_CHARS]}); it was dead-lettered "
                    f"to {self.settings.names.dlq_topic}. Workers refuse fields and values they do not know: if a "
                    "newer ingress or client published it, upgrade the workers first"
                )
                await runner.answer_unreadable(parsed.addressed.session_id, parsed.addressed.request_id, message)
            self.offsets.complete(tp, record.offset)
            return
        trace = worker_trace(record.headers)
        self.batcher.add(
            PendingItem(
                request=parsed,
                tp=tp,
                offset=record.offset,
                enqueued_at=time.monotonic(),
                trace=trace,
                published_at_ms=record.timestamp if record.timestamp >= 0 else None,
                fetched_at_ms=time.time_ns() // 1_000_000,
            )
        )
        self._arrived.set()
