"""Log-probabilities of generated tokens (``logprobs``) and of prompt tokens (``prompt_logprobs``), for the
requests that ask.

Taken from the model's logits as they come out (the ids the engine never samples masked), before
temperature, penalties and truncation: vLLM's default ("raw" logprobs), so a figure does not move with the
sampling settings and is the one an evaluation harness expects from a model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from schemas.events import PromptLogprob, TokenLogprob, TopLogprob

FLOOR = -9999.0  # a masked id's -inf, as vLLM's OpenAI server writes it: JSON has no infinity
F64 = npt.NDArray[np.float64]


def log_softmax(logits: npt.NDArray[np.floating]) -> F64:
    """Over the last axis, in float64 (a new array: the caller's logits are adjusted in place afterwards)."""
    z: F64 = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    z -= np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return z


def most_likely(row: F64, k: int) -> npt.NDArray[np.int64]:
    """The ``k`` ids of highest log-probability, most likely first (ties by id, so the order is stable)."""
    k = min(k, row.shape[0])
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    top = np.argpartition(-row, k - 1)[:k]
    return top[np.lexsort((top, -row[top]))].astype(np.int64)


class TokenText:
    """Each id's text decoded on its own, cached: a request asking for 20 alternatives decodes 21 ids a token.

    Called from the engine's one executor thread only.
    """

    def __init__(self, decode: Callable[[int], str]) -> None:
        self._decode = decode
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            text = self._cache[token_id] = self._decode(token_id)
        return text


def _floored(value: np.float64) -> float:
    return max(float(value), FLOOR)


def entry(row: F64, chosen: int, k: int, text: TokenText) -> TokenLogprob:
    """The generated token's entry: its log-probability in ``row`` and the ``k`` most likely ids'."""
    top = [TopLogprob(token=text(int(i)), id=int(i), logprob=_floored(row[i])) for i in most_likely(row, k)]
    return TokenLogprob(token=text(chosen), id=chosen, logprob=_floored(row[chosen]), top=top)


# Positions whose float64 log-softmax is held at once: a 2048-token prompt over a 50k vocabulary would be 800 MB
# in one piece, 100 MB in these.
_PROMPT_CHUNK = 256


def prompt_entries(
    logits: npt.NDArray[np.floating], ids: Sequence[int], k: int, text: TokenText
) -> list[PromptLogprob]:
    """Each prompt token's entry: the first has no log-probability (nothing precedes it); token i's comes from
    ``logits[i - 1]``, the model's output at the position before it (``logits``: [len(ids) - 1, vocab] or more
    rows, the extra ones ignored)."""
    out = [PromptLogprob(token=text(ids[0]), id=ids[0])] if ids else []
    for start in range(0, len(ids) - 1, _PROMPT_CHUNK):
        rows = log_softmax(logits[start : min(start + _PROMPT_CHUNK, len(ids) - 1)])
        for offset, row in enumerate(rows):
            scored = entry(row, ids[start + offset + 1], k, text)
            out.append(PromptLogprob(token=scored.token, id=scored.id, logprob=scored.logprob, top=scored.top))
    return out
