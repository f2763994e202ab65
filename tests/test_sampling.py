"""Choosing tokens: top-p keeps exactly the nucleus, seeded draws repeat, greedy rows are argmax."""

from __future__ import annotations

import numpy as np
import pytest

from consumer.engine.sampling import choose_tokens, make_generator, nucleus, sample_row
from schemas.requests import SamplingParams


@pytest.mark.parametrize(
    ("probs", "top_p", "kept"),
    [
        ([0.1, 0.5, 0.3, 0.1], 0.5, [1]),
        ([0.1, 0.5, 0.3, 0.1], 0.6, [1, 2]),
        ([0.1, 0.5, 0.3, 0.1], 0.8, [1, 2]),  # reaching top_p exactly is enough
        ([0.1, 0.5, 0.3, 0.1], 0.85, [1, 2, 0]),  # ties: the lower id first
        ([0.1, 0.5, 0.3, 0.1], 1.0, [0, 1, 2, 3]),
        ([2.0, 6.0, 2.0], 0.5, [1]),  # unnormalized weights are fine
    ],
)
def test_nucleus_keeps_the_smallest_set_reaching_top_p(probs: list[float], top_p: float, kept: list[int]) -> None:
    ids, p = nucleus(np.array(probs), top_p)
    assert ids.tolist() == kept
    assert p.sum() == pytest.approx(1.0)
    expected = np.array(probs)[kept]
    np.testing.assert_allclose(p, expected / expected.sum())


def test_nucleus_over_a_large_vocabulary_matches_a_full_sort() -> None:
    rng = np.random.default_rng(0)
    for peaked in (1.0, 6.0):  # the fast path (nucleus in the top few hundred) and the full-sort fallback
        weights = np.exp(rng.standard_normal(50_000) * peaked)
        probs = weights / weights.sum()
        ids, _ = nucleus(probs, 0.9)
        order = np.argsort(-probs, kind="stable")
        n = int(np.searchsorted(np.cumsum(probs[order]), 0.9)) + 1
        assert sorted(ids.tolist()) == sorted(order[:n].tolist())


def test_sampling_never_leaves_the_nucleus_and_repeats_with_a_seed() -> None:
    logits = np.log(np.array([0.05, 0.6, 0.3, 0.05]))
    params = SamplingParams(temperature=1.0, top_p=0.85, seed=7)
    draws = [sample_row(logits, params, np.random.default_rng(params.seed)) for _ in range(3)]
    assert len(set(draws)) == 1
    rng = np.random.default_rng(1)
    assert {sample_row(logits, params, rng) for _ in range(200)} == {1, 2}


def test_low_temperature_approaches_greedy() -> None:
    logits = np.array([1.0, 3.0, 2.9])
    rng = np.random.default_rng(3)
    cold = SamplingParams(temperature=0.01)
    assert {sample_row(logits, cold, rng) for _ in range(50)} == {1}


def test_choose_tokens_mixes_greedy_and_sampled_rows() -> None:
    logits = np.array([[0.0, 5.0, 1.0], [9.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    greedy, sampled = SamplingParams(temperature=0.0), SamplingParams(temperature=1.0, seed=5)
    params = [greedy, greedy, sampled]
    first = choose_tokens(logits, params, [make_generator(p) for p in params])
    again = choose_tokens(logits, params, [make_generator(p) for p in params])
    assert first[:2].tolist() == [1, 0]
    assert first.tolist() == again.tolist()
    assert make_generator(greedy) is None
