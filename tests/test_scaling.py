"""deploy.scaling: the KEDA/HPA arithmetic (table tests) and whole runs over traces, checked by their numbers."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from deploy.keda.config import DeployConfig, reference_settings
from deploy.scaling import ScalerParams, compare, hpa, params_for_class, plot, simulate, traces

BASE = ScalerParams(lag_threshold=10, partitions=12, max_replicas=11, throughput_rps=1.0, cold_start_s=30)


# --- pure arithmetic -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lag", "current", "expected"),
    [
        (0, 3, 1),  # nothing queued: down to the floor (max(min, 1))
        (10, 1, 1),  # exactly on target
        (105, 10, 10),  # ratio 1.05: within tolerance, unchanged
        (120, 10, 12 - 1),  # ratio 1.2 → ceil(12) capped at max_replicas 11
        (25, 1, 3),  # ceil(25 / 10)
        (10_000, 1, 11),  # capped at max_replicas
    ],
)
def test_hpa_recommendation(lag: float, current: int, expected: int) -> None:
    assert hpa.hpa_recommendation(metric=lag, current=current, p=BASE) == expected


@pytest.mark.parametrize(("lag", "allow_idle", "expected"), [(50, False, 50), (500, False, 120), (500, True, 500)])
def test_reported_lag_capped_at_partitions(lag: float, allow_idle: bool, expected: float) -> None:
    assert hpa.reported_lag(lag, replace(BASE, allow_idle_consumers=allow_idle)) == expected


@pytest.mark.parametrize(("lag", "activation", "active"), [(0, 0, False), (1, 0, True), (5, 5, False), (6, 5, True)])
def test_activation_is_strictly_above_threshold(lag: float, activation: int, active: bool) -> None:
    assert hpa.is_active(lag, replace(BASE, activation_lag=activation)) is active


@pytest.mark.parametrize(
    ("current", "raw", "window_max", "expected"),
    [(3, 8, 8, 8), (8, 2, 8, 8), (8, 2, 5, 5), (8, 2, 2, 2)],
)
def test_stabilize(current: int, raw: int, window_max: int, expected: int) -> None:
    assert hpa.stabilize(current=current, raw=raw, window_max=window_max) == expected


@pytest.mark.parametrize(
    ("desired", "current", "added", "removed", "expected"),
    [
        (20, 2, 0, 0, 6),  # +4 per period
        (20, 6, 4, 0, 6),  # already added 4 this period
        (1, 8, 0, 0, 7),  # -1 per period
        (1, 7, 0, 1, 7),  # already removed 1 this period
        (5, 5, 0, 0, 5),
    ],
)
def test_rate_limit(desired: int, current: int, added: int, removed: int, expected: int) -> None:
    assert hpa.rate_limit(desired=desired, current=current, added=added, removed=removed, p=BASE) == expected


def test_params_reject_nonsense() -> None:
    with pytest.raises(ValueError, match="lag_threshold"):
        replace(BASE, lag_threshold=0)
    with pytest.raises(ValueError, match="min_replicas"):
        replace(BASE, min_replicas=12)


# --- traces --------------------------------------------------------------------------------------------------


def test_traces_shapes() -> None:
    assert traces.steady(rate=2, duration_s=3) == (2, 2, 2)
    assert traces.ramp(start=0, end=4, duration_s=5) == (0, 1, 2, 3, 4)
    assert traces.burst(base=0, peak=5, start_s=1, length_s=2, duration_s=4) == (0, 5, 5, 0)
    day = traces.diurnal(mean=2, amplitude=3)
    assert len(day) == traces.DAY_S and min(day) == 0.0 and max(day) == pytest.approx(5.0)
    assert day.index(max(day)) == 14 * 3600


# --- whole runs ----------------------------------------------------------------------------------------------


def test_steady_load_within_one_replica_stays_at_one() -> None:
    result = simulate(traces.steady(rate=0.5, duration_s=600), BASE)
    assert set(result.desired) == {1}
    assert max(result.wait_s) <= 1


def test_scale_from_zero_pays_poll_plus_cold_start() -> None:
    p = replace(BASE, min_replicas=0)
    result = simulate(traces.burst(base=0, peak=1, start_s=5, length_s=60, duration_s=600), p)
    first_ready = next(t for t, n in enumerate(result.ready) if n > 0)
    assert first_ready == 30 + 30  # first KEDA poll after the lag appears (t=30) + 30 s cold start
    assert result.desired[29] == 0 and result.desired[30] >= 1
    assert result.wait_s[5] == pytest.approx(first_ready - 5)


def test_warm_minimum_absorbs_a_small_burst() -> None:
    """Over an hour with one minute of load: the warm pod costs GPU time and saves the cold-start wait."""
    trace = traces.burst(base=0, peak=1, start_s=5, length_s=60, duration_s=3600)
    zero, warm = compare(trace, {"zero": replace(BASE, min_replicas=0), "warm": BASE})
    assert warm.p95_wait_s < zero.p95_wait_s
    assert warm.gpu_hours > zero.gpu_hours


def test_cooldown_to_zero_waits_for_cooldown() -> None:
    p = replace(BASE, min_replicas=0, cooldown_s=300)
    result = simulate(traces.burst(base=0, peak=1, start_s=0, length_s=120, duration_s=1200), p)
    last_busy = max(t for t, lag in enumerate(result.lag) if lag > 0)
    last_active_poll = last_busy - last_busy % p.polling_interval_s  # KEDA only sees lag when it polls
    zero_at = result.desired.index(0, last_busy)
    assert last_active_poll + 300 <= zero_at <= last_active_poll + 300 + p.polling_interval_s


def test_activation_threshold_keeps_zero_below_it() -> None:
    p = replace(BASE, min_replicas=0, activation_lag=50)
    result = simulate(traces.burst(base=0, peak=1, start_s=0, length_s=40, duration_s=300), p)
    assert max(result.desired) == 0
    assert math.isinf(result.wait_s[0])


def test_scale_up_is_bounded_per_period() -> None:
    result = simulate(traces.steady(rate=50, duration_s=600), BASE)
    for t in range(60, len(result.desired)):
        assert result.desired[t] - result.desired[t - 60] <= BASE.scale_up_pods
    assert max(result.desired) == BASE.max_replicas


@pytest.mark.parametrize("window", [0, 300])
def test_scale_down_waits_for_stabilization_window(window: int) -> None:
    trace = traces.steady(rate=30, duration_s=300) + traces.steady(rate=0, duration_s=1500)
    p = replace(BASE, scale_down_window_s=window, scale_down_pods=100)  # no rate limit: isolate the window
    result = simulate(trace, p)
    cleared = next(t for t in range(300, len(trace)) if result.lag[t] == 0)
    down_at = next(t for t in range(cleared, len(trace)) if result.desired[t] == 1)
    assert window - p.hpa_sync_s <= down_at - cleared <= window + p.hpa_sync_s


def test_max_replicas_equal_to_partitions_sticks_below_it() -> None:
    """The 63-of-64 issue: capped lag and the 10 % tolerance stop the last steps; headroom fixes it."""
    heavy = traces.steady(rate=200, duration_s=1800)
    p = ScalerParams(lag_threshold=10, partitions=64, max_replicas=64, throughput_rps=1.0, cold_start_s=10)
    assert simulate(heavy, p).max_replicas < 64
    assert simulate(heavy, replace(p, max_replicas=59)).max_replicas == 59


def test_replicas_never_exceed_max_or_partitions() -> None:
    result = simulate(traces.ramp(start=0, end=40, duration_s=1800), BASE)
    assert max(result.desired) <= BASE.max_replicas < BASE.partitions
    assert max(result.ready) <= BASE.partitions


def test_params_for_class_match_the_rendered_scaledobject() -> None:
    settings, config = reference_settings(), DeployConfig()
    p = params_for_class(settings, config, "large")
    cfg = config.for_class("large")
    assert (p.lag_threshold, p.min_replicas, p.cooldown_s) == (cfg.lag_threshold, 0, cfg.cooldown_s)
    assert p.max_replicas < settings.cost_class("large").partitions


def test_plot_writes_png(tmp_path: Path) -> None:
    result = simulate(
        traces.burst(base=0, peak=2, start_s=10, length_s=60, duration_s=300), replace(BASE, min_replicas=0)
    )
    out = plot(result, tmp_path / "sim.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
