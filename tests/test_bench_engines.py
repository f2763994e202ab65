"""The bench's in-process fleets share one loaded model: a worker's close leaves it open, warm-ups already done
are skipped, and the run's end closes only what it loaded itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from brigade.bench.engines import KeptEngine, KeptEngines
from consumer.engine.onnx_engine import OnnxEngine, load_engine
from schemas.settings import Settings


def test_workers_share_an_engine_until_the_run_ends(model_cache_dir: Path) -> None:
    settings = Settings(model="builtin:tiny", model_cache_dir=model_cache_dir, worker_class="small")
    engines = KeptEngines()
    first, again = engines(settings), engines(settings)
    assert first is again and isinstance(first, KeptEngine)
    inner = first.inner
    assert isinstance(inner, OnnxEngine)
    first.warmup(batch_size=4)
    first.close()  # a worker's drain
    assert inner.session is not None, "still open for the next fleet"
    assert first.warmed == 4
    other = engines(settings.model_copy(update={"ort_allow_spinning": False}))
    assert other is not first, "other session options, another engine"

    loop_engine = load_engine(settings)
    engines.adopt(settings, loop_engine, warmed=32)
    adopted = engines(settings)
    assert isinstance(adopted, KeptEngine) and adopted.inner is loop_engine
    with pytest.raises(RuntimeError, match="closed"):
        _ = inner.session  # the one it replaced was closed then
    engines.close()
    assert loop_engine.session is not None, "an adopted engine is its loader's to close"
    assert isinstance(other, KeptEngine) and isinstance(other.inner, OnnxEngine)
    with pytest.raises(RuntimeError, match="closed"):
        _ = other.inner.session
    loop_engine.close()
