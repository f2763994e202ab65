"""The structured-output figure's arithmetic on builtin:tiny: both sides generate the same tokens (no
constrained answer can end early), so the ratio compares the per-step cost alone."""

from __future__ import annotations

from pathlib import Path

from brigade.bench.structured import StructuredConfig, run_structured, structured_json
from consumer.engine.onnx_engine import load_engine
from schemas.settings import Settings


def test_free_and_constrained_sides_generate_the_same_tokens(model_cache_dir: Path) -> None:
    engine = load_engine(Settings(model="builtin:tiny", model_cache_dir=model_cache_dir, device="cpu"))
    config = StructuredConfig(batch_size=4, requests=8, prompt_words=4, new_tokens=6, rounds=2)
    runs: list[None] = []
    result = run_structured(engine, config, on_run=lambda: runs.append(None))
    engine.close()
    assert len(runs) == 4 and len(result.free) == len(result.constrained) == 2
    assert {r.tokens for r in result.free + result.constrained} == {8 * 6}
    assert len(result.paired) == 2 and result.ratio > 0
    written = structured_json(result)
    assert written["ratio"] == result.ratio and written["constraint"] == {
        "json_schema": {"type": "string", "minLength": 4096}
    }
