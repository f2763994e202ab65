"""Figures 1 and 2's fleet runs on builtin:tiny: a backlog published to Kafka, and the same through the ingress's
HTTP API, each answered whole (every token generated is reported by a ``done``) by one worker at the batch size."""

from __future__ import annotations

from brigade.bench.pipeline import run_through_fleet
from schemas.settings import Settings


async def test_a_backlog_is_answered_whole_through_kafka_and_through_http(settings: Settings) -> None:
    for via_http in (False, True):
        run = await run_through_fleet(
            settings, via_http=via_http, batch_size=4, requests=8, prompt_words=3, new_tokens=5
        )
        assert (run.batch_size, run.requests, run.tokens) == (4, 8, 8 * 5), via_http
        assert run.seconds > 0
