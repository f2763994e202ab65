"""Structured output's cost: the engine loop free, then with every sequence constrained, in alternating rounds.

The constraint is a JSON string of at least 4096 characters, so no answer can end before ``new_tokens``: both
sides generate the same number of tokens at the same batch occupancy, and the difference is the per-step
work of structured output (each row's mask computed by llguidance and applied before sampling, and each token
consumed by its matcher). Inside a string most of the vocabulary is allowed, the state most of a JSON
answer's tokens are written in. The first constrained batch (llguidance's tokenizer and the grammar's
compilation, once per engine) is warmed up untimed, as a worker pays it once.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from brigade.bench.engine_loop import LoopResult, engine_loop
from consumer.engine.interface import InferenceEngine
from schemas.requests import SamplingParams, StructuredOutput

LONG_STRING = StructuredOutput(json_schema={"type": "string", "minLength": 4096})


@dataclass(frozen=True, slots=True)
class StructuredConfig:
    batch_size: int = 32
    requests: int = 64
    prompt_words: int = 24
    new_tokens: int = 32
    rounds: int = 3

    @classmethod
    def quick(cls) -> StructuredConfig:
        return cls(requests=32, new_tokens=8, rounds=1)


@dataclass
class StructuredResult:
    config: StructuredConfig
    free: list[LoopResult] = field(default_factory=list)
    constrained: list[LoopResult] = field(default_factory=list)

    @property
    def paired(self) -> list[float]:
        """Constrained over free tokens/s, round by round."""
        return [c.tokens_per_s / f.tokens_per_s for c, f in zip(self.constrained, self.free, strict=True)]

    @property
    def ratio(self) -> float:
        return statistics.median(self.paired) if self.paired else 0.0


def run_structured(
    engine: InferenceEngine, config: StructuredConfig, *, on_run: Callable[[], None] | None = None
) -> StructuredResult:
    result = StructuredResult(config=config)
    free = SamplingParams(temperature=0.0, ignore_eos=True)
    bound = free.model_copy(update={"structured_output": LONG_STRING})
    b, words, new = config.batch_size, config.prompt_words, config.new_tokens
    engine_loop(engine, batch_size=b, requests=b, prompt_words=words, new_tokens=new, sampling=bound)  # warm-up
    for _ in range(config.rounds):
        for side, sampling in ((result.free, free), (result.constrained, bound)):
            run = engine_loop(engine, batch_size=b, requests=config.requests, prompt_words=words, new_tokens=new,
                              sampling=sampling)  # fmt: skip
            side.append(run)
            if on_run is not None:
                on_run()
    return result


def structured_json(result: StructuredResult) -> dict[str, Any]:
    def side(runs: list[LoopResult]) -> list[dict[str, Any]]:
        return [{**asdict(r), "tokens_per_s": r.tokens_per_s} for r in runs]

    return {
        "config": asdict(result.config),
        "constraint": LONG_STRING.model_dump(exclude_none=True),
        "free": side(result.free),
        "constrained": side(result.constrained),
        "paired": result.paired,
        "ratio": result.ratio,
    }


def structured_line(result: StructuredResult, model: str) -> str:
    free = statistics.median(r.tokens_per_s for r in result.free)
    bound = statistics.median(r.tokens_per_s for r in result.constrained)
    cfg = result.config
    rounds = ", ".join(f"{p:.2f}" for p in result.paired)
    return (
        f"structured output on {model}: [bold]{result.ratio:.2f}[/] of free generation's tokens/s (engine loop, "
        f"batch {cfg.batch_size}, every sequence constrained to a JSON string; {bound:.1f} vs {free:.1f} "
        f"tokens/s; rounds {rounds})"
    )
