"""The shared-system-prompt figure against the test broker and redis-server: both sides render the same prompts,
and from the third conversation on the first side takes the system prompt's blocks from the cache."""

from __future__ import annotations

from pathlib import Path

from brigade.bench.plots import plot_shared_prefix
from brigade.bench.sharedprefix import (
    SharedPrefixConfig,
    run_shared_prefix,
    shared_prefix_json,
    shared_prefix_line,
)
from consumer.engine.kv_cache import BLOCK_TOKENS
from schemas.settings import Settings


async def test_conversations_after_the_second_read_the_system_prompt_from_the_cache(
    settings: Settings, tmp_path: Path
) -> None:
    config = SharedPrefixConfig(requests=4, system_words=60, message_words=8, new_tokens=3)
    requests: list[None] = []
    result = await run_shared_prefix(settings, config, on_request=lambda: requests.append(None))
    assert len(requests) == 2 * 4, "every conversation of both sides"
    assert result.cached_tokens[:2] == [0, 0], "the first leaves nothing, the second keeps what it shares"
    kept = result.cached_tokens[2]
    assert kept >= 2 * BLOCK_TOKENS and kept % BLOCK_TOKENS == 0 and result.cached_tokens[2:] == [kept] * 2
    assert kept < min(result.prompt_tokens), "the user messages differ: only the system prompt is shared"
    assert all(ms > 0 for ms in (*result.shared_ttft_ms, *result.computed_ttft_ms))
    assert shared_prefix_json(result)["speedup"] == result.speedup
    assert "4 conversations" in shared_prefix_line(result)
    assert plot_shared_prefix(result, tmp_path / "sharedprefix.png").stat().st_size > 0
