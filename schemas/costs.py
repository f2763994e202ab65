"""Cost classes — the sous chef's stations. Pure: no tokenizer, no I/O; the caller counts tokens."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CostClass:
    """One station: requests whose estimated cost is at most ``max_cost`` tokens go here."""

    name: str
    max_cost: float  # prompt tokens + max_new_tokens; math.inf for the last class
    partitions: int  # topic partitions; also the ceiling for KEDA's maxReplicaCount
    max_lag: int  # admission limit: the ingress answers 429 above this backlog


def estimate_cost(*, prompt_tokens: int, max_new_tokens: int) -> int:
    """A request's cost in tokens the engine will touch: prefill plus decode."""
    return prompt_tokens + max_new_tokens


def classify(cost: int, classes: Sequence[CostClass], *, explicit: str | None = None) -> CostClass:
    """The cheapest class whose ``max_cost`` holds ``cost``; an explicit class name wins.

    ``classes`` must be ordered by ``max_cost`` with the last one unbounded (settings guarantee it).
    """
    if explicit is not None:
        for cls in classes:
            if cls.name == explicit:
                return cls
        names = ", ".join(c.name for c in classes)
        raise ValueError(f"cost_class {explicit!r} is not one of the configured classes ({names})")
    for cls in classes:
        if cost <= cls.max_cost:
            return cls
    return classes[-1]


def validate_classes(classes: Sequence[CostClass]) -> None:
    """Raise ValueError naming the problem if the class table cannot route every request."""
    if not classes:
        raise ValueError("BRIGADE_CLASSES: at least one cost class is needed")
    names = [c.name for c in classes]
    if len(set(names)) != len(names):
        raise ValueError(f"BRIGADE_CLASSES: class names must be unique, got {names}")
    bounds = [c.max_cost for c in classes]
    if bounds != sorted(bounds) or len(set(bounds)) != len(bounds):
        raise ValueError(f"BRIGADE_CLASS_MAX_COST: bounds must strictly increase, got {bounds[:-1]}")
    if not math.isinf(bounds[-1]):
        raise ValueError("the last cost class must be unbounded")
    for c in classes:
        if c.partitions < 1:
            raise ValueError(f"BRIGADE_CLASS_PARTITIONS: class {c.name!r} needs at least 1 partition")
