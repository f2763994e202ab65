"""Log-probabilities of generated tokens: the arithmetic, and the engine's against a plain recomputation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from consumer.engine import logprobs
from consumer.engine.interface import GenerationInput
from consumer.engine.logprobs import FLOOR, TokenText, entry, log_softmax, most_likely
from consumer.engine.onnx_engine import OnnxEngine, load_engine
from schemas.requests import SamplingParams
from schemas.settings import Settings
from tests.test_engine import no_cache_logits, run_all


@pytest.fixture(scope="module")
def engine(model_cache_dir: Path) -> Iterator[OnnxEngine]:
    eng = load_engine(Settings(model="builtin:tiny", model_cache_dir=model_cache_dir, device="cpu"))
    yield eng
    eng.close()


def test_log_softmax_is_a_distribution_and_keeps_the_input() -> None:
    logits = np.array([[2.0, 1.0, 0.0, -np.inf], [1000.0, 1000.0, 0.0, 0.0]], dtype=np.float32)
    kept = logits.copy()
    lp = log_softmax(logits)
    assert np.allclose(np.exp(lp).sum(axis=-1), 1.0)
    assert np.isclose(lp[0, 0], 2.0 - np.log(np.exp(2.0) + np.exp(1.0) + 1.0))
    assert np.isclose(lp[1, 0], np.log(0.5)) and lp[0, 3] == -np.inf  # no overflow; a masked id stays impossible
    assert np.array_equal(logits, kept)


def test_most_likely_orders_by_probability_then_id() -> None:
    row = np.log(np.array([0.1, 0.3, 0.1, 0.3, 0.2]))
    assert most_likely(row, 3).tolist() == [1, 3, 4]
    assert most_likely(row, 5).tolist() == [1, 3, 4, 0, 2]
    assert most_likely(row, 50).tolist() == [1, 3, 4, 0, 2]
    assert most_likely(row, 0).tolist() == []


def test_entry_names_the_tokens_and_floors_an_impossible_one() -> None:
    decoded: list[int] = []

    def decode(i: int) -> str:
        decoded.append(i)
        return f"<{i}>"

    text = TokenText(decode)
    row = log_softmax(np.array([0.0, 1.0, -np.inf]))
    e = entry(row, 2, 2, text)
    assert (e.token, e.id, e.logprob) == ("<2>", 2, FLOOR)
    assert [(t.token, t.id) for t in e.top] == [("<1>", 1), ("<0>", 0)]
    assert e.top[0].logprob == pytest.approx(float(row[1]))
    entry(row, 1, 2, text)
    assert sorted(decoded) == [0, 1, 2], "each id decoded once"


def test_engine_logprobs_are_the_models_own_whatever_the_sampling(engine: OnnxEngine) -> None:
    """Greedy and penalized sampled rows asking for logprobs, next to a row that does not: every token of an
    asking row gets the log-softmax of the model's unprocessed logits, from a no-cache recomputation."""
    prompt = engine.encode("The chef calls the order and the pass sends")
    sampled = SamplingParams(temperature=1.3, seed=7, top_k=5, repetition_penalty=1.5, ignore_eos=True, logprobs=4)
    inputs = [
        GenerationInput("greedy", prompt, 6, SamplingParams(temperature=0.0, ignore_eos=True, logprobs=0)),
        GenerationInput("sampled", prompt[:5], 6, sampled),
        GenerationInput("plain", prompt[:3], 6, SamplingParams(temperature=0.0, ignore_eos=True)),
    ]
    run = engine.start(inputs)
    out = run_all(run)
    assert all(d.logprob is None for d in out["plain"])
    for item in inputs[:2]:
        generated = run.token_ids(item.request_id)
        entries = [d.logprob for d in out[item.request_id] if d.logprob is not None]
        assert [e.id for e in entries] == generated and len(generated) == 6
        k = item.sampling.logprobs or 0
        for n, e in enumerate(entries):
            reference = log_softmax(no_cache_logits(engine, [*item.prompt_ids, *generated[:n]]))
            assert e.logprob == pytest.approx(float(reference[e.id]), abs=1e-4)
            assert e.token == engine.tokenizer.decode([e.id], skip_special_tokens=False)
            assert len(e.top) == k
            assert [t.logprob for t in e.top] == pytest.approx([float(reference[t.id]) for t in e.top], abs=1e-4)
            assert [t.logprob for t in e.top] == sorted((t.logprob for t in e.top), reverse=True)
            if e.top:
                assert e.top[0].logprob == pytest.approx(float(reference.max()), abs=1e-4)
            if item.sampling.temperature == 0:  # greedy takes the most likely token
                assert e.logprob == pytest.approx(float(reference.max()), abs=1e-4)


def test_prompt_logprobs_are_each_prompt_tokens_given_the_ones_before(engine: OnnxEngine) -> None:
    """Rows asking for ``prompt_logprobs`` (two lengths, so one is padded) and one that does not, in one batch,
    then a joiner asking mid-run: every prompt token's entry is the log-softmax of the model's output over the
    tokens before it (a no-cache recomputation), and scoring the prompt changes no generated token."""
    prompt = engine.encode("Service! Two covers on table nine, and the soup is up")
    greedy = SamplingParams(temperature=0.0, ignore_eos=True)

    def scored(rid: str, ids: list[int], k: int) -> GenerationInput:
        return GenerationInput(rid, ids, 3, greedy.model_copy(update={"prompt_logprobs": k}))

    batch = [
        scored("scored", prompt, 3),
        scored("short", prompt[:4], 0),
        GenerationInput("plain", prompt[:6], 3, greedy),
    ]
    joiner = scored("joiner", prompt[:7], 1)
    run = engine.start(batch)
    out = run_all(run)
    joined = engine.start([GenerationInput("first", prompt[:2], 4, greedy)])
    joined.step()
    joined.join([joiner])
    out |= run_all(joined)
    assert all(d.prompt_logprobs is None for d in out["plain"] + out["first"])
    for item, generated in [(batch[0], run), (batch[1], run), (joiner, joined)]:
        deltas = out[item.request_id]
        assert all(d.prompt_logprobs is None for d in deltas[1:]), "only the prefill's delta carries them"
        entries = deltas[0].prompt_logprobs
        assert entries is not None and [e.id for e in entries] == item.prompt_ids
        assert entries[0].logprob is None and entries[0].top == []
        k = item.sampling.prompt_logprobs or 0
        for i, e in enumerate(entries[1:], start=1):
            reference = log_softmax(no_cache_logits(engine, item.prompt_ids[:i]))
            assert e.logprob == pytest.approx(float(reference[e.id]), abs=1e-4)
            assert e.token == engine.tokenizer.decode([e.id], skip_special_tokens=False)
            assert [t.id for t in e.top] == most_likely(reference, k).tolist()
        alone = engine.start([GenerationInput("alone", item.prompt_ids, 3, greedy)])
        run_all(alone)
        assert generated.token_ids(item.request_id) == alone.token_ids("alone")


def test_prompt_entries_are_the_same_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Long prompts are scored a few positions at a time; the seams change nothing."""
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(7, 11)).astype(np.float32)
    ids = [int(i) for i in rng.integers(0, 11, size=7)]
    text = TokenText(lambda i: f"<{i}>")
    whole = logprobs.prompt_entries(logits, ids, 2, text)
    monkeypatch.setattr(logprobs, "_PROMPT_CHUNK", 2)
    assert logprobs.prompt_entries(logits, ids, 2, text) == whole
    assert [e.id for e in whole] == ids and whole[0].logprob is None
    assert whole[3].logprob == pytest.approx(float(log_softmax(logits[2])[ids[3]]))
