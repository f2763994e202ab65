"""``brigade top``: per-class rows from metric text, rates between scrapes, and one frame from a real fleet."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from prometheus_client import generate_latest
from typer.testing import CliRunner

from brigade.cli import app
from brigade.inprocess import fleet, read_until_final
from brigade.top import ClassSample, histogram_quantile, merge, metrics_url, parse_metrics, render, rows
from consumer.metrics import WorkerMetrics
from producer.metrics import IngressMetrics
from schemas.events import DoneEvent, ErrorCode, ErrorEvent, FinishReason
from schemas.settings import Settings


def worker_text(cls: str, *, tokens: int, batches: list[int], ttfts: list[float], lag: dict[int, int]) -> str:
    m = WorkerMetrics(cost_class=cls)
    m.add_tokens(tokens)
    for b in batches:
        m.observe_batch(b)
    for t in ttfts:
        m.observe_first_token(t)
    for p, n in lag.items():
        m.set_lag(p, n)
    m.set_running(batches[-1] if batches else 0)
    m.set_waiting(3)
    return generate_latest(m.registry).decode()


def ingress_text(lags: dict[str, int]) -> str:
    m = IngressMetrics()
    for cls, n in lags.items():
        m.lag.labels(cls).set(n)
    m.requests.labels("small", "accepted").inc(5)
    return generate_latest(m.registry).decode()


CAPTURED_INGRESS = """\
# HELP brigade_class_lag Backlog of a class as the ingress sees it.
# TYPE brigade_class_lag gauge
brigade_class_lag{class="small"} 12.0
brigade_class_lag{class="large"} 0.0
# HELP brigade_ingress_requests_total Requests seen by the ingress.
# TYPE brigade_ingress_requests_total counter
brigade_ingress_requests_total{class="small",outcome="accepted"} 40.0
"""


def test_parse_worker_metrics() -> None:
    snap = parse_metrics(worker_text("small", tokens=120, batches=[4, 8], ttfts=[0.03, 0.07, 0.2], lag={0: 5, 1: 2}))
    s = snap["small"]
    assert s.tokens == 120
    assert s.batch_sum == 12 and s.batch_count == 2
    assert s.running == 8 and s.waiting == 3
    assert s.worker_lag == 7
    assert s.workers == 1
    assert s.ingress_lag is None
    assert s.ttft_buckets[float("inf")] == 3


def test_parse_captured_ingress_metrics() -> None:
    snap = parse_metrics(CAPTURED_INGRESS)
    assert snap["small"].ingress_lag == 12 and snap["large"].ingress_lag == 0
    assert snap["small"].workers == 0


def test_merge_sums_workers_and_prefers_the_ingress_lag() -> None:
    a = parse_metrics(worker_text("small", tokens=10, batches=[2], ttfts=[0.05], lag={0: 4}))
    b = parse_metrics(worker_text("small", tokens=30, batches=[6], ttfts=[0.05], lag={1: 1}))
    snap = merge([a, b, parse_metrics(CAPTURED_INGRESS)])
    assert snap["small"].tokens == 40 and snap["small"].workers == 2 and snap["small"].worker_lag == 5
    [large, small] = rows(snap)
    assert small.lag == 12  # the ingress's view of the backlog wins over the workers' partitions
    assert small.batch_mean == pytest.approx(4.0)
    assert small.tokens_per_s is None  # one scrape: no rate
    assert large.lag == 0 and large.workers == 0 and large.batch_mean is None


def test_worker_lag_without_an_ingress() -> None:
    [row] = rows(parse_metrics(worker_text("medium", tokens=0, batches=[], ttfts=[], lag={0: 9})))
    assert row.lag == 9 and row.ttft_p50_s is None


def test_rates_and_window_figures_between_two_scrapes() -> None:
    m = WorkerMetrics(cost_class="small")
    m.add_tokens(100)
    m.observe_batch(32)
    m.observe_first_token(5.0)
    prev = parse_metrics(generate_latest(m.registry).decode())
    m.add_tokens(50)
    m.observe_batch(2)
    m.observe_batch(4)
    m.observe_first_token(0.015)
    done = [DoneEvent(request_id=f"r{i}", seq=0, finish_reason=reason, prompt_tokens=1, completion_tokens=1)
            for i, reason in enumerate([FinishReason.STOP, FinishReason.LENGTH, FinishReason.CANCELLED])]  # fmt: skip
    m.count_finals([*done, ErrorEvent(request_id="e", seq=0, code=ErrorCode.EXPIRED, message="late")])
    m.observe_prefix_cache(queried=100, hit=75)
    cur = parse_metrics(generate_latest(m.registry).decode())
    [row] = rows(cur, prev, seconds=2.0)
    assert row.tokens_per_s == pytest.approx(25.0)
    assert row.finished_per_s == pytest.approx(1.5) and row.errors_per_s == pytest.approx(0.5)
    assert row.cached_share == pytest.approx(0.75) and prev["small"].cache_queries == 0
    assert row.batch_mean == pytest.approx(3.0)  # the interval's batches, not all-time (38 / 3)
    assert row.ttft_p50_s is not None and 0.01 <= row.ttft_p50_s <= 0.02
    # nothing new in the interval: all-time figures rather than blanks
    [idle] = rows(cur, cur, seconds=2.0)
    assert idle.tokens_per_s == 0.0 and idle.batch_mean == pytest.approx(38 / 3)
    assert idle.cached_share == pytest.approx(0.75)
    [before] = rows(prev)
    assert before.cached_share is None, "no chat turn yet: nothing to share"


def test_histogram_quantile() -> None:
    buckets = {0.01: 0.0, 0.02: 10.0, 0.04: 20.0, float("inf"): 20.0}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.02)
    assert histogram_quantile(0.75, buckets) == pytest.approx(0.03)
    assert histogram_quantile(0.5, {0.1: 0.0, float("inf"): 4.0}) == pytest.approx(0.1)
    assert histogram_quantile(0.5, {}) is None
    assert histogram_quantile(0.5, {float("inf"): 0.0}) is None


def test_metrics_url_and_render() -> None:
    assert metrics_url("http://h:9100") == "http://h:9100/metrics"
    assert metrics_url("http://h:9100/") == "http://h:9100/metrics"
    assert metrics_url("http://h:9100/custom") == "http://h:9100/custom"
    table = render(rows({"small": ClassSample()}))
    assert table.row_count == 1


async def test_top_once_against_a_real_fleet(settings: Settings, topics: list[str], redis_client: object) -> None:
    """One frame from the real ingress and worker endpoints after one request went through."""
    settings = settings.model_copy(update={"classes": ("small", "medium", "large")})
    async with fleet(settings, classes=["small"]) as f:
        sid = f"s{uuid.uuid4().hex[:8]}"
        async with httpx.AsyncClient(base_url=f.url) as http:
            body = {"session_id": sid, "prompt": "fire table four", "max_new_tokens": 4, "cost_class": "small"}
            resp = await http.post("/v1/requests", json=body)
            assert resp.status_code == 202
        rid = resp.json()["request_id"]
        await read_until_final(redis_client, settings.names.stream_key(sid), {rid})  # type: ignore[arg-type]
        args = ["top", "--once", "--interval", "0.2", "--ingress", f.url]
        args += ["--worker", f"http://127.0.0.1:{f.worker_ports[0]}"]
        result = await asyncio.to_thread(CliRunner().invoke, app, args)
    assert result.exit_code == 0, result.output
    assert "2/2 endpoints" in result.output
    line = next(ln for ln in result.output.splitlines() if "small" in ln)
    assert "ms" in line  # a TTFT p50 from the worker's histogram
    assert "cached" in result.output and "…" not in result.output, "every header whole in 80 columns"
