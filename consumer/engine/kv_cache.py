"""A finished chat turn's KV cache, kept for its session's next turn.

A session's turns are keyed by ``session_id`` on Kafka, so they land on one partition and, between rebalances,
on one worker: the next turn's prompt (the stored conversation, the reply, the new message) starts with the
tokens this worker has just computed. Keeping their keys and values spares the next turn's prefill all but its
new tokens — the long part of a long conversation's time to first token on any device. vLLM's prefix cache needs
a prefix-aware router in front of its replicas to find the replica that holds a prefix; here the partition is
that router.

Entries are taken, not read: a turn that reuses its session's entry will leave a longer one when it finishes,
and a turn that fails leaves none (the next one computes everything, as it would on another worker). The bound
is bytes of host memory, least recently stored first out.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

# Fewer tokens than this in common: recomputing them is cheaper than copying a cache into the batch.
MIN_REUSED_TOKENS = 16


@dataclass(frozen=True, slots=True)
class KvEntry:
    """The token ids a cache covers, and one array per past input ([1, kv_heads, len(ids), head_dim])."""

    ids: tuple[int, ...]
    past: tuple[npt.NDArray[np.generic], ...]

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.past)


class SessionKvCache:
    """Byte-bounded, one entry per session; ``max_bytes`` 0 keeps nothing."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, KvEntry] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def put(self, key: str, entry: KvEntry) -> None:
        """Keep ``entry`` for ``key`` (replacing what it had), evicting the oldest entries to stay in bounds."""
        self._pop(key)
        if entry.nbytes > self.max_bytes:
            return
        self._entries[key] = entry
        self._bytes += entry.nbytes
        while self._bytes > self.max_bytes:
            self._pop(next(iter(self._entries)))

    def take(self, key: str, prompt: Sequence[int]) -> tuple[KvEntry, int] | None:
        """The entry for ``key`` and how many of ``prompt``'s first tokens it covers, when that is worth reusing
        (at least ``MIN_REUSED_TOKENS``, and never the whole prompt: its last token must be run for its logits).
        The entry leaves the cache either way."""
        entry = self._pop(key)
        if entry is None:
            return None
        reused = min(common_prefix(entry.ids, prompt), len(prompt) - 1)
        return (entry, reused) if reused >= MIN_REUSED_TOKENS else None

    def _pop(self, key: str) -> KvEntry | None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry.nbytes
        return entry


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading ids ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    differ = np.flatnonzero(np.asarray(a[:n], dtype=np.int64) != np.asarray(b[:n], dtype=np.int64))
    return int(differ[0]) if differ.size else n
