"""Replay KEDA + HPA over a load trace, one-second ticks: lag, replicas, queue wait and GPU-hours.

Pure: a trace and ``ScalerParams`` in, a ``SimResult`` out; no clock, no randomness. Requests are a fluid
(fractional counts), served FIFO by ready replicas; a pod counts toward GPU time from the moment it is created,
because a loading model holds its GPU or MIG slice just the same.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from deploy.scaling import hpa
from deploy.scaling.hpa import ScalerParams


@dataclass(frozen=True, slots=True)
class SimResult:
    """Per-tick series (index = second) and the summary numbers the README compares."""

    arrivals: tuple[float, ...]  # requests/s offered
    lag: tuple[float, ...]  # queued requests at the end of each tick
    desired: tuple[int, ...]  # the Deployment's replica count (what KEDA/HPA set)
    ready: tuple[int, ...]  # pods past their cold start, consuming
    wait_s: tuple[float, ...]  # FIFO queue wait of a request arriving in this tick (inf: never served)

    @property
    def gpu_hours(self) -> float:
        return sum(self.desired) / 3600

    @property
    def max_replicas(self) -> int:
        return max(self.desired, default=0)

    def wait_quantile(self, q: float) -> float:
        """Arrival-weighted quantile of queue wait: each tick counts by the requests that arrived in it."""
        pairs = sorted((w, a) for w, a in zip(self.wait_s, self.arrivals, strict=True) if a > 0)
        total = sum(a for _, a in pairs)
        if total == 0:
            return 0.0
        seen = 0.0
        for wait, weight in pairs:
            seen += weight
            if seen >= q * total:
                return wait
        return pairs[-1][0]


@dataclass
class _Fleet:
    """The mutable part of one run: pod ready times, recent scale events, recommendations, KEDA's memory."""

    ready_at: list[float]
    events: deque[tuple[int, int]]  # (t, +n / -n) replica changes, for the behavior periods
    recommendations: deque[tuple[int, int]]  # (t, raw HPA recommendation), for the stabilization window
    last_active: int = 0

    def changed_within(self, t: int, period: int, *, up: bool) -> int:
        return sum(abs(d) for ts, d in self.events if ts > t - period and (d > 0) is up)

    def resize(self, t: int, target: int, cold_start_s: float) -> None:
        """Create pods that start cold, or delete the newest (unready first, as the ReplicaSet prefers)."""
        delta = target - len(self.ready_at)
        if delta > 0:
            self.ready_at += [t + cold_start_s] * delta
        elif delta < 0:
            self.ready_at = sorted(self.ready_at)[:target]
        if delta:
            self.events.append((t, delta))


def _keda_poll(t: int, lag: float, fleet: _Fleet, p: ScalerParams) -> None:
    """KEDA's own loop: 0 → 1 on activation, → 0 after ``cooldown_s`` inactive (only with minReplicaCount 0)."""
    if hpa.is_active(lag, p):
        fleet.last_active = t
        if not fleet.ready_at:
            fleet.resize(t, max(1, p.min_replicas), p.cold_start_s)
    elif fleet.ready_at and p.min_replicas == 0 and t - fleet.last_active >= p.cooldown_s:
        fleet.resize(t, 0, p.cold_start_s)


def _hpa_sync(t: int, lag: float, fleet: _Fleet, p: ScalerParams) -> None:
    """The HPA's loop; it does nothing while the Deployment is at zero (KEDA owns that step)."""
    current = len(fleet.ready_at)
    if current == 0:
        return
    raw = hpa.hpa_recommendation(metric=hpa.reported_lag(lag, p), current=current, p=p)
    fleet.recommendations.append((t, raw))
    while len(fleet.recommendations) > 1 and fleet.recommendations[0][0] <= t - p.scale_down_window_s:
        fleet.recommendations.popleft()
    window_max = max(r for _, r in fleet.recommendations)
    horizon = max(p.scale_up_period_s, p.scale_down_period_s)
    while fleet.events and fleet.events[0][0] <= t - horizon:
        fleet.events.popleft()
    desired = hpa.stabilize(current=current, raw=raw, window_max=window_max)
    desired = hpa.rate_limit(
        desired=desired,
        current=current,
        added=fleet.changed_within(t, p.scale_up_period_s, up=True),
        removed=fleet.changed_within(t, p.scale_down_period_s, up=False),
        p=p,
    )
    fleet.resize(t, desired, p.cold_start_s)


def _fifo_waits(arrivals: Sequence[float], served: Sequence[float]) -> tuple[float, ...]:
    """Wait of the last request arriving in each tick: seconds until cumulative service catches up with it."""
    waits = []
    cum_served = 0.0
    j = 0
    served_cum = []
    for s in served:
        cum_served += s
        served_cum.append(cum_served)
    cum_arrived = 0.0
    for t, a in enumerate(arrivals):
        cum_arrived += a
        while j < len(served_cum) and served_cum[j] < cum_arrived - 1e-9:
            j += 1
        waits.append(float(max(0, j - t)) if j < len(served_cum) else math.inf)
    return tuple(waits)


def simulate(trace: Sequence[float], params: ScalerParams, *, initial_replicas: int | None = None) -> SimResult:
    """Run ``trace`` (requests/s per second) through KEDA + HPA with ``params``; the fleet starts warm.

    ``initial_replicas`` defaults to ``min_replicas``: the steady state before the trace begins.
    """
    p = params
    start = p.min_replicas if initial_replicas is None else initial_replicas
    fleet = _Fleet(ready_at=[-math.inf] * start, events=deque(), recommendations=deque())
    lag = 0.0
    lags: list[float] = []
    desired: list[int] = []
    ready: list[int] = []
    served: list[float] = []
    for t, rate in enumerate(trace):
        lag += rate
        consuming = min(sum(1 for r in fleet.ready_at if r <= t), p.partitions)
        done = min(lag, consuming * p.throughput_rps)
        lag -= done
        if t % p.polling_interval_s == 0:
            _keda_poll(t, lag, fleet, p)
        if t % p.hpa_sync_s == 0:
            _hpa_sync(t, lag, fleet, p)
        lags.append(lag)
        desired.append(len(fleet.ready_at))
        ready.append(consuming)
        served.append(done)
    return SimResult(
        arrivals=tuple(trace),
        lag=tuple(lags),
        desired=tuple(desired),
        ready=tuple(ready),
        wait_s=_fifo_waits(trace, served),
    )


@dataclass(frozen=True, slots=True)
class Summary:
    """One strategy's outcome on one trace: what the README's comparison table shows."""

    name: str
    p50_wait_s: float
    p95_wait_s: float
    max_wait_s: float
    gpu_hours: float
    max_replicas: int

    @classmethod
    def of(cls, name: str, result: SimResult) -> Summary:
        finite = [w for w, a in zip(result.wait_s, result.arrivals, strict=True) if a > 0]
        return cls(
            name=name,
            p50_wait_s=result.wait_quantile(0.5),
            p95_wait_s=result.wait_quantile(0.95),
            max_wait_s=max(finite, default=0.0),
            gpu_hours=result.gpu_hours,
            max_replicas=result.max_replicas,
        )


def compare(trace: Sequence[float], strategies: dict[str, ScalerParams]) -> list[Summary]:
    """The same trace through each strategy (e.g. scale-to-zero vs a warm minimum vs an activation threshold)."""
    return [Summary.of(name, simulate(trace, params)) for name, params in strategies.items()]
