"""A batch's KV cache as rows of one array per past tensor, and a prompt prefilled a chunk at a time.

Rows are left-padded so every row's newest token sits in the last column; the attention mask hides the padding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from consumer.engine.kv_cache import KvEntry
from consumer.engine.sequence import SequenceState

I64 = npt.NDArray[np.int64]
EMPTY_IDS: I64 = np.zeros(0, dtype=np.int64)
EMPTY_MASK: I64 = np.zeros((0, 0), dtype=np.int64)


@dataclass(slots=True)
class Rows:
    """Sequences sharing one KV cache, left-padded so every row's newest token sits in the last column.

    After each model run ``mask`` is as wide as the cache: one column per cached position, 0 on padding.
    """

    seqs: list[SequenceState]
    past: list[npt.NDArray[Any]]
    mask: I64
    next_pos: I64  # the position id of each row's next token
    next_ids: I64  # each row's last sampled token, the next decode step's input

    def compact(self) -> None:
        """Drop finished rows, then the padding columns that no remaining row attends to."""
        keep = [row for row, s in enumerate(self.seqs) if not s.done]
        if len(keep) == len(self.seqs):
            return
        self.seqs = [self.seqs[row] for row in keep]
        if not keep:
            self.past, self.mask = [], self.mask[:0, :0]
            return
        index = np.array(keep, dtype=np.int64)
        self.mask, self.next_pos, self.next_ids = self.mask[index], self.next_pos[index], self.next_ids[index]
        first = int(np.argmax(self.mask.any(axis=0)))
        self.mask = self.mask[:, first:]
        self.past = [np.ascontiguousarray(p[index, :, first:]) for p in self.past]

    def extend(self, other: Rows) -> None:
        """Append ``other``'s rows (continuous batching): the narrower cache is padded on the left."""
        if not other.seqs:
            return
        if not self.seqs:
            self.seqs, self.past, self.mask = other.seqs, other.past, other.mask
            self.next_pos, self.next_ids = other.next_pos, other.next_ids
            return
        width = max(self.mask.shape[1], other.mask.shape[1])
        self.past = [stack_right_aligned(a, b, width, axis=2) for a, b in zip(self.past, other.past, strict=True)]
        self.mask = stack_right_aligned(self.mask, other.mask, width, axis=1)
        self.seqs = [*self.seqs, *other.seqs]
        self.next_pos = np.concatenate([self.next_pos, other.next_pos])
        self.next_ids = np.concatenate([self.next_ids, other.next_ids])


def stack_right_aligned(a: npt.NDArray[Any], b: npt.NDArray[Any], width: int, *, axis: int) -> npt.NDArray[Any]:
    """``a``'s rows over ``b``'s, each right-aligned on ``axis`` in ``width`` columns, zeros on the left.

    One allocation and one copy of each input: the cache of a full batch is tens of megabytes, and a
    pad-then-concatenate would copy it twice on every join.
    """
    shape = list(a.shape)
    shape[0], shape[axis] = a.shape[0] + b.shape[0], width
    out = np.zeros(shape, dtype=a.dtype)
    for rows, part in ((slice(0, a.shape[0]), a), (slice(a.shape[0], None), b)):
        index: list[slice] = [slice(None)] * a.ndim
        index[0], index[axis] = rows, slice(width - part.shape[axis], None)
        out[tuple(index)] = part
    return out


def entry_past(entry: KvEntry, reused: int) -> list[npt.NDArray[Any]]:
    """A cache entry's first ``reused`` positions: all of it, the usual case (the next turn renders this one's
    prompt and reply first), without a copy."""
    if reused == len(entry.ids):
        return list(entry.past)
    return [np.ascontiguousarray(p[:, :, :reused]) for p in entry.past]


@dataclass(slots=True)
class Partial:
    """A prompt prefilled a chunk per step while other sequences decode (``BRIGADE_PREFILL_CHUNK_TOKENS``)."""

    seq: SequenceState
    past: list[npt.NDArray[Any]]  # [1, kv_heads, done, head_dim] each
    done: int  # leading prompt tokens whose keys and values ``past`` holds
    cached: int | None  # of those, how many a KV cache gave (None: no cache was looked in)
    keep: int  # a prefix of the prompt to keep as shared once it has run
