"""Draw one simulation as a PNG: load and lag, replicas (desired vs ready), queue wait. matplotlib (dev extra).

Uses ``matplotlib.figure.Figure`` directly, not pyplot: no global state, no display backend needed.
"""

from __future__ import annotations

import math
from pathlib import Path

from deploy.scaling.simulate import SimResult


def plot(result: SimResult, path: Path, *, title: str = "brigade scaling") -> Path:
    """Write ``path`` (PNG) with three stacked panels over time in minutes; returns ``path``."""
    from matplotlib.figure import Figure

    minutes = [t / 60 for t in range(len(result.lag))]
    fig = Figure(figsize=(10, 8), layout="constrained")
    load, pods, wait = fig.subplots(3, 1, sharex=True)
    load.plot(minutes, result.arrivals, label="arrivals (req/s)", color="tab:gray")
    load_lag = load.twinx()
    load_lag.plot(minutes, result.lag, label="lag (requests)", color="tab:red")
    load.set_ylabel("req/s")
    load_lag.set_ylabel("lag")
    load.set_title(title)
    pods.step(minutes, result.desired, where="post", label="desired replicas")
    pods.step(minutes, result.ready, where="post", label="ready replicas")
    pods.set_ylabel("pods")
    pods.legend(loc="upper left")
    finite = [w if math.isfinite(w) else math.nan for w in result.wait_s]
    wait.plot(minutes, finite, color="tab:purple")
    wait.set_ylabel("queue wait (s)")
    wait.set_xlabel("minutes")
    fig.savefig(path, dpi=100)
    return path
