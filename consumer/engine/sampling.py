"""Choosing next tokens from a batch's logits: greedy rows at once, sampled rows with their own generator.

Each sampled sequence draws from its own ``numpy.random.Generator`` (seeded from the request), so a
seeded request gives the same tokens whatever else shares its batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from schemas.requests import SamplingParams

FloatArray = npt.NDArray[np.float32] | npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# Sorting a 50k vocabulary per row per step is what makes naive top-p slow. The nucleus is almost always
# inside the few hundred most likely ids, so partition and sort those first, widening only when it is not.
_NUCLEUS_CANDIDATES = (256, 4096)


def make_generator(params: SamplingParams) -> np.random.Generator | None:
    """None for greedy requests: they draw nothing."""
    if params.temperature == 0.0:
        return None
    return np.random.default_rng(params.seed)


def softmax(logits: FloatArray, temperature: float | FloatArray) -> npt.NDArray[np.float32]:
    """Over the last axis; ``temperature`` a scalar or one per row (shape [rows, 1]).

    float32 halves the cost over [32, 50k] logits each step; the sums that pick a token are float64.
    """
    z: npt.NDArray[np.float32] = np.asarray(logits, dtype=np.float32) / np.float32(temperature)
    z -= z.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    return z


def nucleus(probs: FloatArray, top_p: float) -> tuple[IntArray, npt.NDArray[np.float64]]:
    """The smallest set of most likely ids whose probability reaches ``top_p``, most likely first.

    Returns the ids and their probabilities renormalized to sum to 1. ``top_p`` 1 keeps every id.
    """
    probs = np.asarray(probs, dtype=np.float64)
    probs = probs / probs.sum()
    n = probs.shape[0]
    if top_p >= 1.0:
        return np.arange(n, dtype=np.int64), probs.astype(np.float64)
    candidates = np.arange(n, dtype=np.int64)
    for k in _NUCLEUS_CANDIDATES:
        if k >= n:
            break
        top = np.argpartition(-probs, k - 1)[:k].astype(np.int64)
        if probs[top].sum() >= top_p:
            candidates = top
            break
    order = candidates[np.argsort(-probs[candidates], kind="stable")]
    # First position where the running total reaches top_p, included (as Hugging Face's TopPLogitsWarper).
    keep = int(np.searchsorted(np.cumsum(probs[order]), top_p)) + 1
    kept = order[: min(keep, len(order))]
    p = probs[kept]
    return kept, p / p.sum()


class Seen:
    """The token ids one sequence has seen, kept up to date token by token for the penalties, so a step costs
    the output's distinct ids and not a fresh scan of the prompt."""

    def __init__(self, prompt_ids: Sequence[int]) -> None:
        self._known = set(prompt_ids)
        self.prompt_and_output: IntArray = np.fromiter(self._known, dtype=np.int64, count=len(self._known))
        self.output_counts: dict[int, int] = {}

    def add(self, token_id: int) -> None:
        self.output_counts[token_id] = self.output_counts.get(token_id, 0) + 1
        if token_id not in self._known:
            self._known.add(token_id)
            self.prompt_and_output = np.append(self.prompt_and_output, token_id)


def penalize(logits: FloatArray, params: SamplingParams, seen: Seen) -> None:
    """Adjust one row of logits in place from what the sequence has seen, as vLLM does: the repetition penalty
    (Hugging Face's: divide a positive logit, multiply a negative one) over prompt and output tokens, then
    OpenAI's frequency and presence penalties over output tokens only."""
    vocab = logits.shape[-1]
    r = params.repetition_penalty
    if r is not None and r != 1.0:
        ids = seen.prompt_and_output
        ids = ids[ids < vocab]
        x = logits[ids]
        logits[ids] = np.where(x > 0, x / r, x * r)
    if seen.output_counts and (params.frequency_penalty or params.presence_penalty):
        counts = seen.output_counts
        ids = np.fromiter(counts, dtype=np.int64, count=len(counts))
        times = np.fromiter(counts.values(), dtype=np.float32, count=len(counts))
        inside = ids < vocab
        logits[ids[inside]] -= (params.frequency_penalty or 0.0) * times[inside] + (params.presence_penalty or 0.0)


def truncate(probs: FloatArray, top_k: int | None, min_p: float | None) -> FloatArray:
    """Zero every probability outside the ``top_k`` most likely (ties at the k-th stay) and below ``min_p`` × the
    largest; the rest is left unnormalized, as ``draw`` normalizes."""
    if top_k is not None and 0 < top_k < probs.shape[-1]:
        kth = np.partition(probs, probs.shape[-1] - top_k)[probs.shape[-1] - top_k]
        probs = np.where(probs >= kth, probs, 0.0)
    if min_p:
        probs = np.where(probs >= min_p * probs.max(), probs, 0.0)
    return probs


def draw(probs: FloatArray, params: SamplingParams, rng: np.random.Generator) -> int:
    if params.truncated:
        probs = truncate(probs, params.top_k, params.min_p)
    top_p = params.top_p
    if top_p >= 1.0:  # the whole vocabulary: no sort, no copy
        cumulative = np.cumsum(probs, dtype=np.float64)
        index = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
        return min(index, len(cumulative) - 1)
    ids, p = nucleus(probs, top_p)
    index = int(np.searchsorted(np.cumsum(p), rng.random(), side="right"))
    return int(ids[min(index, len(ids) - 1)])


def sample_row(logits: FloatArray, params: SamplingParams, rng: np.random.Generator) -> int:
    return draw(softmax(logits, params.temperature), params, rng)


def choose_tokens(
    logits: FloatArray,
    params: Sequence[SamplingParams],
    generators: Sequence[np.random.Generator | None],
    seen: Sequence[Seen | None] = (),
) -> IntArray:
    """One next id per row of ``logits`` [batch, vocab]. A row with a ``seen`` entry (a sequence kept one because
    its params are ``penalized``) has its logits adjusted in place first."""
    for row, row_seen in enumerate(seen):
        if row_seen is not None:
            penalize(logits[row], params[row], row_seen)
    chosen: IntArray = np.argmax(logits, axis=-1).astype(np.int64)  # greedy rows: vectorized, the common case
    rows = [row for row, rng in enumerate(generators) if rng is not None]
    if not rows:
        return chosen
    temperatures = np.array([[params[row].temperature] for row in rows])
    probs = softmax(logits[rows], temperatures)  # one vectorized pass for every sampled row
    for probs_row, row in zip(probs, rows, strict=True):
        rng = generators[row]
        assert rng is not None
        chosen[row] = draw(probs_row, params[row], rng)
    return chosen
