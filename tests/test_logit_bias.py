"""logit_bias, min_tokens and stop_token_ids on the ONNX engine (builtin:tiny), against a no-cache
recomputation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from consumer.engine.interface import GenerationInput
from consumer.engine.logprobs import log_softmax
from consumer.engine.onnx_engine import OnnxEngine, load_engine
from schemas.events import FinishReason
from schemas.requests import SamplingParams
from schemas.settings import Settings
from tests.test_engine import no_cache_logits, run_all


@pytest.fixture(scope="module")
def engine(model_cache_dir: Path) -> Iterator[OnnxEngine]:
    eng = load_engine(Settings(model="builtin:tiny", model_cache_dir=model_cache_dir, device="cpu"))
    yield eng
    eng.close()


def greedy(**extra: object) -> SamplingParams:
    return SamplingParams.model_validate({"temperature": 0.0, "ignore_eos": True, **extra})


def test_logit_bias_moves_greedy_choices_and_not_the_logprobs(engine: OnnxEngine) -> None:
    prompt = engine.encode("The chef calls the order")
    first = int(np.argmax(no_cache_logits(engine, prompt)))
    forced = engine.tokenizer.token_to_id("Ġchef")
    assert forced is not None and forced != first
    inputs = [
        GenerationInput("plain", prompt, 4, greedy()),
        GenerationInput("banned", prompt, 1, greedy(logit_bias={first: -100})),
        GenerationInput("forced", prompt, 4, greedy(logit_bias={forced: 100}, logprobs=0)),
    ]
    run = engine.start(inputs)
    out = run_all(run)
    assert run.token_ids("plain")[0] == first
    banned = no_cache_logits(engine, prompt)
    banned[first] -= 100
    assert run.token_ids("banned") == [int(np.argmax(banned))]
    assert run.token_ids("forced") == [forced] * 4
    entries = [d.logprob for d in out["forced"] if d.logprob is not None]
    raw = log_softmax(no_cache_logits(engine, prompt))[forced]
    assert entries[0].logprob == pytest.approx(float(raw), abs=1e-4), "logprobs stay the model's own"


def test_min_tokens_masks_end_of_sequence_until_reached(engine: OnnxEngine) -> None:
    prompt = engine.encode("The chef calls the order")
    (eos,) = sorted(engine.files.eos_ids)[:1]
    wants_eos = {eos: 100.0}  # would end every sequence at its first token
    inputs = [
        GenerationInput("eager", prompt, 8, SamplingParams(temperature=0.0, logit_bias=wants_eos)),
        GenerationInput("patient", prompt, 8, SamplingParams(temperature=0.0, logit_bias=wants_eos, min_tokens=3)),
    ]
    run = engine.start(inputs)
    out = run_all(run)
    assert run.token_ids("eager") == [eos] and out["eager"][-1].finish_reason is FinishReason.STOP
    patient = run.token_ids("patient")
    assert len(patient) == 4 and eos not in patient[:3] and patient[3] == eos
    assert out["patient"][-1].finish_reason is FinishReason.STOP


def test_stop_token_ids_end_the_sequence_as_end_of_sequence_does(engine: OnnxEngine) -> None:
    """The request's own stop ids end it (their text not sent) even with ignore_eos, and not before min_tokens."""
    prompt = engine.encode("The chef calls the order")
    plain = engine.start([GenerationInput("plain", prompt, 8, greedy())])
    run_all(plain)
    tokens = plain.token_ids("plain")
    stop = next(t for i, t in enumerate(tokens) if i >= 2 and t not in tokens[:i])  # first seen at index >= 2
    at = tokens.index(stop)
    inputs = [
        GenerationInput("stopped", prompt, 8, greedy(stop_token_ids=[stop])),
        GenerationInput("held", prompt, 8, greedy(stop_token_ids=[stop], min_tokens=at + 2)),
    ]
    run = engine.start(inputs)
    out = run_all(run)
    assert run.token_ids("stopped") == tokens[: at + 1] and out["stopped"][-1].finish_reason is FinishReason.STOP
    assert "".join(d.text for d in out["stopped"]) == engine.tokenizer.decode(tokens[:at])
    held = run.token_ids("held")
    assert len(held) > at + 1 and stop not in held[: at + 2], "masked until min_tokens: another token took its place"


def test_special_tokens_are_text_only_when_the_request_keeps_them(engine: OnnxEngine) -> None:
    """vLLM's skip_special_tokens: false keeps a generated special token's text (what a parser reading Mistral's
    [TOOL_CALLS] needs); by default it is dropped. Forced here with ignore_eos, so end-of-sequence is text."""
    (special,) = sorted(engine.files.eos_ids)[:1]
    name = engine.tokenizer.id_to_token(special)
    assert name is not None and name.startswith("<|")
    prompt = engine.encode("The chef calls the order")
    inputs = [
        GenerationInput("kept", prompt, 3, greedy(logit_bias={special: 100}, skip_special_tokens=False)),
        GenerationInput("dropped", prompt, 3, greedy(logit_bias={special: 100})),
    ]
    run = engine.start(inputs)
    out = run_all(run)
    assert run.token_ids("kept") == run.token_ids("dropped") == [special] * 3
    assert "".join(d.text for d in out["kept"]) == name * 3
    assert "".join(d.text for d in out["dropped"]) == ""
