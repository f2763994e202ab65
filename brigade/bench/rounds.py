"""Which of a figure's repeated runs to report: the median one, so one slow spell of the machine moves nothing."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def median_run(runs: Sequence[T], rate: Callable[[T], float]) -> T:
    """The run with the median ``rate`` (the lower middle one of an even count)."""
    if not runs:
        raise ValueError("no runs to choose from")
    ordered = sorted(runs, key=rate)
    return ordered[(len(ordered) - 1) // 2]
