"""The scaling arithmetic behind each ScaledObject: pure functions, table-tested, no Kubernetes inside.

Every number in a rendered ScaledObject comes from here, so the reasoning lives in one place:

- ``lagThreshold`` is KEDA's *per-replica* lag target (the HPA divides total lag by it). A replica that serves
  ``throughput_rps`` requests/s drains ``lagThreshold`` queued requests in ``lagThreshold / throughput_rps``
  seconds, so setting ``lagThreshold = throughput_rps × target_wait_s`` holds the expected queue wait at the
  target once the fleet has scaled.
- ``maxReplicaCount`` stays below the partition count: KEDA caps total lag at ``partitions × lagThreshold``, and
  the HPA ignores a metric ratio within its 10 % tolerance, so with 64 partitions and ``maxReplicaCount: 64`` the
  fleet can stick at 63 pods (ratio 64/63 = 1.016). The largest reachable count ``M`` satisfies
  ``(M - 1) × (1 + tolerance) < partitions``.
- ``cooldownPeriod`` (the step to zero) must outlast a cold start, or a pod is killed about as soon as it became
  useful and the next request pays the model load again.
"""

from __future__ import annotations

import math

HPA_TOLERANCE = 0.1  # kube-controller-manager --horizontal-pod-autoscaler-tolerance default
MIN_COOLDOWN_S = 300  # KEDA's own default cooldownPeriod
PRESTOP_S = 5  # time for endpoints/readiness to notice the pod is leaving before SIGTERM
# Each probe's HTTP timeout. Kubernetes' default is 1 s; a worker's probes stalled once for 1.2-1.3 s while its
# engine modules imported (they hold the GIL), measured on the 2-core build machine.
PROBE_TIMEOUT_S = 3
GRACE_MARGIN_S = 10  # final commit, Redis writes and session release after the drain deadline
# The startup probe allows at least this long whatever the measured cold start: a cold start measured in seconds on
# a quiet 2-core machine is slower on a pod with a smaller CPU limit or a busy node, and a window that is too tight
# is a restart loop while one that is too wide only notices a hung start later.
MIN_STARTUP_S = 60


def lag_threshold(*, throughput_rps: float, target_wait_s: float) -> int:
    """Per-replica lag target: requests one replica clears within ``target_wait_s``; never below 1.

    >>> lag_threshold(throughput_rps=4.0, target_wait_s=5.0)
    20
    """
    if throughput_rps <= 0:
        raise ValueError(f"throughput_rps must be > 0, got {throughput_rps}")
    if target_wait_s <= 0:
        raise ValueError(f"target_wait_s must be > 0, got {target_wait_s}")
    return max(1, math.floor(throughput_rps * target_wait_s))


def expected_wait_s(*, lag: int, replicas: int, throughput_rps: float) -> float:
    """Seconds the last queued request waits when ``replicas`` each serve ``throughput_rps``; inf with none."""
    if lag <= 0:
        return 0.0
    if replicas <= 0:
        return math.inf
    return lag / (replicas * throughput_rps)


def max_replica_count(*, partitions: int, tolerance: float = HPA_TOLERANCE) -> int:
    """The largest replica count the HPA can actually reach on a topic with ``partitions`` partitions.

    Two limits: a replica beyond the partition count idles (``allowIdleConsumers: "false"``), and the HPA
    only scales from ``n`` when ``partitions / n > 1 + tolerance``. With more than one partition we also
    keep one partition of headroom so that ``maxReplicaCount < partitions``.
    """
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    if partitions == 1:
        return 1
    reachable = 1
    while reachable < partitions - 1 and reachable * (1 + tolerance) < partitions:
        reachable += 1
    return reachable


def reachable(*, max_replicas: int, partitions: int, tolerance: float = HPA_TOLERANCE) -> bool:
    """Whether the HPA can step from ``max_replicas - 1`` to ``max_replicas`` when lag is capped."""
    if max_replicas > partitions:
        return False
    if max_replicas <= 1:
        return True
    return partitions / (max_replicas - 1) > 1 + tolerance


def cooldown_period_s(*, cold_start_s: float, floor_s: int = MIN_COOLDOWN_S) -> int:
    """Idle seconds before scaling to zero: at least two cold starts, never below KEDA's default 300 s.

    Two cold starts because a pod that just paid one should serve at least as long again before we
    throw the loaded model away.
    """
    if cold_start_s < 0:
        raise ValueError(f"cold_start_s must be >= 0, got {cold_start_s}")
    return max(floor_s, math.ceil(2 * cold_start_s))


def termination_grace_s(*, drain_timeout_s: float, prestop_s: int = PRESTOP_S, margin_s: int = GRACE_MARGIN_S) -> int:
    """``terminationGracePeriodSeconds``: preStop, then the SIGTERM drain, then a margin for the final commit."""
    if drain_timeout_s < 0:
        raise ValueError(f"drain_timeout_s must be >= 0, got {drain_timeout_s}")
    return prestop_s + math.ceil(drain_timeout_s) + margin_s


def startup_failure_threshold(*, cold_start_s: float, period_s: int, floor_s: int = MIN_STARTUP_S) -> int:
    """startupProbe ``failureThreshold`` so the liveness probe never kills a pod still loading its model.

    Twice the measured cold start, and never less than ``floor_s``: a slow node or a cold model cache must not
    turn into a restart loop.
    """
    if period_s < 1:
        raise ValueError(f"period_s must be >= 1, got {period_s}")
    return max(1, math.ceil(2 * cold_start_s / period_s), math.ceil(floor_s / period_s))
