"""Choosing tokens: top-p keeps exactly the nucleus, seeded draws repeat, greedy rows are argmax."""

from __future__ import annotations

import numpy as np
import pytest

from consumer.engine.sampling import Seen, choose_tokens, make_generator, nucleus, penalize, sample_row
from schemas.requests import InferenceRequest, SamplingParams


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


def seen_after(prompt_ids: list[int], output_ids: list[int]) -> Seen:
    seen = Seen(prompt_ids)
    for token_id in output_ids:
        seen.add(token_id)
    return seen


def test_repetition_penalty_shrinks_every_seen_logit_towards_less_likely() -> None:
    logits = np.array([2.0, -2.0, 4.0, 1.0], dtype=np.float32)
    penalize(logits, SamplingParams(repetition_penalty=2.0), seen_after([0, 1], [1, 7]))  # 7: past the vocabulary
    # positive logits are divided, negative multiplied: both become less likely; unseen ids are untouched
    assert logits.tolist() == [1.0, -4.0, 4.0, 1.0]


def test_frequency_and_presence_penalties_count_output_tokens_only() -> None:
    logits = np.zeros(4, dtype=np.float32)
    params = SamplingParams(frequency_penalty=0.5, presence_penalty=1.0)
    penalize(logits, params, seen_after([3, 3, 3], [0, 2, 0, 0]))
    assert logits.tolist() == [-(3 * 0.5 + 1.0), 0.0, -(0.5 + 1.0), 0.0]


def test_a_presence_penalty_turns_a_greedy_row_away_from_what_it_repeated() -> None:
    logits = np.array([[3.0, 2.5, 0.0]], dtype=np.float32)
    seen = seen_after([1], [0, 0])
    greedy = SamplingParams(temperature=0.0)
    assert choose_tokens(logits.copy(), [greedy], [None], [seen]).tolist() == [0]
    penalized = greedy.model_copy(update={"presence_penalty": 1.0})
    assert choose_tokens(logits.copy(), [penalized], [None], [seen]).tolist() == [1]


@pytest.mark.parametrize(
    ("update", "reachable"),
    [
        ({"top_k": 2}, {1, 2}),
        ({"top_k": -1}, {0, 1, 2, 3}),  # vLLM's "off"
        ({"min_p": 0.5}, {1, 2}),  # 0.3 ≥ 0.5 × 0.45; 0.15 and 0.1 are not
        ({"top_k": 3, "top_p": 0.8}, {1, 2}),  # top_p over what top_k kept: (0.45 + 0.3) / 0.9 reaches 0.8
    ],
)
def test_top_k_and_min_p_bound_what_sampling_can_reach(update: dict[str, float], reachable: set[int]) -> None:
    logits = np.log(np.array([0.15, 0.45, 0.3, 0.1]))
    params = SamplingParams(temperature=1.0, seed=1).model_copy(update=update)
    rng = np.random.default_rng(2)
    assert {sample_row(logits, params, rng) for _ in range(400)} == reachable


def test_sampling_fields_are_off_by_default_and_left_off_the_wire() -> None:
    request = InferenceRequest(request_id="r", session_id="s", prompt="x")
    sampling = request.sampling()
    assert not sampling.penalized and not sampling.truncated
    assert b"penalty" not in request.to_bytes() and b"top_k" not in request.to_bytes()
    asked = InferenceRequest(request_id="r", session_id="s", prompt="x", top_k=5, repetition_penalty=1.2)
    assert asked.sampling().truncated and asked.sampling().penalized
    assert InferenceRequest.from_bytes(asked.to_bytes()).sampling() == asked.sampling()
