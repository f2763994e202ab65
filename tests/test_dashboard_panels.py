"""The dashboard JSON as data: panels, Grafana's variables, the grid, units, and metric names that really exist."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from brigade.dashboard.panels import (
    AxisScale,
    Grid,
    Intervals,
    Rect,
    axis_scale,
    figure_size,
    grafana_intervals,
    layout,
    legend,
    metric_names,
    parse_dashboard,
    requirement,
    substitute,
    template_values,
)
from consumer.gpu.metrics import GpuCollector
from consumer.gpu.recorded import RecordedNvml
from consumer.metrics import WorkerMetrics
from producer.metrics import IngressMetrics

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "brigade.json"
# Metrics the dashboard may read that brigade does not export itself, and the compose service that does.
EXTERNAL = {"kafka_consumergroup_lag": "kafka-exporter"}


def _panel(**over: Any) -> dict[str, Any]:
    panel: dict[str, Any] = {
        "type": "timeseries",
        "title": "T",
        "gridPos": {"x": 0, "y": 0, "w": 12, "h": 8},
        "fieldConfig": {"defaults": {"unit": "s"}},
        "targets": [{"refId": "A", "expr": "up", "legendFormat": "{{job}}"}],
    }
    return {**panel, **over}


def test_panels_come_in_reading_order_with_their_queries_units_and_grid() -> None:
    dashboard = {
        "panels": [
            _panel(title="right", gridPos={"x": 12, "y": 0, "w": 12, "h": 8}, fieldConfig={}),
            _panel(title="below", gridPos={"x": 0, "y": 8, "w": 24, "h": 6}),
            _panel(title="left"),
        ]
    }
    panels = parse_dashboard(dashboard)
    assert [p.title for p in panels] == ["left", "right", "below"]
    assert panels[1].unit == "short", "Grafana's default unit when fieldConfig has none"
    assert panels[2].grid == Grid(x=0, y=8, w=24, h=6)
    assert panels[0].targets[0].expr == "up" and panels[0].targets[0].legend_format == "{{job}}"


def test_rows_text_panels_and_empty_queries_are_not_drawn_but_collapsed_rows_open() -> None:
    dashboard = {
        "panels": [
            {"type": "row", "title": "r", "gridPos": {"x": 0, "y": 0, "w": 24, "h": 1}, "panels": [_panel(title="in")]},
            {"type": "text", "title": "note", "gridPos": {"x": 0, "y": 1, "w": 24, "h": 2}},
            _panel(title="blank", targets=[{"refId": "A", "expr": ""}]),
        ]
    }
    assert [p.title for p in parse_dashboard(dashboard)] == ["in"]


def test_shipped_dashboard_parses_into_every_panel() -> None:
    raw = json.loads(DASHBOARD.read_text())
    panels = parse_dashboard(raw)
    assert len(panels) == len(raw["panels"])
    assert all(p.targets for p in panels)


@pytest.mark.parametrize(
    ("range_s", "scrape_s", "points", "expected"),
    [
        (120, 1, 1800, Intervals(interval_s=1, rate_interval_s=4, range_s=120)),  # floor: the scrape interval
        (120, 5, 1800, Intervals(interval_s=5, rate_interval_s=20, range_s=120)),  # 4 × scrape dominates
        (3600, 1, 600, Intervals(interval_s=5, rate_interval_s=6, range_s=3600)),  # 6 s raw → nice 5 s; 5 + 1
        (86400, 15, 1000, Intervals(interval_s=60, rate_interval_s=75, range_s=86400)),  # 86.4 s → nice 60 s
    ],
)
def test_grafana_intervals(range_s: float, scrape_s: float, points: int, expected: Intervals) -> None:
    assert grafana_intervals(range_s=range_s, scrape_interval_s=scrape_s, max_data_points=points) == expected


def test_rate_interval_is_at_least_four_scrapes_and_covers_an_interval_plus_a_scrape() -> None:
    for range_s in (60, 600, 3600, 86400):
        for scrape in (1, 2, 5, 15):
            iv = grafana_intervals(range_s=range_s, scrape_interval_s=scrape, max_data_points=800)
            assert iv.interval_s >= scrape
            assert iv.rate_interval_s >= max(4 * scrape, iv.interval_s + scrape)


def test_substitute_grafana_and_dashboard_variables() -> None:
    iv = Intervals(interval_s=2, rate_interval_s=8, range_s=300)
    expr = 'rate(x{class=~"$class"}[$__rate_interval]) + rate(y{c="${class}"}[$__interval]) + z[[[class]]] + $__range_s'
    assert (
        substitute(expr, intervals=iv, variables={"class": ".*"})
        == 'rate(x{class=~".*"}[8s]) + rate(y{c=".*"}[2s]) + z[.*] + 300'
    )
    with pytest.raises(KeyError, match=r"\$cluster"):
        substitute("up{c='$cluster'}", intervals=iv)


def test_template_values_all_becomes_a_regex_and_a_pick_stays() -> None:
    dashboard = {
        "templating": {
            "list": [
                {"name": "class", "current": {"value": "$__all"}},
                {"name": "pod", "current": {"value": "worker-1"}},
                {"name": "multi", "current": {"value": ["small", "large"]}},
                {"name": "unset"},
            ]
        }
    }
    assert template_values(dashboard) == {"class": ".*", "pod": "worker-1", "multi": "(small|large)", "unset": ".*"}


def test_metric_names_skip_functions_keywords_labels_and_strings() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, class) (rate(brigade_ttft_bucket{class=~"sm.*"}[$__rate_interval])))'
        ' / on (class) group_left sum without (partition) (kafka_lag{consumergroup=~"brigade-.*"}) * 1e3'
        " or vector(0) offset 5m and bool up"
    )
    assert metric_names(expr) == {"brigade_ttft_bucket", "kafka_lag", "up"}


def test_requirement_names_what_a_cpu_run_lacks() -> None:
    assert requirement("sum by (class) (brigade_gpu_memory_used_bytes)") is not None
    assert "NVIDIA GPU" in (requirement("brigade_gpu_memory_used_bytes") or "")
    assert "kafka-exporter" in (requirement('sum(kafka_consumergroup_lag{consumergroup=~"b-.*"})') or "")
    assert requirement("sum by (class) (brigade_consumer_lag)") is None


def test_legend_format() -> None:
    labels = {"__name__": "x", "class": "small", "instance": "w:9100"}
    assert legend("p50 {{class}}", labels) == "p50 small"
    assert legend("{{ class }} {{missing}}", labels) == "small"
    assert legend("", labels) == '{class="small", instance="w:9100"}'


@pytest.mark.parametrize(
    ("unit", "peak", "expected"),
    [
        ("s", 0.0004, AxisScale(1e-6, "µs")),
        ("s", 0.04, AxisScale(1e-3, "ms")),
        ("s", 2.5, AxisScale(1.0, "s")),
        ("s", 600, AxisScale(60.0, "min")),
        ("bytes", 3 * 1024**3, AxisScale(1024.0**3, "GiB")),
        ("bytes", 500, AxisScale(1.0, "B")),
        ("short", 4200, AxisScale(1e3, "K")),
        ("short", 12, AxisScale(1.0, "")),
        ("percent", 50, AxisScale(1.0, "percent")),
    ],
)
def test_axis_scale(unit: str, peak: float, expected: AxisScale) -> None:
    assert axis_scale(unit, peak) == expected


def test_layout_keeps_grafana_columns_and_rows_top_down() -> None:
    grids = [Grid(0, 0, 12, 8), Grid(12, 0, 12, 8), Grid(0, 8, 24, 8)]
    left, right, wide = layout(grids, gap=0.0)
    assert left == Rect(left=0.0, bottom=0.5, width=0.5, height=0.5)
    assert right == Rect(left=0.5, bottom=0.5, width=0.5, height=0.5)
    assert wide == Rect(left=0.0, bottom=0.0, width=1.0, height=0.5)
    with_gap = layout(grids, gap=0.01)
    assert with_gap[0].left + with_gap[0].width < with_gap[1].left, "neighbours never touch"
    width, height = figure_size([Grid(0, 0, 24, 32)], width_in=16)
    assert width == 16 and 6 < height < 12  # 32 rows × 38 px on a 1800 px wide grid


# -- the dashboard reads only metrics that exist ---------------------------------------------------------------

_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}


def _exposed(registry: CollectorRegistry) -> set[str]:
    """Sample names a registry exposes on /metrics: a counter's ``_total``, a histogram's ``_bucket`` …"""
    names = set()
    for family in registry.collect():
        names.add(family.name)
        names.update(family.name + s for s in _SUFFIXES.get(family.type, ()))
    return names


def brigade_metric_names() -> set[str]:
    """What brigade's own code registers: the ingress's, a worker's and the NVML collector's families."""
    names = _exposed(IngressMetrics().registry) | _exposed(WorkerMetrics(cost_class="small").registry)
    gpu = GpuCollector(RecordedNvml({}), cost_class="small")  # describe() reads no NVML
    names |= {family.name for family in gpu.describe()}
    return names


def test_every_dashboard_query_reads_a_metric_that_brigade_or_a_compose_exporter_exports() -> None:
    known = brigade_metric_names()
    assert "brigade_time_to_first_token_seconds_bucket" in known and "brigade_gpu_memory_used_bytes" in known
    for panel in parse_dashboard(json.loads(DASHBOARD.read_text())):
        for target in panel.targets:
            for name in metric_names(target.expr):
                assert name in known or name in EXTERNAL, f"panel {panel.title!r} queries {name}, which nothing exports"


def test_external_metrics_come_from_an_exporter_that_compose_runs_and_prometheus_scrapes() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    scraped = (ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text()
    for service in EXTERNAL.values():
        assert service in services and f"{service}:" in scraped
