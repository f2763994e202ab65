"""Which offset each partition may commit: the end of its contiguous completed prefix.

Requests of one partition finish out of order (batches mix sessions; a skipped or expired request
finishes at once), but Kafka keeps one committed offset per partition. Committing past a request
that has no final event yet would lose it on a crash, so the commit point is the lowest offset that
was fetched but is not complete (or one past the highest fetched, when all are). Offsets need not be
contiguous in the log (compaction, transaction markers): only fetched ones count.

Pure: the worker tells it what was fetched, completed and committed; it never talks to Kafka.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass(slots=True)
class _PartitionOffsets:
    pending: set[int] = field(default_factory=set)  # fetched, final event not yet written
    next_fetch: int | None = None  # one past the highest offset fetched
    committed: int | None = None  # what was last committed (or found committed) for this partition


@dataclass(slots=True)
class OffsetTracker(Generic[K]):
    """Per-partition fetched / completed bookkeeping for the assigned partitions."""

    _parts: dict[K, _PartitionOffsets] = field(default_factory=dict)

    def assign(self, tp: K, *, committed: int | None) -> None:
        """Start tracking ``tp`` (on assignment), remembering its committed offset if it has one.

        Records of a new assignment can arrive while the assignment callback is still awaiting the
        broker, so offsets already fetched for ``tp`` are kept.
        """
        part = self._parts.setdefault(tp, _PartitionOffsets())
        if committed is not None:
            part.committed = committed if part.committed is None else max(part.committed, committed)

    def revoke(self, tps: Iterable[K]) -> None:
        """Forget partitions this worker no longer owns; late completions for them are ignored."""
        for tp in tps:
            self._parts.pop(tp, None)

    def fetched(self, tp: K, offset: int) -> None:
        part = self._parts.setdefault(tp, _PartitionOffsets())
        part.pending.add(offset)
        part.next_fetch = max(offset + 1, part.next_fetch or 0)

    def complete(self, tp: K, offset: int) -> None:
        """Mark one offset done (final event written, DLQ'd, or skipped). Unknown partitions are ignored."""
        part = self._parts.get(tp)
        if part is not None:
            part.pending.discard(offset)

    def committable(self, tp: K) -> int | None:
        """The offset to commit for ``tp`` (Kafka's "next offset to read"), or None if nothing was fetched."""
        part = self._parts.get(tp)
        if part is None or part.next_fetch is None:
            return None
        return min(part.pending) if part.pending else part.next_fetch

    def to_commit(self) -> dict[K, int]:
        """Partitions whose commit point moved past what was last committed, with that point."""
        out: dict[K, int] = {}
        for tp, part in self._parts.items():
            point = self.committable(tp)
            if point is not None and (part.committed is None or point > part.committed):
                out[tp] = point
        return out

    def committed(self, offsets: dict[K, int]) -> None:
        """Record a successful commit."""
        for tp, offset in offsets.items():
            part = self._parts.get(tp)
            if part is not None:
                part.committed = offset if part.committed is None else max(part.committed, offset)

    def last_committed(self, tp: K) -> int | None:
        part = self._parts.get(tp)
        return None if part is None else part.committed

    def in_flight(self, tp: K | None = None) -> int:
        """How many fetched offsets are not complete (for one partition, or all)."""
        if tp is not None:
            part = self._parts.get(tp)
            return 0 if part is None else len(part.pending)
        return sum(len(p.pending) for p in self._parts.values())

    @property
    def partitions(self) -> list[K]:
        return list(self._parts)
