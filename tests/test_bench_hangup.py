"""The abandoned-streams figure against the test broker and redis-server: clients that hang up leave their
requests cancelled, and the figure counts what the worker generated for them from its own metrics."""

from __future__ import annotations

from brigade.bench.hangup import HangupConfig, hangup_json, run_hangup
from schemas.settings import Settings


async def test_hung_up_calls_end_cancelled_and_cost_a_fraction_of_their_ask(settings: Settings) -> None:
    config = HangupConfig(clients=3, max_tokens=300, chunks=3)
    left: list[None] = []
    result = await run_hangup(settings, config, on_client=lambda: left.append(None))
    assert len(left) == 3
    assert result.cancelled == 3, "every call was abandoned before its 300 tokens"
    # Each client read 2 tokens' chunks; the rest is the steps decoded while the hang-up travelled.
    assert 3 * 2 <= result.generated < result.asked == 900
    assert hangup_json(result)["share"] == result.generated / 900
