"""The engine's own loop: the ceiling every pipeline figure is compared with."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from consumer.engine.interface import GenerationInput, InferenceEngine
from schemas.requests import SamplingParams

BENCH_WORDS = (
    "the", "pass", "tickets", "rail", "station", "chef", "sauce", "fish",
    "roast", "pastry", "order", "plate", "fire", "call", "expedite",
)  # fmt: skip


def bench_prompt(i: int, *, words: int) -> str:
    """A deterministic prompt, different per request so batches hold different lengths."""
    return " ".join(BENCH_WORDS[(i * 7 + k) % len(BENCH_WORDS)] for k in range(words + i % 5))


@dataclass(frozen=True, slots=True)
class LoopResult:
    batch_size: int
    requests: int
    tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def engine_loop(
    engine: InferenceEngine,
    *,
    batch_size: int,
    requests: int,
    prompt_words: int,
    new_tokens: int,
    on_batch: Callable[[int], None] | None = None,
    sampling: SamplingParams | None = None,
) -> LoopResult:
    """Run ``requests`` prompts through the engine in static batches, no Kafka or Redis; greedy to
    ``new_tokens`` unless ``sampling`` says otherwise."""
    sampling = sampling or SamplingParams(temperature=0.0, ignore_eos=True)
    inputs: Sequence[GenerationInput] = [
        GenerationInput(
            request_id=f"b{i}",
            prompt_ids=engine.encode(bench_prompt(i, words=prompt_words)),
            max_new_tokens=new_tokens,
            sampling=sampling,
        )
        for i in range(requests)
    ]
    tokens = 0
    t0 = time.perf_counter()
    for start in range(0, requests, batch_size):
        run = engine.start(inputs[start : start + batch_size])
        while not run.finished:
            for delta in run.step():
                if delta.finish_reason is not None:
                    tokens += delta.completion_tokens
        if on_batch is not None:
            on_batch(min(batch_size, requests - start))
    return LoopResult(batch_size=batch_size, requests=requests, tokens=tokens, seconds=time.perf_counter() - t0)
