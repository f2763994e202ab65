"""Figure 5's parts: the seeded length mix, the median of repeats, and one small run through a real worker."""

from __future__ import annotations

from dataclasses import replace

from brigade.bench.engine_loop import LoopResult
from brigade.bench.mixed import MixedConfig, run_mode
from brigade.bench.rounds import median_run
from schemas.settings import Settings


def test_the_length_mix_is_seeded_and_spans_the_range() -> None:
    config = MixedConfig()
    lengths = config.new_tokens()
    assert lengths == MixedConfig().new_tokens()  # both schedulers get the same backlog
    assert len(lengths) == config.requests and min(lengths) >= 8 and max(lengths) <= 256
    assert max(lengths) - min(lengths) > 128  # a real mix, not one length
    assert replace(config, seed=6).new_tokens() != lengths


def test_median_run_keeps_the_middle_one() -> None:
    runs = [LoopResult(batch_size=32, requests=1, tokens=t, seconds=1.0) for t in (300, 100, 200)]
    assert median_run(runs, lambda r: r.tokens_per_s).tokens == 200
    assert median_run(runs[:2], lambda r: r.tokens_per_s).tokens == 100  # an even count keeps the lower middle


async def test_one_mode_runs_the_whole_backlog_through_a_worker(settings: Settings, topics: list[str]) -> None:
    config = MixedConfig(requests=6, min_new_tokens=2, max_new_tokens=12, prompt_words=4, batch_size=2)
    result = await run_mode(settings, config, "continuous")
    assert result.tokens == sum(config.new_tokens())
    assert result.ttft_ms["n"] == 6 and len(result.ttft_samples_ms) == 6
    assert 0 < result.ttft_ms["p50"] <= result.seconds * 1000


def test_pipeline_efficiency_is_the_median_of_rounds_run_back_to_back() -> None:
    from brigade.bench.report import BenchReport
    from brigade.bench.runner import BenchConfig

    report = BenchReport(config=BenchConfig(model="m"), machine={})
    report.engine[32] = LoopResult(batch_size=32, requests=1, tokens=100, seconds=1.0)
    report.pipeline = LoopResult(batch_size=32, requests=1, tokens=50, seconds=1.0)
    assert report.ratios()["pipeline_efficiency"] == 0.5  # medians of separate runs, without rounds
    report.paired["pipeline_efficiency"] = [0.95, 0.7, 0.91]
    assert report.ratios()["pipeline_efficiency"] == 0.91
