"""The replica figures against the real broker and redis-server: consumers added to one group each get
partitions before the timed backlog, every request is answered, and a cold start is timed to /readyz 200."""

from __future__ import annotations

import pytest

from brigade.bench.scaleout import (
    ColdStartConfig,
    ScaleoutConfig,
    ScaleoutResult,
    ScaleoutRun,
    run_cold_starts,
    run_scaleout,
    scaleout_json,
)
from schemas.settings import Settings

pytestmark = pytest.mark.slow


def test_ratios_are_against_the_first_run() -> None:
    runs = [ScaleoutRun(1, (4,), 10, 100, 2.0), ScaleoutRun(2, (2, 2), 10, 100, 1.25)]
    result = ScaleoutResult(config=ScaleoutConfig(), runs=runs)
    assert result.ratios() == {1: 1.0, 2: 1.6}
    assert (
        scaleout_json(result)["runs"][1] | {"tokens_per_s": 80.0, "requests_per_s": 8.0}
        == scaleout_json(result)["runs"][1]
    )


def test_scaleout_spreads_the_backlog_over_every_consumer(settings: Settings) -> None:
    config = ScaleoutConfig(consumers=(1, 2), partitions=4, requests=24, new_tokens=2, prompt_words=4)
    result = run_scaleout(settings, config)
    assert [r.consumers for r in result.runs] == [1, 2]
    assert [r.partitions_owned for r in result.runs] == [(4,), (2, 2)]
    assert all(r.tokens == 24 * 2 and r.tokens_per_s > 0 for r in result.runs)


def test_cold_start_is_timed_to_readiness(settings: Settings) -> None:
    result = run_cold_starts(settings, ColdStartConfig(models=("builtin:tiny",), repeats=1, fresh_cache=True))
    (each,) = result.warm_cache_s["builtin:tiny"]
    assert 0 < each < 120 and result.fresh_cache_s["builtin:tiny"] > 0
    assert result.medians() == {"builtin:tiny": each}
