"""A small deterministic engine that implements the engine Protocol, for driving the worker loop.

Words in, words out: ``encode`` splits on spaces, and each step emits the next word of a fixed
script, so tests know exactly what every stream must hold. It counts ``start`` calls, which is how
tests prove that expired, invalid or redelivered requests cost no compute.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from consumer.engine.forwarding import ForwardingEngine
from consumer.engine.interface import BatchRun, GenerationInput, InferenceEngine, TokenDelta
from schemas.events import FinishReason
from schemas.requests import ChatMessage, SamplingParams, StructuredOutput

WORDS = ("mise", "en", "place", "oui", "chef", "service", "pass", "fire")


def expected_text(n: int) -> str:
    return "".join(f"{WORDS[i % len(WORDS)]} " for i in range(n))


@dataclass
class _Run:
    inputs: list[GenerationInput]
    done: dict[str, int] = field(default_factory=dict)
    produced: dict[str, int] = field(default_factory=dict)
    joined: list[list[str]] = field(default_factory=list)  # request_ids of each join, in order
    joined_after: list[int] = field(default_factory=list)  # steps taken before each join
    steps: int = 0  # steps begun
    gate: threading.Semaphore | None = None  # each step takes a permit first: the test decides when it ends
    fail_at: int | None = None  # this step raises instead of producing tokens
    dropped: list[str] = field(default_factory=list)  # request_ids stopped by ``drop``, in order

    @property
    def finished(self) -> bool:
        return len(self.done) == len(self.inputs)

    @property
    def running(self) -> int:
        return len(self.inputs) - len(self.done)

    peak: int = 0  # most sequences running at once

    def join(self, inputs: Sequence[GenerationInput]) -> None:
        self.joined.append([g.request_id for g in inputs])
        self.joined_after.append(self.steps)
        self.inputs.extend(inputs)

    def drop(self, request_ids: Collection[str]) -> None:
        for rid in request_ids:
            if rid not in self.done and any(g.request_id == rid for g in self.inputs):
                self.done[rid] = self.produced.get(rid, 0)
                self.dropped.append(rid)

    def step(self) -> list[TokenDelta]:
        self.steps += 1
        if self.gate is not None:
            self.gate.acquire()
        if self.steps == self.fail_at:
            raise RuntimeError(f"scripted failure at step {self.steps}")
        self.peak = max(self.peak, self.running)
        out = []
        for g in self.inputs:
            if g.request_id in self.done:
                continue
            n = self.produced.get(g.request_id, 0)
            self.produced[g.request_id] = n + 1
            last = n + 1 >= g.max_new_tokens
            if last:
                self.done[g.request_id] = n + 1
            out.append(
                TokenDelta(
                    request_id=g.request_id,
                    text=f"{WORDS[n % len(WORDS)]} ",
                    completion_tokens=n + 1,
                    finish_reason=FinishReason.LENGTH if last else None,
                )
            )
        return out


class WordEngine:
    """Implements ``InferenceEngine``; thread-safe enough for its executor thread, the intake's and test reads."""

    def __init__(
        self,
        *,
        model_name: str = "test:words",
        max_context: int = 64,
        gate: threading.Semaphore | None = None,
        fail_at: int | None = None,
    ) -> None:
        self._name = model_name
        self._max_context = max_context
        self._gate = gate  # steps of started batches wait for its permits (warm-up does not)
        self._fail_at = fail_at  # the step of each started batch that raises
        self._lock = threading.Lock()
        self.started: list[list[str]] = []  # request_ids of every batch started
        self.runs: list[_Run] = []
        self.warmed_with: int | None = None
        self.closed = False
        self.encoded: list[str] = []  # every text tokenized, in order

    @property
    def model_name(self) -> str:
        return self._name

    @property
    def max_context(self) -> int:
        return self._max_context

    @property
    def vocab_size(self) -> int:
        return 1000

    def encode(self, text: str) -> list[int]:
        self.encoded.append(text)
        return [len(w) for w in text.split()]

    def render_chat(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[dict[str, Any]] | None = None,
        template_kwargs: Mapping[str, Any] | None = None,
    ) -> str:
        return " ".join(f"<{m.role}> {m.content}" for m in messages) + " <assistant>"

    def constraint_error(self, spec: StructuredOutput) -> str | None:
        return "this fake engine constrains nothing"

    def start(self, inputs: Sequence[GenerationInput]) -> BatchRun:
        run = _Run(inputs=list(inputs), gate=self._gate, fail_at=self._fail_at)
        with self._lock:
            self.started.append([g.request_id for g in inputs])
            self.runs.append(run)
        return run

    def warmup(self, *, batch_size: int) -> None:
        run = _Run([GenerationInput(f"w{i}", [1], 2, SamplingParams()) for i in range(batch_size)])
        while not run.finished:
            run.step()
        self.warmed_with = batch_size

    def close(self) -> None:
        self.closed = True

    @property
    def started_ids(self) -> set[str]:
        with self._lock:
            return {rid for batch in self.started for rid in batch}


