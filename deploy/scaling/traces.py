"""Load traces for the simulator: arrival rate (requests/s) per one-second tick. Pure, deterministic.

Four shapes cover the questions the fleet has to answer: steady (is lagThreshold right?), ramp (does scale-up
keep pace?), burst (what does a cold start cost?), diurnal (how many GPU-hours does a day take?).
"""

from __future__ import annotations

import math

Trace = tuple[float, ...]
DAY_S = 86_400


def _check(duration_s: int, *rates: float) -> None:
    if duration_s < 1:
        raise ValueError(f"duration_s must be >= 1, got {duration_s}")
    if any(r < 0 for r in rates):
        raise ValueError(f"rates must be >= 0, got {rates}")


def steady(*, rate: float, duration_s: int) -> Trace:
    _check(duration_s, rate)
    return (rate,) * duration_s


def ramp(*, start: float, end: float, duration_s: int) -> Trace:
    """Linear from ``start`` to ``end`` requests/s."""
    _check(duration_s, start, end)
    if duration_s == 1:
        return (start,)
    return tuple(start + (end - start) * t / (duration_s - 1) for t in range(duration_s))


def burst(*, base: float, peak: float, start_s: int, length_s: int, duration_s: int) -> Trace:
    """``base`` load with ``peak`` for ``length_s`` seconds from ``start_s`` (base 0: the scale-from-zero case)."""
    _check(duration_s, base, peak)
    return tuple(peak if start_s <= t < start_s + length_s else base for t in range(duration_s))


def diurnal(*, mean: float, amplitude: float, duration_s: int = DAY_S, peak_at_s: int = 14 * 3600) -> Trace:
    """A day's sine: ``mean ± amplitude`` requests/s, highest at ``peak_at_s`` (14:00), never negative."""
    _check(duration_s, mean, amplitude)
    return tuple(
        max(0.0, mean + amplitude * math.cos(2 * math.pi * (t - peak_at_s) / DAY_S)) for t in range(duration_s)
    )
