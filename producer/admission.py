"""Admission control per cost class: a circuit breaker on backlog. Pure: numbers in, decision out."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass


def log_end(listed: Mapping[int, int], produced: Mapping[int, int]) -> dict[int, int]:
    """Per partition, the larger of the broker's ListOffsets(latest) answer and this process's own evidence
    (highest acknowledged offset + 1). Tansu answers ListOffsets with the last batch's base offset + 1,
    short by the rest of that batch; a real Kafka's answer is never below what was acknowledged."""
    return {p: max(listed.get(p, 0), produced.get(p, 0)) for p in listed.keys() | produced.keys()}


def partition_lag(log_end: Mapping[int, int], committed: Mapping[int, int]) -> dict[int, int]:
    """Lag per partition. A partition with no committed offset counts from 0: nothing of it is consumed."""
    return {p: max(0, end - committed.get(p, 0)) for p, end in log_end.items()}


@dataclass(frozen=True, slots=True)
class Decision:
    admit: bool
    lag: int
    limit: int
    retry_after_s: int  # for the Retry-After header when refused


def decide(*, lag: int, limit: int, drain_rate: float | None) -> Decision:
    """Refuse above ``limit``. Retry-After estimates when the excess will have drained (1..60 s)."""
    if lag <= limit:
        return Decision(admit=True, lag=lag, limit=limit, retry_after_s=0)
    excess = lag - limit
    wait = excess / drain_rate if drain_rate and drain_rate > 0 else 5.0
    return Decision(admit=False, lag=lag, limit=limit, retry_after_s=int(min(60, max(1, math.ceil(wait)))))


def drain_rate(prev_committed: int, committed: int, elapsed_s: float) -> float | None:
    """Requests per second the class's workers completed between two samples; None when unknown."""
    if elapsed_s <= 0 or committed < prev_committed:
        return None
    return (committed - prev_committed) / elapsed_s
