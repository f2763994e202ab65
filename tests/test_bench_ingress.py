"""Figure 4 at toy size against the real broker: every side, every round, its load generator in a child process."""

from __future__ import annotations

from brigade.bench.ingress import IngressConfig, run_ingress_figure
from brigade.eventloop import resolve
from schemas.settings import Settings


def test_every_side_publishes_every_request_in_every_round(settings: Settings) -> None:
    config = IngressConfig(requests=24, concurrency=4, prompt_words=6, warmup=4, batch=4, one_cpu=False, rounds=2)
    seen: list[str] = []
    result = run_ingress_figure(settings, config, on_side=seen.append)
    assert seen == ["ingress", "bare", "batched"] * 2  # the sides take turns
    for side in (result.ingress, result.bare, result.batched):
        assert side is not None and (side.sent, side.accepted) == (24, 24) and side.seconds > 0
    assert {name: len(rates) for name, rates in result.rounds.items()} == {"ingress": 2, "bare": 2, "batched": 2}
    assert result.ingress.accepted_per_s in result.rounds["ingress"]  # a measured round, not an average
    assert result.event_loop == resolve(settings.event_loop, "ingress") and result.batched_ratio is not None
