"""One loaded model for every in-process fleet of a bench run.

Each in-process worker would load its model and warm it at its batch size (on ``builtin:gpt2-small-shape``
about 1 s of ONNX Runtime session creation and 1.5 s of warm-up at batch 32), and a bench run starts several
such fleets. No figure times that (each starts its clock after a warm-up batch of its own; the cold-start
figure runs real processes), so the fleets share one engine per model: a worker's ``close`` leaves it open, and
its warm-up is skipped where the engine was warmed at that batch size or more. ``KeptEngines.close`` releases
them at the end of the run.
"""

from __future__ import annotations

from consumer.engine.forwarding import ForwardingEngine
from consumer.engine.interface import InferenceEngine
from consumer.worker import default_engine_factory
from schemas.settings import Settings


class KeptEngine(ForwardingEngine):
    """An engine a worker may use and "close" without ending it."""

    def __init__(self, engine: InferenceEngine, *, warmed: int = 0, owned: bool = True) -> None:
        super().__init__(engine)
        self.warmed = warmed  # the largest batch size warmed so far
        self.owned = owned  # False: its loader closes it, not ``KeptEngines.close``

    def warmup(self, *, batch_size: int) -> None:
        if batch_size > self.warmed:
            self.inner.warmup(batch_size=batch_size)
            self.warmed = batch_size

    def close(self) -> None:
        """Left open for the next fleet: ``KeptEngines.close`` ends it."""


class KeptEngines:
    """The engine factory of a bench run's in-process workers: one engine per model and device."""

    def __init__(self) -> None:
        self._engines: dict[tuple[str, str, bool], KeptEngine] = {}

    def __call__(self, settings: Settings) -> InferenceEngine:
        key = _key(settings)
        if key not in self._engines:
            self._engines[key] = KeptEngine(default_engine_factory(settings))
        return self._engines[key]

    def adopt(self, settings: Settings, engine: InferenceEngine, *, warmed: int) -> None:
        """Serve ``settings``' workers with an engine loaded elsewhere (the engine loop's), warmed up to ``warmed``;
        its loader still closes it. One this loaded for them before is closed."""
        replaced = self._engines.get(_key(settings))
        if replaced is not None and replaced.owned:
            replaced.inner.close()
        self._engines[_key(settings)] = KeptEngine(engine, warmed=warmed, owned=False)

    def close(self) -> None:
        for kept in self._engines.values():
            if kept.owned:
                kept.inner.close()
        self._engines.clear()


def _key(settings: Settings) -> tuple[str, str, bool]:
    cls = settings.worker_class
    return settings.model_for(cls), settings.device_for(cls), settings.ort_allow_spinning
