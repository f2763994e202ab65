"""The pure parts of the benchmark figures: percentiles, the open-loop schedule, hop pairing, figure parsing."""

from __future__ import annotations

import os

import pytest

from brigade.bench.ingress import one_cpu
from brigade.bench.latency import (
    LatencyConfig,
    arrival_schedule,
    hop_latencies,
    latency_prompts,
    percentile,
    stage_times,
    summarize,
)
from brigade.bench.loadgen import chunks_of_work
from brigade.bench.runner import FIGURES, parse_figures
from schemas.events import DoneEvent, FinishReason


def test_percentile_interpolates_like_numpy() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 99) == pytest.approx(3.97)
    assert percentile([7.0], 99) == 7.0


def test_percentile_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summarize() -> None:
    s = summarize([float(i) for i in range(1, 101)])
    assert s["n"] == 100
    assert s["p50"] == pytest.approx(50.5)
    assert s["p99"] == pytest.approx(99.01)
    assert s["min"] == 1.0 and s["max"] == 100.0
    assert summarize([]) == {"n": 0}


def test_arrival_schedule_is_bounded_by_count_and_time() -> None:
    by_count = arrival_schedule(100.0, max_count=50, max_seconds=60.0, seed=1)
    assert len(by_count) == 50
    assert by_count == sorted(by_count) and by_count[0] > 0
    by_time = arrival_schedule(100.0, max_count=10_000, max_seconds=2.0, seed=1)
    assert by_time and by_time[-1] <= 2.0
    assert 120 < len(by_time) < 280  # Poisson, 200 expected: a loose bound, not a flaky one at this seed


def test_arrival_schedule_is_deterministic_per_seed_and_keeps_the_rate() -> None:
    a = arrival_schedule(20.0, max_count=2000, max_seconds=1e9, seed=3)
    assert a == arrival_schedule(20.0, max_count=2000, max_seconds=1e9, seed=3)
    assert a != arrival_schedule(20.0, max_count=2000, max_seconds=1e9, seed=4)
    assert len(a) / a[-1] == pytest.approx(20.0, rel=0.1)
    with pytest.raises(ValueError):
        arrival_schedule(0.0, max_count=1, max_seconds=1.0)


def test_hop_latency_subtracts_the_same_requests_prefill() -> None:
    ttft = {"a": 0.030, "b": 0.050, "c": 0.040}
    prefill = {"a": 0.010, "b": 0.020}
    assert hop_latencies(ttft, prefill) == pytest.approx([0.020, 0.030])


def test_latency_prompts_cover_every_prompt_the_run_sends() -> None:
    cfg = LatencyConfig.quick()
    prompts = latency_prompts(cfg)
    assert len(prompts) == len(set(prompts)) > 1


def test_parse_figures() -> None:
    assert parse_figures(None) == FIGURES
    assert parse_figures([]) == FIGURES
    assert parse_figures(["latency,ingress"]) == ("latency", "ingress")
    assert parse_figures(["ingress", "batching"]) == ("batching", "ingress")
    with pytest.raises(ValueError, match="latncy"):
        parse_figures(["latncy"])


def test_chunks_of_work() -> None:
    assert chunks_of_work(10, 4) == [3, 3, 2, 2]
    assert chunks_of_work(2, 4) == [1, 1]
    assert chunks_of_work(0, 4) == []
    assert sum(chunks_of_work(500, 32)) == 500


def test_stage_times_split_the_time_to_first_token() -> None:
    stamps = {"published_at_ms": 1003, "fetched_at_ms": 1010, "scheduled_at_ms": 1012, "first_token_at_ms": 1020}
    done = DoneEvent(request_id="r", seq=3, finish_reason=FinishReason.LENGTH, prompt_tokens=4, completion_tokens=2,
                     **stamps)  # fmt: skip
    split = stage_times(1000.0, done, 1021.0)
    assert split is not None
    assert list(split.values()) == [3.0, 7.0, 2.0, 8.0, 1.0]
    assert sum(split.values()) == 21.0  # the stages add up to the TTFT
    older = DoneEvent(request_id="r", seq=3, finish_reason=FinishReason.LENGTH, prompt_tokens=4, completion_tokens=2)
    assert stage_times(1000.0, older, 1021.0) is None


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="CPU affinity is Linux-only")
def test_one_cpu_pins_and_offers_a_spare_from_the_allowed_set() -> None:
    allowed = os.sched_getaffinity(0)
    with one_cpu(True) as pinned:
        assert pinned.cpus is not None and os.sched_getaffinity(0) == set(pinned.cpus) <= allowed
        if len(allowed) > 1:
            assert pinned.spare in allowed and pinned.spare not in pinned.cpus
        else:
            assert pinned.spare is None
    assert os.sched_getaffinity(0) == allowed


def test_the_offered_rate_is_a_fixed_rate_when_given_else_a_share_of_capacity() -> None:
    assert LatencyConfig(load=0.5).offered(600.0) == 300.0
    assert LatencyConfig(load=0.5, rate=120.0).offered(600.0) == 120.0  # two builds compare at one load
