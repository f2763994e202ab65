"""KEDA's kafka scaler and the HPA's replica decision, as pure functions of numbers.

Mirrors what the two controllers compute, so the simulator's pod counts are the ones a cluster would show:

- KEDA reports total lag, capped at ``partitions × lagThreshold`` when idle consumers are not allowed, and calls
  the scaler *active* when lag > ``activationLagThreshold`` (that alone moves 0 ↔ 1).
- The HPA (AverageValue target = lagThreshold) wants ``ceil(lag / lagThreshold)`` replicas, but leaves the count
  alone while ``|lag / (replicas × lagThreshold) − 1| ≤ tolerance``; then clamps to [max(min, 1), max].
- behavior: scale-up at once (window 0) but at most ``+pods`` per period; scale-down only to the highest
  recommendation of the stabilization window, at most ``-pods`` per period.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ScalerParams:
    """One class's ScaledObject plus what the simulator needs to know about a replica."""

    lag_threshold: int  # ScaledObject trigger lagThreshold
    partitions: int  # topic partitions: the consumer ceiling
    max_replicas: int  # maxReplicaCount
    min_replicas: int = 1  # minReplicaCount (0: scale to zero)
    activation_lag: int = 0  # activationLagThreshold
    throughput_rps: float = 1.0  # requests/s one ready replica completes
    cold_start_s: float = 60.0  # pod start → ready (model loaded, group joined)
    polling_interval_s: int = 30  # KEDA pollingInterval: activation and cooldown checks
    hpa_sync_s: int = 15  # kube-controller-manager --horizontal-pod-autoscaler-sync-period
    cooldown_s: int = 300  # cooldownPeriod: inactive this long before scaling to zero
    tolerance: float = 0.1  # HPA tolerance
    scale_up_pods: int = 4  # behavior.scaleUp policy: pods ...
    scale_up_period_s: int = 60  # ... per period
    scale_down_pods: int = 1
    scale_down_period_s: int = 60
    scale_down_window_s: int = 300  # behavior.scaleDown.stabilizationWindowSeconds
    allow_idle_consumers: bool = False

    def __post_init__(self) -> None:
        if self.lag_threshold < 1:
            raise ValueError(f"lag_threshold must be >= 1, got {self.lag_threshold}")
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError(f"need 0 <= min_replicas <= max_replicas, got {self.min_replicas}, {self.max_replicas}")
        if self.throughput_rps <= 0:
            raise ValueError(f"throughput_rps must be > 0, got {self.throughput_rps}")


def reported_lag(lag: float, p: ScalerParams) -> float:
    """The metric KEDA hands the HPA: total lag, capped so replicas never exceed partitions."""
    if p.allow_idle_consumers:
        return lag
    return min(lag, p.partitions * p.lag_threshold)


def is_active(lag: float, p: ScalerParams) -> bool:
    return lag > p.activation_lag


def hpa_recommendation(*, metric: float, current: int, p: ScalerParams) -> int:
    """Replicas the HPA would ask for before behavior limits; ``current`` ≥ 1 (the HPA is off at zero)."""
    floor = max(1, p.min_replicas)
    ratio = metric / (current * p.lag_threshold)
    raw = current if abs(ratio - 1.0) <= p.tolerance else math.ceil(metric / p.lag_threshold)
    return min(p.max_replicas, max(floor, raw))


def stabilize(*, current: int, raw: int, window_max: int) -> int:
    """The HPA's stabilization: rise to ``raw`` at once (scale-up window 0), fall no lower than the window's max.

    ``window_max`` is the highest recommendation within ``scale_down_window_s``, ``raw`` included.
    """
    recommendation = max(current, raw)
    return min(recommendation, window_max)


def rate_limit(*, desired: int, current: int, added: int, removed: int, p: ScalerParams) -> int:
    """behavior policies: ``added``/``removed`` are the replicas changed within each policy's period."""
    if desired > current:
        return min(desired, current - added + p.scale_up_pods)
    if desired < current:
        return max(desired, current + removed - p.scale_down_pods)
    return desired
