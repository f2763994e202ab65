"""Per-replica figures measured on this project's machine, and how the generator turns them into defaults.

Measured on 2 vCPUs of an Intel Xeon (AVX-512), CPU execution provider, one ``brigade worker`` process per replica,
on a machine shared with other work (see BENCHMARKS.md, "Per-replica throughput and cold start"):

- throughput: ``brigade bench --figure scaleout --consumers 1 --replica-model MODEL`` (a saturating backlog of
  ≈ 30-token prompts, 32 new tokens each, batch 32, one consumer; tokens/s from first send to last final);
- cold start: ``brigade bench --figure coldstart`` (spawn ``brigade worker`` → first ``/readyz`` 200; median of
  3 with the model cache warm, and one start on an empty cache, which first generates the built-in model).

These are CPU figures. On a GPU they are different by orders of magnitude: measure there and pass them in with
``brigade deploy render --throughput small=RPS,... --cold-start small=SECONDS,...`` (the same flags on
``brigade scale simulate``), or set ``ClassDeploy.throughput_rps`` / ``cold_start_s`` in code.

From tokens/s to the ``throughput_rps`` KEDA needs: a replica under a saturating backlog emits about the same
tokens/s whatever the answer length, so ``throughput_rps = tokens_per_s / new_tokens_per_request``; each class
gets its own typical answer length (``TYPICAL_NEW_TOKENS``: the small class's is the measured shape, the others
are assumptions — replace them with your traffic's mean). Then ``lagThreshold = floor(throughput_rps ×
target_wait_s)`` (``params.lag_threshold``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ReplicaFigures:
    """One model's measured per-replica throughput and cold start."""

    model: str
    tokens_per_s: float  # one replica, saturating backlog, batch 32
    requests_per_s: float  # the same run: requests of ``new_tokens`` tokens each
    new_tokens: int  # the request shape of the throughput run
    cold_start_s: float  # median, spawn → /readyz 200, model cache warm
    cold_start_empty_cache_s: float  # one start whose built-in model was generated first (an emptyDir cache)
    measured: str  # when, and on what


# 2026-11-23, four throughput runs (tokens/s 301, 162, 148, 323: the machine's neighbours halve it at times) and
# two cold-start runs of three (medians 2.04 s and 2.24 s warm; 6.60 s and 5.35 s with an empty cache).
GPT2_SMALL_SHAPE_CPU = ReplicaFigures(
    model="builtin:gpt2-small-shape",
    tokens_per_s=231.0,  # median of the four runs
    requests_per_s=7.2,  # median of 9.4, 5.0, 4.6, 10.1
    new_tokens=32,
    cold_start_s=2.15,  # median of all six warm-cache starts
    cold_start_empty_cache_s=6.6,  # the slower of the two empty-cache starts
    measured="2026-11-23, 2 vCPU Intel Xeon (AVX-512), onnxruntime 1.32.0 CPU EP, shared machine",
)
# 2026-11-23, four one-consumer runs (tokens/s 4652, 5238, 5139, 5004) and the same two cold-start runs (medians
# 0.70 s and 0.61 s warm; 0.74 s and 0.66 s with an empty cache). Mostly Python, Kafka and Redis per request.
TINY_CPU = ReplicaFigures(
    model="builtin:tiny",
    tokens_per_s=5072.0,
    requests_per_s=158.5,
    new_tokens=32,
    cold_start_s=0.65,
    cold_start_empty_cache_s=0.74,
    measured="2026-11-23, 2 vCPU Intel Xeon (AVX-512), onnxruntime 1.32.0 CPU EP, shared machine",
)

# The figures the shipped defaults use: GPT-2 small's compute is the nearer stand-in for a served model than
# builtin:tiny, whose figures mostly measure Python and the queue hops.
DEFAULT_FIGURES = GPT2_SMALL_SHAPE_CPU

# New tokens a typical request of each class generates. small: the measured shape; medium, large: assumptions.
TYPICAL_NEW_TOKENS: Mapping[str, int] = {"small": 32, "medium": 128, "large": 512}


def throughput_rps(figures: ReplicaFigures, *, new_tokens: int) -> float:
    """Requests/s one replica completes when each request generates ``new_tokens`` tokens.

    >>> round(throughput_rps(ReplicaFigures("m", 100.0, 3.1, 32, 5.0, 9.0, ""), new_tokens=50), 3)
    2.0
    """
    if new_tokens < 1:
        raise ValueError(f"new_tokens must be >= 1, got {new_tokens}")
    return figures.tokens_per_s / new_tokens


def parse_class_values(text: str, *, flag: str, classes: tuple[str, ...]) -> dict[str, float]:
    """``small=40,medium=12`` → {"small": 40.0, "medium": 12.0}; errors name the flag, the class and the fix."""
    out: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"{flag} {text!r}: write CLASS=VALUE pairs, like small=40,medium=12")
        if name not in classes:
            raise ValueError(f"{flag}: unknown class {name!r}; classes are {', '.join(classes)} (BRIGADE_CLASSES)")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{flag}: {name}={value!r} is not a number") from None
        if number <= 0:
            raise ValueError(f"{flag}: {name}={value} must be > 0")
        out[name] = number
    return out
