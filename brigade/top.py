"""``brigade top``: a live terminal view of the classes, read from the ingress's and the workers' ``/metrics``.

Pure parts (scrape text → per-class samples, two samples → rows) are separate from the scraping and
drawing so they can be tested on captured metric text.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families
from rich import box
from rich.console import Console
from rich.live import Live
from rich.table import Table


@dataclass
class ClassSample:
    """One class's counters and gauges at one scrape, summed over every worker of the class."""

    tokens: float = 0.0  # brigade_generation_tokens_total
    batch_sum: float = 0.0  # brigade_batch_size_sum / _count
    batch_count: float = 0.0
    running: float = 0.0
    waiting: float = 0.0
    worker_lag: float = 0.0  # Σ brigade_consumer_lag over partitions
    ingress_lag: float | None = None  # brigade_class_lag, when an ingress was scraped
    workers: int = 0
    ttft_buckets: dict[float, float] = field(default_factory=dict)  # le → cumulative count
    finished: float = 0.0  # Σ brigade_request_success_total over finish reasons
    errors: float = 0.0  # Σ brigade_request_errors_total over codes
    cache_queries: float = 0.0  # brigade_prefix_cache_queries_total: prompt tokens that looked for a KV cache
    cache_hits: float = 0.0  # brigade_prefix_cache_hits_total: those found there

    def add(self, other: ClassSample) -> None:
        self.tokens += other.tokens
        self.cache_queries += other.cache_queries
        self.cache_hits += other.cache_hits
        self.finished += other.finished
        self.errors += other.errors
        self.batch_sum += other.batch_sum
        self.batch_count += other.batch_count
        self.running += other.running
        self.waiting += other.waiting
        self.worker_lag += other.worker_lag
        self.workers += other.workers
        if other.ingress_lag is not None:
            self.ingress_lag = (self.ingress_lag or 0.0) + other.ingress_lag
        for le, n in other.ttft_buckets.items():
            self.ttft_buckets[le] = self.ttft_buckets.get(le, 0.0) + n


Snapshot = dict[str, ClassSample]

# sample name → the ClassSample field it adds to (summed over labels other than class: partitions, workers)
_SUMMED = {
    "brigade_generation_tokens_total": "tokens",
    "brigade_batch_size_sum": "batch_sum",
    "brigade_batch_size_count": "batch_count",
    "brigade_num_requests_running": "running",
    "brigade_num_requests_waiting": "waiting",
    "brigade_consumer_lag": "worker_lag",
    "brigade_request_success_total": "finished",
    "brigade_request_errors_total": "errors",
    "brigade_prefix_cache_queries_total": "cache_queries",
    "brigade_prefix_cache_hits_total": "cache_hits",
}


def parse_metrics(text: str) -> Snapshot:
    """Per-class samples from one ``/metrics`` page (ingress or worker; both may be given)."""
    out: Snapshot = {}
    seen_worker: set[str] = set()

    def of(cls: str) -> ClassSample:
        return out.setdefault(cls, ClassSample())

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            cls = s.labels.get("class")
            if cls is None:
                continue
            name = s.name
            if name == "brigade_class_lag":
                of(cls).ingress_lag = (of(cls).ingress_lag or 0.0) + s.value
                continue
            if name.startswith(("brigade_generation_tokens", "brigade_batch_size", "brigade_num_requests")):
                seen_worker.add(cls)
            attr = _SUMMED.get(name)
            if attr is not None:
                setattr(of(cls), attr, getattr(of(cls), attr) + s.value)
            elif name == "brigade_time_to_first_token_seconds_bucket":
                le = float(s.labels["le"])
                of(cls).ttft_buckets[le] = of(cls).ttft_buckets.get(le, 0.0) + s.value
    for cls in seen_worker:
        out[cls].workers = 1
    return out


def merge(snapshots: Iterable[Snapshot]) -> Snapshot:
    """Sum several scrapes (the ingress and each worker) into one snapshot per class."""
    out: Snapshot = {}
    for snap in snapshots:
        for cls, sample in snap.items():
            out.setdefault(cls, ClassSample()).add(sample)
    return out


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus's ``histogram_quantile`` on cumulative buckets (le → count); None without observations."""
    if not buckets:
        return None
    ordered = sorted(buckets.items())
    total = ordered[-1][1]
    if total <= 0:
        return None
    rank = q * total
    prev_le, prev_n = 0.0, 0.0
    for le, n in ordered:
        if n >= rank:
            if math.isinf(le):
                return prev_le  # beyond the last finite bucket: its upper bound is the best answer
            if n == prev_n:
                return le
            return prev_le + (le - prev_le) * (rank - prev_n) / (n - prev_n)
        prev_le, prev_n = le, n
    return prev_le


@dataclass(frozen=True, slots=True)
class ClassRow:
    cost_class: str
    workers: int
    lag: float | None
    batch_mean: float | None
    tokens_per_s: float | None
    running: float
    waiting: float
    ttft_p50_s: float | None
    finished_per_s: float | None = None  # requests ended by a done event (any finish reason), per second
    errors_per_s: float | None = None  # requests ended by an error event, per second
    cached_share: float | None = None  # of the prompt tokens that looked for a KV cache, those it held


def _delta_buckets(cur: dict[float, float], prev: dict[float, float]) -> dict[float, float]:
    return {le: n - prev.get(le, 0.0) for le, n in cur.items()}


