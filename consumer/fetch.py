"""The Kafka side: group membership, fetching into the bounded queue, pause/resume, commits, lag.

One ``AIOKafkaConsumer`` with manual commits. Records go to the worker's ``admit`` callback only for
partitions still assigned; commits come only from ``OffsetTracker.to_commit`` (the contiguous
completed prefix), so an offset is never committed before its request's final event is in Redis.

Why commit on assignment: a group with no committed offset on a partition makes KEDA report lag 1
(``latest``) or the whole log (``earliest``); committing the starting position makes lag real.
Why our own high watermark: the dev broker's ListOffsets is not trustworthy for lag, while each fetch
response carries the partition's high watermark, so lag = high watermark - committed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.protocol.group import LeaveGroupRequest

from brigade.kafka_config import kafka_client_options
from consumer.batcher import Batcher
from consumer.metrics import WorkerMetrics
from consumer.offsets import OffsetTracker
from consumer.retry import KAFKA_ATTEMPT_S, Backoff, call_with
from schemas.settings import Settings

log = logging.getLogger(__name__)


Admit = Callable[[ConsumerRecord[bytes, bytes]], Awaitable[None]]

FETCH_TIMEOUT_MS = 100  # how long one getmany may wait; also bounds how late a batched commit goes out
COMMIT_INTERVAL_S = 0.2  # commits are batched: at most one per interval from the fetch loop


class Fetcher:
    """Owns the consumer: call ``start``, run ``run`` as a task, then ``close`` (final commit, leave group)."""

    def __init__(
        self,
        settings: Settings,
        *,
        batcher: Batcher,
        offsets: OffsetTracker[TopicPartition],
        metrics: WorkerMetrics,
        admit: Admit,
        space: asyncio.Event,
        retry: Backoff | None = None,
    ) -> None:
        self._settings = settings
        self._batcher = batcher
        self._offsets = offsets
        self._metrics = metrics
        self._admit = admit
        self._space = space  # set by the worker whenever items leave the queue
        self._retry = retry  # commits: each attempt bounded by KAFKA_ATTEMPT_S, retried with backoff
        self._topic = settings.names.request_topic(settings.worker_class)
        self._consumer = AIOKafkaConsumer(
            **kafka_client_options(settings),
            group_id=settings.names.consumer_group(settings.worker_class),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_interval_ms=600_000,  # a long batch must not make us leave the group while paused
            session_timeout_ms=settings.kafka_session_timeout_ms,
            heartbeat_interval_ms=max(100, settings.kafka_session_timeout_ms // 3),  # Kafka's advice: a third
            fetch_max_wait_ms=settings.fetch_max_wait_ms,
        )
        self._highwater: dict[TopicPartition, int] = {}
        # What we own between an assignment and the next revocation. aiokafka's assignment() still
        # lists revoked partitions while a rebalance is in progress; this set does not.
        self._owned: set[TopicPartition] = set()
        self._commit_lock = asyncio.Lock()
        self._last_commit = 0.0
        self._started = False
        self.paused = False  # the queue hit its bound (and has not drained to half since)
        self._resting = False  # partitions paused, for either reason
        self.pause_count = 0  # how many times the queue filled up and partitions were paused (tests, logs)
        self.last_activity = time.monotonic()  # last record or assignment change, for run-until-idle
        self.assigned_once = asyncio.Event()  # the group gave us partitions at least once

    # --- lifecycle ---

    async def start(self) -> None:
        """Connect and subscribe; joining the group happens in the background from here."""
        if self._started:
            raise RuntimeError("Fetcher.start called twice")
        self._started = True
        await self._consumer.start()
        self._consumer.subscribe([self._topic], listener=_Listener(self))

    async def close(self) -> None:
        """Final commit of the completed prefix, then leave the group (stop() sends LeaveGroup)."""
        await self.commit()
        await self._leave_generation_zero()
        await self._consumer.stop()

    async def _leave_generation_zero(self) -> None:
        """Send LeaveGroup ourselves where the broker numbers the first generation 0.

        aiokafka only leaves for generation > 0, which real Kafka always gives; Tansu (the dev broker)
        starts at 0, and a silent exit there makes the group wait out the session timeout before it
        rebalances. Best effort through aiokafka's coordinator: nothing else exposes the request.
        """
        coordinator = getattr(self._consumer, "_coordinator", None)
        if coordinator is None or coordinator.generation != 0 or not coordinator.member_id:
            return
        try:
            await coordinator._send_req(LeaveGroupRequest(coordinator.group_id, coordinator.member_id))
        except (KafkaError, AttributeError) as exc:
            log.info("leaving a generation-0 group failed", extra={"error": repr(exc)})
        else:
            coordinator.reset_generation()
            log.info("left the group (generation 0)")

    def pause_all(self) -> None:
        """Stop fetching for every assigned partition (drain, or a full queue)."""
        assigned = self._consumer.assignment()
        if assigned:
            self._consumer.pause(*assigned)

    # --- the loop ---

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch until ``stop`` is set; pause while the queue is full or already holds a whole next batch."""
        while not stop.is_set():
            full = self._batcher.full or (self.paused and len(self._batcher) > self._resume_at())
            if full or self._batcher.holds_full_batch:
                self._pause(full=full)
                self._space.clear()
                await wait_any(self._space, stop, at_most=1.0)
                await self.maybe_commit()
                continue
            self._resume()
            records = await self._consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS, max_records=self._batcher.free)
            for tp, batch in records.items():
                for record in batch:
                    if tp not in self._owned:
                        break  # revoked while we held it: the new owner fetches it again
                    self.last_activity = time.monotonic()
                    self._offsets.fetched(tp, record.offset)
                    await self._admit(record)
            self._note_highwater()
            await self.maybe_commit()

    def _resume_at(self) -> int:
        """Resume when the queue is down to this length: half empty, so pause/resume does not flap."""
        cap = self._batcher.capacity
        return cap - max(1, cap // 2)

    def _pause(self, *, full: bool) -> None:
        """Pause every partition: ``full`` (the bound; logged and counted) or resting ahead of the engine."""
        if full and not self.paused:
            self.paused = True
            self.pause_count += 1
            log.info("queue full: pausing partitions", extra={"queued": len(self._batcher)})
        self.pause_all()  # also covers partitions assigned while paused
        self._resting = True

    def _resume(self) -> None:
        if self.paused:
            self.paused = False
            log.info("queue drained: resuming partitions", extra={"queued": len(self._batcher)})
        if self._resting:
            self._resting = False
            self._consumer.resume(*self._consumer.assignment())

    # --- commits and lag ---

    async def maybe_commit(self) -> None:
        if time.monotonic() - self._last_commit >= COMMIT_INTERVAL_S:
            await self.commit()

    async def commit(self, only: frozenset[TopicPartition] | None = None) -> None:
        """Commit every partition whose completed prefix moved; a commit lost to a rebalance is logged."""
        async with self._commit_lock:
            self._last_commit = time.monotonic()
            offsets = {tp: o for tp, o in self._offsets.to_commit().items() if only is None or tp in only}
            if not offsets:
                return
            try:
                await self._commit_with_retries(offsets)
            except KafkaError as exc:
                log.warning("commit failed (rebalance?); the new owner redelivers", extra={"error": repr(exc)})
                return
            except TimeoutError:
                log.warning("commit gave up: broker unreachable; a later commit carries these offsets")
                return
            self._offsets.committed(offsets)
            self._update_lag(offsets)

    async def _commit_with_retries(self, offsets: dict[TopicPartition, int]) -> None:
        """aiokafka retries a commit's retriable errors by itself, without end: each attempt gets a time limit,
        and the retries between attempts are logged and bounded (``consumer/retry.py``)."""

        async def attempt() -> None:
            async with asyncio.timeout(KAFKA_ATTEMPT_S):
                await self._consumer.commit(offsets)

        await call_with(self._retry, "commit", attempt)

    def highwater(self, tp: TopicPartition) -> int | None:
        """The last high watermark a fetch response reported for ``tp``."""
        return self._highwater.get(tp)

    def lag(self) -> dict[int, int]:
        """Partition → high watermark minus committed offset, for partitions with both known."""
        out: dict[int, int] = {}
        for tp, hw in self._highwater.items():
            committed = self._offsets.last_committed(tp)
            if committed is not None:
                out[tp.partition] = max(0, hw - committed)
        return out

    def assignment(self) -> frozenset[TopicPartition]:
        """Partitions owned right now: empty from a revocation until the next assignment."""
        return frozenset(self._owned)

    def _note_highwater(self) -> None:
        for tp in self._consumer.assignment():
            hw = self._consumer.highwater(tp)
            if hw is not None:
                self._highwater[tp] = hw
        self._update_lag(self._highwater)

    def _update_lag(self, tps: dict[TopicPartition, Any]) -> None:
        for tp in tps:
            hw, committed = self._highwater.get(tp), self._offsets.last_committed(tp)
            if hw is not None and committed is not None:
                self._metrics.set_lag(tp.partition, hw - committed)

    # --- rebalance callbacks (called by aiokafka's coordinator task) ---

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        self.last_activity = time.monotonic()
        self._owned = set(assigned)
        missing: list[TopicPartition] = []
        for tp in assigned:
            committed = await self._consumer.committed(tp)
            self._offsets.assign(tp, committed=committed)
            if committed is None:
                missing.append(tp)
        if missing:
            # With auto_offset_reset="earliest" and nothing committed, the position is the log start.
            # Asked for directly: position() waits on the coordinator task that is running this callback.
            start = await self._consumer.beginning_offsets(missing)
            try:
                await self._consumer.commit(start)
                self._offsets.committed(start)
            except KafkaError as exc:
                log.warning("initial commit failed", extra={"error": repr(exc)})
        if self._resting:
            self.pause_all()
        log.info("partitions assigned", extra={"partitions": sorted(tp.partition for tp in assigned)})
        if assigned:
            self.assigned_once.set()

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Drop queued-but-not-started work of these partitions and commit what is complete.

        Requests already running finish and write their finals; the new owner's redelivery of them
        is skipped (finished) or regenerated with a higher attempt, so nothing is lost or doubled.
        """
        self.last_activity = time.monotonic()
        self._owned -= revoked
        if not revoked:
            return
        dropped = self._batcher.drop_partitions(revoked)
        await self.commit(only=frozenset(revoked))
        self._offsets.revoke(revoked)
        for tp in revoked:
            self._highwater.pop(tp, None)
            self._metrics.forget_partition(tp.partition)
        self._space.set()
        log.info(
            "partitions revoked",
            extra={"partitions": sorted(tp.partition for tp in revoked), "dropped": len(dropped)},
        )


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, fetcher: Fetcher) -> None:
        self._fetcher = fetcher

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._fetcher.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._fetcher.on_assigned(set(assigned))


async def wait_any(*events: asyncio.Event, at_most: float | None) -> None:
    """Return when any event is set or ``at_most`` seconds pass (None: no limit). Never a sleep-as-sync."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=at_most, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