def test_word_engine_is_deterministic_and_satisfies_the_protocol() -> None:
    engine: InferenceEngine = WordEngine()
    run = engine.start([GenerationInput("a", [1], 3, SamplingParams()), GenerationInput("b", [1], 1, SamplingParams())])
    steps = []
    while not run.finished:
        steps.append(run.step())
    assert [len(s) for s in steps] == [2, 1, 1]
    assert "".join(d.text for s in steps for d in s if d.request_id == "a") == expected_text(3)
    assert steps[-1][-1].finish_reason is FinishReason.LENGTH


class CountingEngine(ForwardingEngine):
    """Wraps a real engine and records which requests were started: proof of "no compute"."""

    def __init__(self, inner: InferenceEngine) -> None:
        super().__init__(inner)
        self._lock = threading.Lock()
        self.started: list[list[str]] = []

    def start(self, inputs: Sequence[GenerationInput]) -> BatchRun:
        with self._lock:
            self.started.append([g.request_id for g in inputs])
        return _CountingRun(self.inner.start(inputs), self)

    @property
    def started_ids(self) -> set[str]:
        with self._lock:
            return {rid for batch in self.started for rid in batch}


class ForwardingRun:
    """A batch run that hands everything to ``inner``: subclasses change one thing about it."""

    def __init__(self, inner: BatchRun) -> None:
        self._inner = inner

    @property
    def finished(self) -> bool:
        return self._inner.finished

    @property
    def running(self) -> int:
        return self._inner.running

    def join(self, inputs: Sequence[GenerationInput]) -> None:
        self._inner.join(inputs)

    def drop(self, request_ids: Collection[str]) -> None:
        self._inner.drop(request_ids)

    def step(self) -> list[TokenDelta]:
        return self._inner.step()


class _CountingRun(ForwardingRun):
    """Counts sequences that join a running batch as started too."""

    def __init__(self, inner: BatchRun, engine: CountingEngine) -> None:
        super().__init__(inner)
        self._engine = engine

    def join(self, inputs: Sequence[GenerationInput]) -> None:
        with self._engine._lock:
            self._engine.started.append([g.request_id for g in inputs])
        super().join(inputs)


class _SlowRun(ForwardingRun):
    def __init__(self, inner: BatchRun, step_s: float) -> None:
        super().__init__(inner)
        self._step_s = step_s

    def step(self) -> list[TokenDelta]:
        time.sleep(self._step_s)  # executor thread: stands in for device time, keeps a batch in flight
        return super().step()


class SlowEngine(CountingEngine):
    """A real engine whose steps take at least ``step_s``: long enough batches to rebalance under."""

    def __init__(self, inner: InferenceEngine, *, step_s: float) -> None:
        super().__init__(inner)
        self._step_s = step_s

    def start(self, inputs: Sequence[GenerationInput]) -> BatchRun:
        return _SlowRun(super().start(inputs), self._step_s)


def test_unseeded_sampling_replays_identically_for_the_same_request() -> None:
    from consumer.intake import replayable_sampling
    from schemas.requests import InferenceRequest

    a = InferenceRequest(request_id="r-1", session_id="s", prompt="x", temperature=0.8)
    again = replayable_sampling(a)
    assert again.seed is not None and again.seed == replayable_sampling(a).seed
    assert replayable_sampling(a.model_copy(update={"request_id": "r-2"})).seed != again.seed
    assert replayable_sampling(a.model_copy(update={"seed": 7})).seed == 7
    assert replayable_sampling(a.model_copy(update={"temperature": 0.0})).seed is None