def rows(cur: Snapshot, prev: Snapshot | None = None, seconds: float = 0.0) -> list[ClassRow]:
    """One row per class. With a previous scrape ``seconds`` earlier: rates, and means/quantiles over the
    interval (falling back to all-time when nothing happened in it); without one: no rate, all-time figures."""
    out: list[ClassRow] = []
    for cls in sorted(cur):
        c = cur[cls]
        p = prev.get(cls) if prev is not None else None
        tps = finished = errors = None
        batch_sum, batch_count, buckets = c.batch_sum, c.batch_count, c.ttft_buckets
        queries, hits = c.cache_queries, c.cache_hits
        if p is not None and seconds > 0:
            tps = max(0.0, c.tokens - p.tokens) / seconds
            finished = max(0.0, c.finished - p.finished) / seconds
            errors = max(0.0, c.errors - p.errors) / seconds
            if c.batch_count > p.batch_count:
                batch_sum, batch_count = c.batch_sum - p.batch_sum, c.batch_count - p.batch_count
            if c.cache_queries > p.cache_queries:
                queries, hits = c.cache_queries - p.cache_queries, c.cache_hits - p.cache_hits
            window = _delta_buckets(c.ttft_buckets, p.ttft_buckets)
            if window and max(window.values()) > 0:
                buckets = window
        lag = c.ingress_lag if c.ingress_lag is not None else (c.worker_lag if c.workers else None)
        out.append(
            ClassRow(
                cost_class=cls,
                workers=c.workers,
                lag=lag,
                batch_mean=batch_sum / batch_count if batch_count > 0 else None,
                tokens_per_s=tps,
                running=c.running,
                waiting=c.waiting,
                ttft_p50_s=histogram_quantile(0.5, buckets),
                finished_per_s=finished,
                errors_per_s=errors,
                cached_share=hits / queries if queries > 0 else None,
            )
        )
    return out


# Short enough that eleven columns fit an 80-column terminal; ``--help`` says what each one is.
COLUMNS = ("class", "workers", "lag", "batch", "tokens/s", "done/s", "err/s", "run", "wait", "TTFT p50", "cached")


def render(table_rows: Sequence[ClassRow], *, title: str = "brigade top") -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 0))
    for col in COLUMNS:
        table.add_column(col, justify="left" if col == "class" else "right", no_wrap=True)

    def num(v: float | None, fmt: str) -> str:
        return "–" if v is None else format(v, fmt)

    for r in table_rows:
        table.add_row(
            r.cost_class,
            str(r.workers),
            num(r.lag, ".0f"),
            num(r.batch_mean, ".1f"),
            num(r.tokens_per_s, ".1f"),
            num(r.finished_per_s, ".1f"),
            num(r.errors_per_s, ".1f"),
            f"{r.running:.0f}",
            f"{r.waiting:.0f}",
            "–" if r.ttft_p50_s is None else f"{r.ttft_p50_s * 1000:.0f} ms",
            "–" if r.cached_share is None else f"{r.cached_share:.0%}",
        )
    return table


def metrics_url(url: str) -> str:
    """``http://host:port`` → ``http://host:port/metrics``; a URL with a path is kept as given."""
    parsed = httpx.URL(url)
    return str(parsed.copy_with(path="/metrics")) if parsed.path in ("", "/") else url


async def scrape(client: httpx.AsyncClient, urls: Sequence[str]) -> tuple[Snapshot, list[str]]:
    """Scrape every URL; returns the merged snapshot and one message per URL that failed."""

    async def one(url: str) -> Snapshot | str:
        try:
            resp = await client.get(url)
            resp.raise_for_status()
        except httpx.HTTPError as exc:
            return f"{url}: {exc!s}" if str(exc) else f"{url}: {type(exc).__name__}"
        return parse_metrics(resp.text)

    results = await asyncio.gather(*(one(u) for u in urls))
    errors = [r for r in results if isinstance(r, str)]
    return merge(r for r in results if not isinstance(r, str)), errors


async def run_top(
    urls: Sequence[str], *, interval_s: float, once: bool, console: Console | None = None
) -> list[ClassRow]:
    """Redraw every ``interval_s``; ``once``: two scrapes ``interval_s`` apart, one frame printed, return its rows."""
    console = console or Console()
    targets = [metrics_url(u) for u in urls]
    async with httpx.AsyncClient(timeout=max(1.0, interval_s)) as client:
        prev, _ = await scrape(client, targets)
        t_prev = time.monotonic()
        if once:
            await asyncio.sleep(interval_s)  # the rate window, not synchronisation
            cur, errors = await scrape(client, targets)
            frame = rows(cur, prev, time.monotonic() - t_prev)
            console.print(render(frame, title=_title(targets, errors)))
            return frame
        frame = rows(prev)
        with Live(render(frame), console=console, refresh_per_second=4) as live:
            while True:
                await asyncio.sleep(interval_s)  # the refresh period
                cur, errors = await scrape(client, targets)
                now = time.monotonic()
                frame = rows(cur, prev, now - t_prev)
                live.update(render(frame, title=_title(targets, errors)))
                prev, t_prev = cur, now


def _title(targets: Sequence[str], errors: Sequence[str]) -> str:
    title = f"brigade top — {len(targets) - len(errors)}/{len(targets)} endpoints"
    return title + ("\n" + "\n".join(errors) if errors else "")
