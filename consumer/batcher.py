"""The pure scheduler: which queued requests go into the next batch, and when.

No Kafka, Redis or ONNX in here, and no clock either: the caller passes ``now`` (monotonic seconds)
and the set of sessions whose requests are still running, and gets a plan back. That keeps every
scheduling rule testable with factories and a fake clock (STYLE practice 1-3).

Rules:
- a batch goes out when ``max_batch_size`` requests are eligible, or when the oldest eligible one has
  waited ``max_batch_wait_s``;
- never two requests of one session in a batch, and never a request of a session that is still
  running: a session's turns are ordered on its partition and each turn may depend on the previous
  answer, so a later turn waits for the next batch and queue order is preserved;
- continuous batching: while a batch runs, ``take`` fills its free slots at once (the running step is
  the wait), with the same session rules;
- ``priority`` (vLLM's convention: lower goes first, ties in queue order) picks among the sessions' next
  turns when more are eligible than fit; it orders this worker's local queue (BRIGADE_QUEUE_SIZE), not the
  partition's backlog in Kafka, and never lets a session's later turn overtake its earlier one;
- the queue is bounded; ``full`` tells the fetcher to pause its partitions, and ``holds_full_batch`` that
  it may rest (a whole next batch is already queued).
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Hashable, Iterable
from dataclasses import dataclass, field

from schemas.requests import InferenceRequest
from schemas.tracing import TraceContext

Partition = tuple[str, int]  # (topic, partition); aiokafka's TopicPartition is one of these


class QueueFull(RuntimeError):
    """``add`` was called while the queue was at its bound: the fetcher should have paused."""


@dataclass(frozen=True, slots=True)
class PendingItem:
    """One fetched request waiting to be scheduled."""

    request: InferenceRequest  # the validated request from the topic
    tp: Partition  # where it came from, so its offset can be marked complete
    offset: int  # its offset in ``tp``; committed once it and everything below it are complete
    enqueued_at: float  # monotonic seconds when it entered the local queue (queue time, batch wait)
    trace: TraceContext | None = None  # the worker's span for this request (W3C), for its logs and final event
    published_at_ms: int | None = None  # the Kafka record's timestamp (epoch ms), for the final event's stage times
    fetched_at_ms: int | None = None  # wall clock (epoch ms) when it entered the queue

    @property
    def session_id(self) -> str:
        return self.request.session_id

    @property
    def traceparent(self) -> str | None:
        return self.trace.traceparent if self.trace is not None else None


@dataclass(frozen=True, slots=True)
class Batch:
    """Requests to start together on the engine, in priority order, then queue order."""

    items: tuple[PendingItem, ...]  # at most max_batch_size, at most one per session
    planned_at: float  # the ``now`` the plan was made with; queue time ends here
    reason: str  # "full" (max_batch_size reached), "waited" (oldest hit max_batch_wait) or "joined" (``take``)

    @property
    def size(self) -> int:
        return len(self.items)


@dataclass(frozen=True, slots=True)
class StepPlan:
    """What the loop should do now: run ``batch`` if there is one, else sleep until ``wake_at``."""

    batch: Batch | None  # the batch to start now, already removed from the queue
    wake_at: float | None  # when waiting items become due; None: nothing is due until something arrives or finishes
    waiting: int = 0  # requests left in the queue after this plan (the requests-waiting gauge)

    @classmethod
    def make_empty(cls, *, waiting: int = 0) -> StepPlan:
        return cls(batch=None, wake_at=None, waiting=waiting)


@dataclass(slots=True)
class Batcher:
    """A bounded queue of pending requests and the rules that turn it into batches."""

    max_batch_size: int
    max_batch_wait_s: float
    capacity: int
    _queue: list[PendingItem] = field(default_factory=list, init=False)
    _prioritized: int = field(default=0, init=False)  # queued items with a priority other than 0

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.capacity < 1 or self.max_batch_wait_s < 0:
            raise ValueError("max_batch_size and capacity must be >= 1 and max_batch_wait_s >= 0")

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def full(self) -> bool:
        """True when no more items fit: the fetcher pauses its partitions."""
        return len(self._queue) >= self.capacity

    @property
    def free(self) -> int:
        """How many more items fit; the fetcher asks Kafka for no more records than this."""
        return max(0, self.capacity - len(self._queue))

    @property
    def holds_full_batch(self) -> bool:
        """A whole batch of distinct sessions is queued: the fetcher may rest until some of it runs.

        Records fetched now could only wait behind it; left in Kafka they cost no fetch polling (the
        dev broker burns CPU on every empty poll, beside the model) and a consumer added by a rebalance
        can take them.
        """
        if len(self._queue) < self.max_batch_size:
            return False
        return len({item.session_id for item in self._queue}) >= self.max_batch_size

    def add(self, item: PendingItem) -> None:
        if self.full:
            raise QueueFull(f"queue holds {len(self._queue)} of {self.capacity}")
        self._queue.append(item)
        self._prioritized += item.request.priority != 0

    def plan(self, now: float, *, running_sessions: Collection[str] = frozenset()) -> StepPlan:
        """Pick the next batch, or say when to look again. A returned batch leaves the queue."""
        eligible = self._eligible(running_sessions)
        if not eligible:
            return StepPlan.make_empty(waiting=len(self._queue))
        oldest = min(item.enqueued_at for item in eligible)
        due_at = oldest + self.max_batch_wait_s
        if len(eligible) < self.max_batch_size and now < due_at:
            return StepPlan(batch=None, wake_at=due_at, waiting=len(self._queue))
        reason = "full" if len(eligible) >= self.max_batch_size else "waited"
        batch = Batch(items=tuple(self._remove(eligible)), planned_at=now, reason=reason)
        return StepPlan(batch=batch, wake_at=None, waiting=len(self._queue))

    def take(
        self, now: float, *, slots: int, running_sessions: Collection[str] = frozenset(), min_join: int = 1
    ) -> Batch | None:
        """Up to ``slots`` eligible requests to join a running batch now, or None.

        With ``min_join`` > 1 the joiners come in groups: nothing joins until ``min_join`` slots are free,
        unless fewer than that are eligible at all (then those join as soon as they fit). Every join is a
        prefill and a cache merge of its own, so on a compute-bound device fewer, larger joins cost less.
        """
        eligible = self._eligible(running_sessions)
        want = min(min_join, len(eligible), self.max_batch_size)
        if not eligible or slots < want:
            return None
        return Batch(items=tuple(self._remove(eligible[:slots])), planned_at=now, reason="joined")

    def requeue(self, items: Iterable[PendingItem]) -> None:
        """Put taken requests back at the head of the queue, in their order (a batch that did not fit).

        The bound is not checked: these were already counted when they were fetched.
        """
        self._set_queue([*items, *self._queue])

    def drop_partitions(self, tps: Iterable[Hashable]) -> list[PendingItem]:
        """Remove queued items of revoked partitions; Kafka redelivers them to the new owner."""
        gone = set(tps)
        dropped = [item for item in self._queue if item.tp in gone]
        self._set_queue([item for item in self._queue if item.tp not in gone])
        return dropped

    def drain(self) -> list[PendingItem]:
        """Take every queued item out (shutdown): they stay uncommitted and are redelivered."""
        dropped = self._queue
        self._set_queue([])
        return dropped

    def _remove(self, chosen: list[PendingItem]) -> list[PendingItem]:
        ids = {id(item) for item in chosen}
        self._queue = [item for item in self._queue if id(item) not in ids]
        self._prioritized -= sum(item.request.priority != 0 for item in chosen)
        return chosen

    def _set_queue(self, queue: list[PendingItem]) -> None:
        """Replace the queue (requeue, revocation, shutdown: not per batch), recounting its priorities."""
        self._queue = queue
        self._prioritized = sum(item.request.priority != 0 for item in queue)

    def _eligible(self, running_sessions: Collection[str]) -> list[PendingItem]:
        """The next turn of each session not running, best priority first (ties in queue order), up to the
        batch size.

        A session blocked once stays blocked for the rest of the scan, so its later turns never
        overtake an earlier one. While every queued priority is 0 the scan stops at the batch size.
        """
        limit = self.max_batch_size
        blocked = set(running_sessions)
        heads: list[PendingItem] = []
        for item in self._queue:
            if item.session_id in blocked:
                continue
            blocked.add(item.session_id)
            heads.append(item)
            if len(heads) == limit and not self._prioritized:
                break
        if not self._prioritized:
            return heads
        return heapq.nsmallest(limit, heads, key=lambda item: item.request.priority)  # stable, as sorted() is
