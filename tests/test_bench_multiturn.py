"""The multi-turn figure against the test broker and redis-server: all sides render the same prompts, and the
session side's later turns, and the prompt_cache_key side's, take their history from the cache (counted by the
worker's own metrics)."""

from __future__ import annotations

from pathlib import Path

from brigade.bench.multiturn import MultiturnConfig, multiturn_json, multiturn_line, run_multiturn
from brigade.bench.plots import plot_multiturn
from schemas.settings import Settings


async def test_session_turns_reuse_their_history_and_both_sides_render_the_same_prompts(
    settings: Settings, tmp_path: Path
) -> None:
    config = MultiturnConfig(sessions=2, turns=3, message_words=20, new_tokens=6)
    turns: list[None] = []
    result = await run_multiturn(settings, config, on_turn=lambda: turns.append(None))
    assert len(turns) == 3 * 2 * 3, "every turn of the three sides"
    assert result.prompt_tokens[0] < result.prompt_tokens[1] < result.prompt_tokens[2], "each turn adds to the prompt"
    # Turn 1 has no history; turns 2 and 3 reuse theirs: more than a third of all session prompt tokens. The
    # conversation sent whole with a prompt_cache_key renders the same prompts, so it reuses as much.
    assert 0.33 < result.cache_hit_share < 1
    assert result.keyed_hit_share == result.cache_hit_share
    sides = (result.session_ttft_ms, result.whole_ttft_ms, result.keyed_ttft_ms)
    assert all(ms > 0 for side in sides for turn in side for ms in turn)
    out = multiturn_json(result)
    assert len(out["session_ttft_ms_per_turn"]) == 3 and out["last_turn_speedup"] == result.last_turn_speedup
    assert len(out["keyed_ttft_ms_per_turn"]) == 3
    assert "turn 3" in multiturn_line(result)
    assert plot_multiturn(result, tmp_path / "multiturn.png").stat().st_size > 0
