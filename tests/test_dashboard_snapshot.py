"""``brigade dashboard snapshot`` without Prometheus: config, answers, evaluation of the dashboard's own queries,
the load plan, the drawing, and the error when the binary is missing. No test here needs ``prometheus``."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

from brigade.cli import app
from brigade.dashboard.draw import Line, PanelResult, draw
from brigade.dashboard.load import default_plan
from brigade.dashboard.panels import Grid, Panel, Target, figure_size, parse_dashboard
from brigade.dashboard.prometheus import ScrapeTarget, Series, parse_matrix, prometheus_config, scrape_target
from brigade.dashboard.snapshot import DEFAULT_DASHBOARD, evaluate


def test_scrape_target_from_base_or_metrics_url() -> None:
    assert scrape_target("workers", "http://127.0.0.1:9100") == ScrapeTarget(
        "workers", "127.0.0.1:9100", "/metrics", "http"
    )
    assert scrape_target("ingress", "https://h:8080/metrics") == ScrapeTarget("ingress", "h:8080", "/metrics", "https")
    assert scrape_target("w", "h:9100/prefix/").metrics_path == "/prefix/metrics"
    with pytest.raises(ValueError, match="host and port"):
        scrape_target("w", "http://localhost")


def test_prometheus_config_scrapes_every_target_at_the_interval() -> None:
    targets = [scrape_target("ingress", "http://a:1"), scrape_target("workers", "b:2"), scrape_target("workers", "c:3")]
    config = json.loads(prometheus_config(targets, scrape_interval_s=1))  # YAML is a superset of JSON
    assert config["global"]["scrape_interval"] == "1s"
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert jobs["workers"]["static_configs"] == [{"targets": ["b:2", "c:3"]}]
    assert jobs["ingress"]["metrics_path"] == "/metrics" and jobs["ingress"]["scrape_timeout"] == "1s"


def test_parse_matrix_drops_nan_points_and_raises_prometheus_errors() -> None:
    answer = {
        "status": "success",
        "data": {
            "resultType": "matrix",
            "result": [{"metric": {"class": "small"}, "values": [[10, "0.5"], [11, "NaN"], [12, "+Inf"], [13, "1"]]}],
        },
    }
    assert parse_matrix(answer) == [Series(labels={"class": "small"}, points=((10.0, 0.5), (13.0, 1.0)))]
    with pytest.raises(RuntimeError, match="bad_data: parse error"):
        parse_matrix({"status": "error", "errorType": "bad_data", "error": "parse error"})


def test_evaluate_sends_the_dashboards_own_queries_and_explains_what_a_cpu_run_lacks() -> None:
    panels = parse_dashboard(json.loads(DEFAULT_DASHBOARD.read_text()))
    sent: list[tuple[str, float]] = []

    def query(expr: str, start: float, end: float, step: float) -> list[Series]:
        sent.append((expr, step))
        if "gpu" in expr or "kafka_" in expr:
            return []
        return [Series(labels={"class": "small"}, points=((start, 1.0), (end, 2.0)))]

    results = evaluate(panels, query, start=1000.0, end=1120.0, scrape_interval_s=1.0, variables={})
    expected = [t.expr.replace("$__rate_interval", "4s") for p in panels for t in p.targets]
    assert [expr for expr, _ in sent] == expected, "every target, in order, with Grafana's variable substituted"
    assert all(step == 1 for _, step in sent)
    by_title = {r.panel.title: r for r in results}
    gpu = by_title["GPU memory used"]
    assert not gpu.lines and gpu.notes == ["no data: needs an NVIDIA GPU (worker bound to it, nvidia-ml-py)"]
    lag = by_title["Consumer lag per class"]
    assert len(lag.lines) == 1 and lag.notes == ["B: no data: needs kafka-exporter (the docker compose stack)"]
    assert by_title["Time to first token (p50 / p95)"].lines[1].label == "p95 small"


def test_evaluate_says_nothing_came_when_a_brigade_metric_is_empty() -> None:
    panel = Panel("t", "", "s", Grid(0, 0, 12, 8), (Target("A", "sum(brigade_consumer_lag)", ""),))
    [result] = evaluate([panel], lambda *_: [], start=0.0, end=60.0, scrape_interval_s=1.0, variables={})
    assert result.notes == ["no data: nothing in this run"]


def test_default_plan_gives_every_class_clients_and_longer_answers_up_the_classes() -> None:
    plan = default_plan(("small", "medium", "large"), duration_s=120, clients=12)
    assert [c.clients for c in plan.classes] == [6, 4, 3]
    assert all(c.clients >= 1 and c.burst > c.clients for c in plan.classes)
    highs = [c.new_tokens[1] for c in plan.classes]
    assert highs == sorted(highs) and plan.classes[0].new_tokens[0] >= 1
    # builtin:tiny has 512 positions: the longest answer plus a long prompt must fit.
    assert plan.classes[-1].new_tokens[1] + 4 * plan.classes[-1].prompt_words[1] <= 512
    assert 0 < plan.ramp_s < plan.burst_at_s < plan.duration_s


def _png_size(path: Path) -> tuple[int, int]:
    width, height = struct.unpack(">II", path.read_bytes()[16:24])
    return width, height


def test_draw_renders_panels_on_the_grid_with_notes(tmp_path: Path) -> None:
    series = Series(labels={"class": "small"}, points=tuple((100.0 + t, float(t % 7)) for t in range(60)))
    left = PanelResult(Panel("lag", "", "short", Grid(0, 0, 12, 8), ()), lines=[Line("small", 0, series)])
    right = PanelResult(Panel("gpu", "", "bytes", Grid(12, 0, 12, 8), ()), notes=["no data: needs an NVIDIA GPU"])
    out = draw(
        [left, right],
        window=(100.0, 160.0),
        classes=("small",),
        title="t",
        subtitle="s\nt",
        out=tmp_path / "d.png",
    )
    width, height = figure_size([left.panel.grid, right.panel.grid])
    png_w, png_h = _png_size(out)
    assert png_w == round(width * 100) and png_h > round(height * 100), "grid proportions plus the header"
    assert out.stat().st_size < 1_000_000


def test_missing_prometheus_names_the_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no prometheus anywhere
    result = CliRunner().invoke(
        app, ["dashboard", "snapshot", "--ingress", "http://127.0.0.1:9", "--log-dir", str(tmp_path), "--out", "x.png"]
    )
    assert result.exit_code == 1
    assert "apt-get install prometheus" in result.output
    assert not (tmp_path / "x.png").exists()
