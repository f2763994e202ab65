"""A real Prometheus for the snapshot: its config, the process, and ``query_range`` over its HTTP API.

The snapshot must show what Grafana would show, so the numbers come from Prometheus evaluating the
dashboard's PromQL over scraped samples, not from brigade re-implementing ``rate`` or ``histogram_quantile``.
Prometheus is a dev-time tool here (Debian: ``apt-get install prometheus``), never a runtime or CI dependency.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from brigade.devtools.process import Service, ServiceFailed, free_port

INSTALL_HINT = (
    "the snapshot needs the prometheus binary on PATH: `apt-get install prometheus` (Debian/Ubuntu) "
    "or a release from https://prometheus.io/download/"
)


class PrometheusMissing(RuntimeError):
    """No ``prometheus`` binary: the message says how to install one."""


@dataclass(frozen=True)
class ScrapeTarget:
    """One /metrics endpoint, split the way a Prometheus static config wants it."""

    job: str
    address: str  # host:port
    metrics_path: str
    scheme: str


def scrape_target(job: str, url: str) -> ScrapeTarget:
    """A base URL (``http://h:9100``) or a /metrics URL → a target; the path defaults to ``/metrics``."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if not parts.hostname or not parts.port:
        raise ValueError(f"{url!r}: give host and port, e.g. http://127.0.0.1:9100")
    path = parts.path.rstrip("/") or "/metrics"
    if not path.endswith("/metrics"):
        path += "/metrics"
    return ScrapeTarget(job=job, address=f"{parts.hostname}:{parts.port}", metrics_path=path, scheme=parts.scheme)


def prometheus_config(targets: Sequence[ScrapeTarget], *, scrape_interval_s: float) -> str:
    """Prometheus YAML (written as JSON, which YAML reads) with one scrape job per (job, path, scheme)."""
    interval = f"{max(1, round(scrape_interval_s))}s"
    jobs: dict[tuple[str, str, str], list[str]] = {}
    for t in targets:
        jobs.setdefault((t.job, t.metrics_path, t.scheme), []).append(t.address)
    scrape_configs = [
        {
            "job_name": job if sum(k[0] == job for k in jobs) == 1 else f"{job}{path.replace('/', '_')}",
            "metrics_path": path,
            "scheme": scheme,
            "scrape_interval": interval,
            "scrape_timeout": interval,
            "static_configs": [{"targets": addresses}],
        }
        for (job, path, scheme), addresses in jobs.items()
    ]
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": scrape_configs,
    }
    return json.dumps(config, indent=2) + "\n"


@dataclass(frozen=True)
class Series:
    """One series of a ``query_range`` answer: its labels and (unix time, value) points, NaN points dropped."""

    labels: dict[str, str]
    points: tuple[tuple[float, float], ...]


def parse_matrix(answer: Mapping[str, Any]) -> list[Series]:
    """Prometheus's ``{"status": "success", "data": {"resultType": "matrix", …}}`` → series; an error raises."""
    if answer.get("status") != "success":
        raise RuntimeError(f"prometheus: {answer.get('errorType', 'error')}: {answer.get('error', answer)}")
    data = answer["data"]
    if data.get("resultType") != "matrix":
        raise RuntimeError(f"prometheus: expected a matrix, got {data.get('resultType')}")
    series = []
    for result in data["result"]:
        points = tuple((float(t), float(v)) for t, v in result["values"] if math.isfinite(float(v)))
        series.append(Series(labels=dict(result.get("metric", {})), points=points))
    return series


def start_prometheus(*, config: str, data_dir: Path, log_dir: Path, timeout_s: float = 30.0) -> Service:
    """Run ``prometheus`` on a free localhost port with ``config``; returns once ``/-/ready`` answers 200."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise PrometheusMissing(INSTALL_HINT)
    data_dir.mkdir(parents=True, exist_ok=True)
    config_path = data_dir / "prometheus.yml"
    config_path.write_text(config)
    port = free_port()
    service = Service(
        name="prometheus",
        argv=[
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={data_dir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1d",
        ],
        port=port,
        log_path=log_dir / "prometheus.log",
    ).start(timeout_s=timeout_s)
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=1.0) as client:
        while time.monotonic() < deadline:
            try:
                if client.get(f"http://127.0.0.1:{port}/-/ready").status_code == 200:
                    return service
            except httpx.HTTPError:
                pass
            time.sleep(0.1)  # /-/ready has no push signal; bounded by the deadline
    service.stop()
    raise ServiceFailed(f"prometheus not ready after {timeout_s}s:\n{service.log_tail()}")


class PrometheusApi:
    """The two calls the snapshot makes: are all targets up, and ``query_range``."""

    def __init__(self, base_url: str) -> None:
        self._http = httpx.Client(base_url=base_url, timeout=10.0)

    def close(self) -> None:
        self._http.close()

    def wait_targets_up(self, *, count: int, timeout_s: float) -> None:
        """Block until ``count`` targets report ``up`` (a scrape succeeded), or fail naming the ones that are not."""
        deadline = time.monotonic() + timeout_s
        down: list[str] = []
        while time.monotonic() < deadline:
            active = self._http.get("/api/v1/targets").json()["data"]["activeTargets"]
            down = [
                f"{t['scrapeUrl']} ({t['health']}: {t.get('lastError', '')})" for t in active if t["health"] != "up"
            ]
            if len(active) >= count and not down:
                return
            time.sleep(0.5)  # scrapes happen every interval; nothing to wait on but the clock
        raise ServiceFailed("prometheus cannot scrape: " + "; ".join(down or ["targets missing"]))

    def query_range(self, expr: str, *, start: float, end: float, step_s: float) -> list[Series]:
        resp = self._http.get(
            "/api/v1/query_range", params={"query": expr, "start": start, "end": end, "step": f"{step_s}s"}
        )
        return parse_matrix(resp.json())
