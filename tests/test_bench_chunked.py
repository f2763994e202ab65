"""The chunked-prefill figure on builtin:tiny: each side's schedule (steps from the join to the long prompt's first
token) is what its chunk size makes it, and the report carries every side."""

from __future__ import annotations

from pathlib import Path

from brigade.bench.chunked import ChunkedConfig, chunked_json, chunked_line, run_chunked
from schemas.settings import Settings


def test_each_side_takes_the_steps_its_chunk_size_makes(model_cache_dir: Path) -> None:
    config = ChunkedConfig(running=3, running_words=4, long_tokens=100, long_new_tokens=2, chunks=(0, 32, 16), rounds=2)
    trials: list[None] = []
    settings = Settings(model="builtin:tiny", model_cache_dir=model_cache_dir, device="cpu")
    result = run_chunked(settings, config, on_trial=lambda: trials.append(None))
    assert len(trials) == 6 and result.long_prompt_tokens == 100
    # at once: one step; in chunks of c: ceil(100 / c) chunks with a decode step of the others between them
    steps = {c: {t.steps_to_first_token for t in ts} for c, ts in result.trials.items()}
    assert steps == {0: {1}, 32: {2 * 4 - 1}, 16: {2 * 7 - 1}}
    for trials_of_side in result.trials.values():
        for t in trials_of_side:
            assert t.long_ttft_s > 0 and t.longest_wait_s > 0
    assert result.smallest == 16 and result.wait_cut > 0
    written = chunked_json(result)
    assert set(written["sides"]) == {"at once", "chunks of 32", "chunks of 16"}
    assert "chunks of 16" in chunked_line(result)
