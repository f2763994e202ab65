"""A long prompt joining a decoding batch: prefilled at once, or in chunks with decode steps between them.

``running`` requests decode (greedy, ``ignore_eos``); after a few of their steps one prompt of ``long_tokens``
joins. Prefilled at once, its prefill is one step that every running stream waits out; in chunks
(``BRIGADE_PREFILL_CHUNK_TOKENS``), the running streams wait for one chunk at a time. The engine runs alone (no
Kafka, no Redis): the figure is the engine's schedule. Per side: the longest any running stream waited for a
token from the join until every running stream had its first token after the long prompt's, the long prompt's
time to first token from the join, and the engine steps that took. Each chunk size has its own engine (the
setting is read at load), warmed up untimed through the same schedule once; the sides then alternate by round.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from brigade.bench.engine_loop import BENCH_WORDS, bench_prompt
from consumer.engine.interface import GenerationInput
from consumer.engine.onnx_engine import OnnxEngine, load_engine
from schemas.requests import SamplingParams
from schemas.settings import Settings

GREEDY = SamplingParams(temperature=0.0, ignore_eos=True)


@dataclass(frozen=True, slots=True)
class ChunkedConfig:
    running: int = 8
    running_words: int = 24
    long_tokens: int = 800
    long_new_tokens: int = 8
    chunks: tuple[int, ...] = (0, 512, 256)  # 0: at once, the side the others are compared with
    rounds: int = 3

    @classmethod
    def quick(cls) -> ChunkedConfig:
        return cls(running=4, long_tokens=300, chunks=(0, 128), rounds=1)


@dataclass(frozen=True, slots=True)
class Trial:
    longest_wait_s: float  # the longest a running stream waited for a token around the join
    long_ttft_s: float  # the long prompt's first token, from the join
    steps_to_first_token: int  # engine steps from the join to it: 1 at once, 2 × chunks − 1 in chunks


@dataclass
class ChunkedResult:
    config: ChunkedConfig
    model: str
    long_prompt_tokens: int = 0
    trials: dict[int, list[Trial]] = field(default_factory=dict)  # chunk size (0: at once) → one per round

    def median(self, chunk: int, what: Callable[[Trial], float]) -> float:
        return statistics.median(what(t) for t in self.trials[chunk])

    @property
    def smallest(self) -> int:
        return min(c for c in self.trials if c)

    @property
    def wait_cut(self) -> float:
        """At once over the smallest chunk: how many times shorter the running streams' longest wait got."""
        chunked = self.median(self.smallest, lambda t: t.longest_wait_s)
        return self.median(0, lambda t: t.longest_wait_s) / chunked if chunked else 0.0


def long_prompt(engine: OnnxEngine, tokens: int) -> list[int]:
    text = " ".join(bench_prompt(i, words=len(BENCH_WORDS) * 4) for i in range(tokens // 40 + 1))
    ids = engine.encode(text)
    if len(ids) < tokens:
        raise ValueError(f"the long prompt came out {len(ids)} tokens, short of {tokens}")
    return ids[:tokens]


def trial(engine: OnnxEngine, config: ChunkedConfig, prompt: list[int]) -> Trial:
    running = [
        GenerationInput(f"r{i}", engine.encode(bench_prompt(i, words=config.running_words)), 10_000, GREEDY)
        for i in range(config.running)
    ]
    run = engine.start(running)
    for _ in range(2):  # their prefill and a decode step: they are streaming
        run.step()
    run.join([GenerationInput("long", prompt, config.long_new_tokens, GREEDY)])
    joined = time.perf_counter()
    last = dict.fromkeys((g.request_id for g in running), joined)
    longest, first, steps = 0.0, 0.0, 0
    after: set[str] = set()
    while len(after) < len(running):  # until each running stream has had a token after the long prompt's first
        deltas = run.step()
        now = time.perf_counter()
        steps += first == 0.0
        for d in deltas:
            if d.request_id == "long":
                first = first or now - joined
            elif d.request_id in last:
                longest = max(longest, now - last[d.request_id])
                last[d.request_id] = now
                if first:
                    after.add(d.request_id)
    run.drop([*last, "long"])  # the figure is the join, not the rest of their answers
    return Trial(longest_wait_s=longest, long_ttft_s=first, steps_to_first_token=steps)


def run_chunked(
    settings: Settings, config: ChunkedConfig, *, on_trial: Callable[[], None] | None = None
) -> ChunkedResult:
    engines = {
        c: load_engine(settings.model_copy(update={"prefill_chunk_tokens": c, "kv_cache_mb": 0})) for c in config.chunks
    }
    try:
        any_engine = next(iter(engines.values()))
        prompt = long_prompt(any_engine, config.long_tokens)
        result = ChunkedResult(config=config, model=settings.model, long_prompt_tokens=len(prompt))
        for engine in engines.values():
            engine.warmup(batch_size=config.running + 1)
            trial(engine, config, prompt)  # ONNX Runtime's first use of this schedule's shapes
        for _ in range(config.rounds):
            for c, engine in engines.items():
                result.trials.setdefault(c, []).append(trial(engine, config, prompt))
                if on_trial is not None:
                    on_trial()
        return result
    finally:
        for engine in engines.values():
            engine.close()


def _side(chunk: int) -> str:
    return "at once" if chunk == 0 else f"chunks of {chunk}"


def chunked_json(result: ChunkedResult) -> dict[str, Any]:
    return {
        "config": asdict(result.config),
        "model": result.model,
        "long_prompt_tokens": result.long_prompt_tokens,
        "sides": {_side(c): [asdict(t) for t in trials] for c, trials in result.trials.items()},
        "wait_cut": result.wait_cut,
    }


def chunked_line(result: ChunkedResult) -> str:
    sides = "; ".join(
        f"{_side(c)} {1000 * result.median(c, lambda t: t.longest_wait_s):.0f} ms, its first token "
        f"{1000 * result.median(c, lambda t: t.long_ttft_s):.0f} ms"
        for c in result.trials
    )
    cfg = result.config
    return (
        f"chunked prefill on {result.model}: a {result.long_prompt_tokens}-token prompt joining {cfg.running} "
        f"decoding requests; their longest wait for a token [bold]{result.wait_cut:.1f}×[/] shorter in chunks of "
        f"{result.smallest} than at once ({sides}; medians of {cfg.rounds})"
    )
