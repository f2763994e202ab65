"""The commit point is the end of the contiguous completed prefix of fetched offsets."""

from __future__ import annotations

import pytest

from consumer.offsets import OffsetTracker

TP = ("t", 0)


@pytest.mark.parametrize(
    ("fetched", "completed", "expected"),
    [
        ([], [], None),  # nothing fetched: nothing to commit
        ([0, 1, 2], [], 0),  # nothing complete: commit stays at the first fetched
        ([0, 1, 2], [0], 1),
        ([0, 1, 2], [1, 2], 0),  # out of order: 0 still pending holds the prefix
        ([0, 1, 2], [0, 2], 1),
        ([0, 1, 2], [0, 1, 2], 3),  # all complete: one past the highest fetched
        ([5, 7, 9], [5, 7], 9),  # gaps in the log (compaction, markers) do not block
        ([5, 7, 9], [5, 7, 9], 10),
        ([3], [4], 3),  # completing an unfetched offset changes nothing
    ],
)
def test_committable(fetched: list[int], completed: list[int], expected: int | None) -> None:
    tracker: OffsetTracker[tuple[str, int]] = OffsetTracker()
    for o in fetched:
        tracker.fetched(TP, o)
    for o in completed:
        tracker.complete(TP, o)
    assert tracker.committable(TP) == expected


def test_to_commit_only_reports_points_that_moved() -> None:
    tracker: OffsetTracker[tuple[str, int]] = OffsetTracker()
    tracker.assign(TP, committed=10)
    tracker.fetched(TP, 10)
    assert tracker.to_commit() == {}  # 10 is pending: the point equals what is committed
    tracker.complete(TP, 10)
    assert tracker.to_commit() == {TP: 11}
    tracker.committed({TP: 11})
    assert tracker.to_commit() == {} and tracker.last_committed(TP) == 11


def test_partitions_are_independent() -> None:
    tracker: OffsetTracker[tuple[str, int]] = OffsetTracker()
    a, b = ("t", 0), ("t", 1)
    for o in (0, 1):
        tracker.fetched(a, o)
        tracker.fetched(b, o)
    tracker.complete(b, 0)
    tracker.complete(b, 1)
    assert tracker.to_commit() == {a: 0, b: 2}
    assert tracker.in_flight() == 2 and tracker.in_flight(a) == 2 and tracker.in_flight(b) == 0


def test_revoke_forgets_and_late_completions_are_ignored() -> None:
    tracker: OffsetTracker[tuple[str, int]] = OffsetTracker()
    tracker.fetched(TP, 0)
    tracker.revoke([TP])
    tracker.complete(TP, 0)
    assert tracker.committable(TP) is None and tracker.partitions == [] and tracker.to_commit() == {}


def test_assign_after_early_records_keeps_them() -> None:
    """Records of a new assignment may arrive while the assignment callback still awaits the broker."""
    tracker: OffsetTracker[tuple[str, int]] = OffsetTracker()
    tracker.fetched(TP, 4)
    tracker.assign(TP, committed=4)
    assert tracker.in_flight(TP) == 1 and tracker.committable(TP) == 4 and tracker.last_committed(TP) == 4
