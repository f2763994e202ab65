"""Admission arithmetic with no broker: log ends despite Tansu's ListOffsets, lag, and the per-class breaker."""

from __future__ import annotations

import pytest

from producer.admission import decide, log_end, partition_lag


@pytest.mark.parametrize(
    ("listed", "produced", "expected"),
    [
        ({0: 10, 1: 4}, {}, {0: 10, 1: 4}),  # nothing produced here: the broker's word
        ({0: 8}, {0: 10}, {0: 10}),  # Tansu: last batch's base + 1 is short of what was acknowledged
        ({0: 12}, {0: 10}, {0: 12}),  # others produced more than this process saw
        ({0: 3}, {1: 2}, {0: 3, 1: 2}),  # metadata not yet aware of a partition this process wrote to
    ],
)
def test_log_end_takes_the_larger_evidence(
    listed: dict[int, int], produced: dict[int, int], expected: dict[int, int]
) -> None:
    assert log_end(listed, produced) == expected


def test_class_lag_counts_uncommitted_partitions_whole() -> None:
    ends = log_end({0: 5, 1: 7}, {1: 9})
    lags = partition_lag(ends, {0: 5})  # the group never committed on partition 1
    assert lags == {0: 0, 1: 9} and sum(lags.values()) == 9


def test_each_class_trips_on_its_own_limit() -> None:
    limits = {"small": 2000, "medium": 500, "large": 100}
    lags = {"small": 150, "medium": 150, "large": 150}
    admitted = {c: decide(lag=lags[c], limit=limits[c], drain_rate=None).admit for c in limits}
    assert admitted == {"small": True, "medium": True, "large": False}
    refused = decide(lag=150, limit=100, drain_rate=None)
    assert refused.retry_after_s == 5  # no drain rate measured yet: a fixed, modest back-off
