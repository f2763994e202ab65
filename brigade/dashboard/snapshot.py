"""``brigade dashboard snapshot``: the Grafana dashboard, populated by a real run, as one PNG.

Grafana cannot run on the build machines, but the picture in the README must not be a mock-up: the
embedded stack (``brigade dev``'s, or one given by URLs) serves real load, a real Prometheus scrapes the
ingress's and the workers' ``/metrics`` every second or two, and each panel is drawn from *its own*
PromQL (read from the dashboard JSON, Grafana's variables substituted) evaluated by Prometheus's
``query_range`` over the run. A query wrong in the JSON is therefore wrong in the picture too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from brigade.dashboard.draw import Line, PanelResult, draw
from brigade.dashboard.load import LoadPlan, LoadResult, default_plan, run_load
from brigade.dashboard.panels import (
    GRID_COLUMNS,
    Panel,
    grafana_intervals,
    legend,
    parse_dashboard,
    requirement,
    substitute,
    template_values,
)
from brigade.dashboard.prometheus import (
    PrometheusApi,
    ScrapeTarget,
    Series,
    prometheus_config,
    scrape_target,
    start_prometheus,
)
from brigade.devstack import plan_stack, running
from schemas.settings import Settings

log = logging.getLogger("brigade.dashboard")
console = Console(stderr=True)

DEFAULT_DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards" / "brigade.json"
FIGURE_PX = 1600  # the PNG's width: each panel's data points follow its share of it, as in Grafana

# query_range(expr, start, end, step_s) → series; Prometheus in a run, a stub in tests.
QueryRange = Callable[[str, float, float, float], list[Series]]


@dataclass(frozen=True)
class SnapshotConfig:
    dashboard: Path
    out: Path
    duration_s: float
    clients: int
    scrape_interval_s: float
    seed: int
    workers_per_class: int
    ingress_url: str | None = None  # None: start the embedded stack
    worker_urls: tuple[str, ...] = ()
    log_dir: Path | None = None


def evaluate(
    panels: Sequence[Panel],
    query: QueryRange,
    *,
    start: float,
    end: float,
    scrape_interval_s: float,
    variables: Mapping[str, str],
) -> list[PanelResult]:
    """Run each panel's own queries over [start, end] the way Grafana would, and explain the empty ones."""
    results = []
    for panel in panels:
        points = round(FIGURE_PX * panel.grid.w / GRID_COLUMNS)
        iv = grafana_intervals(range_s=end - start, scrape_interval_s=scrape_interval_s, max_data_points=points)
        result = PanelResult(panel=panel)
        for index, target in enumerate(panel.targets):
            expr = substitute(target.expr, intervals=iv, variables=variables)
            series = [s for s in query(expr, start, end, iv.interval_s) if s.points]
            result.lines += [Line(legend(target.legend_format, s.labels), index, s) for s in series]
            if not series:
                need = requirement(target.expr)
                why = f"needs {need}" if need else "nothing in this run"
                result.notes.append(f"{target.ref_id}: no data: {why}" if len(panel.targets) > 1 else f"no data: {why}")
        results.append(result)
    return results


def subtitle(plan: LoadPlan, load: LoadResult, *, model: str, scrape_interval_s: float) -> str:
    """Two lines saying exactly what load produced the picture: the run, then each class's share."""
    parts = []
    for c in plan.classes:
        lo, hi = c.new_tokens
        parts.append(f"{c.cost_class}: {c.clients} clients, {lo}–{hi} new tokens, burst {c.burst}, "
                     f"{load.done[c.cost_class]} answers, {load.given_up[c.cost_class]} given up")  # fmt: skip
        if load.errors[c.cost_class] or load.throttled[c.cost_class]:
            parts[-1] += f" ({load.errors[c.cost_class]} errors, {load.throttled[c.cost_class]} answered 429)"
    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(load.started_at))
    head = (
        f"real run {stamp}: {plan.duration_s:.0f} s of load through the ingress on {model}, one Prometheus "
        f"scraping the ingress and every worker each {scrape_interval_s:g} s; each panel is its own PromQL"
    )
    return head + "\n" + "; ".join(parts)


@contextmanager
def _fleet(settings: Settings, config: SnapshotConfig, log_dir: Path) -> Iterator[tuple[str, list[ScrapeTarget]]]:
    """The ingress URL and the scrape targets: the given fleet, or the embedded stack started for the run."""
    if config.ingress_url is not None:
        targets = [scrape_target("ingress", config.ingress_url)]
        targets += [scrape_target("workers", url) for url in config.worker_urls]
        yield config.ingress_url, targets
        return
    stack = plan_stack(
        settings, port=0, kafka_port=0, redis_port=0, workers_per_class=config.workers_per_class, log_dir=log_dir
    )
    with ExitStack() as stop:
        with console.status("starting broker, redis, ingress and workers (models load and warm up)…"):
            up = stop.enter_context(running(stack))  # stops in order when the snapshot is done, or fails
        ingress = next(s for s in up.services if s.name == "ingress")
        targets = [scrape_target("ingress", f"http://127.0.0.1:{ingress.port}")]
        targets += [
            scrape_target("workers", f"http://127.0.0.1:{s.port}") for s in up.services if s.name.startswith("worker")
        ]
        yield up.ingress_url, targets


def run_snapshot(settings: Settings, config: SnapshotConfig) -> Path:
    """Start what is needed, drive the load, evaluate every panel, draw the PNG; everything stops on the way out."""
    dashboard = json.loads(config.dashboard.read_text())
    panels = parse_dashboard(dashboard)
    log_dir = config.log_dir or Path(tempfile.mkdtemp(prefix="brigade-dashboard-"))
    with _fleet(settings, config, log_dir) as (ingress_url, targets):
        prom = start_prometheus(
            config=prometheus_config(targets, scrape_interval_s=config.scrape_interval_s),
            data_dir=log_dir / "prometheus",
            log_dir=log_dir,
        )
        api = PrometheusApi(f"http://127.0.0.1:{prom.port}")
        try:
            api.wait_targets_up(count=len(targets), timeout_s=30.0)
            console.print(f"prometheus on :{prom.port} scrapes {len(targets)} targets (logs in {log_dir})")
            time.sleep(4 * config.scrape_interval_s)  # an idle baseline before the load, as a dashboard would show
            plan = default_plan(
                settings.classes, duration_s=config.duration_s, clients=config.clients, seed=config.seed
            )
            load = asyncio.run(run_load(ingress_url, plan))
            time.sleep(6 * config.scrape_interval_s)  # the drained tail: lag and running back to zero
            start, end = load.started_at - 6 * config.scrape_interval_s, time.time()
            results = evaluate(
                panels,
                lambda expr, s, e, step: api.query_range(expr, start=s, end=e, step_s=step),
                start=start,
                end=end,
                scrape_interval_s=config.scrape_interval_s,
                variables=template_values(dashboard),
            )
        finally:
            api.close()
            prom.stop()
    text = subtitle(plan, load, model=settings.model, scrape_interval_s=config.scrape_interval_s)
    out = draw(
        results,
        window=(start, end),
        classes=settings.classes,
        title=f"{dashboard.get('title', 'dashboard')}: the Grafana dashboard, populated by a real run",
        subtitle=text,
        out=config.out,
    )
    for r in results:
        console.print(f"  {r.panel.title}: {len(r.lines)} series" + (f" ({'; '.join(r.notes)})" if r.notes else ""))
    console.print(f"[bold green]wrote {out}[/] ({out.stat().st_size // 1024} KiB) — {text}")
    return out
