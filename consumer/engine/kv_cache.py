"""KV caches kept for the next request: a finished chat turn's for its session's next turn, and prefixes
that several requests start with.

A session's turns are keyed by ``session_id`` on Kafka, so they land on one partition and, between rebalances,
on one worker: the next turn's prompt (the stored conversation, the reply, the new message) starts with the
tokens this worker has just computed. Keeping their keys and values spares the next turn's prefill all but its
new tokens — the long part of a long conversation's time to first token on any device. vLLM's prefix cache needs
a prefix-aware router in front of its replicas to find the replica that holds a prefix; here the partition is
that router.

Entries are taken, not read: a turn that reuses its session's entry will leave a longer one when it finishes,
and a turn that fails leaves none (the next one computes everything, as it would on another worker). The bound
is bytes of host memory, least recently used first out.

Prefixes that different requests share (a system prompt, a few-shot preamble, an agent's tool descriptions) are
kept too, in the same bytes (``SharedPrefixes``): read by every request that starts with one, never taken. A
prefix is kept once a second prompt is seen starting with it, not for every prompt: keeping one is a copy of its
keys and values on the engine's thread, which a prompt nobody repeats would pay for nothing.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

# Fewer tokens than this in common: recomputing them is cheaper than copying a cache into the batch.
MIN_REUSED_TOKENS = 16
# Shared prefixes are found in whole blocks of this many tokens (a prompt's block hashes are its index), and kept
# from two blocks up.
BLOCK_TOKENS = 16
MIN_SHARED_BLOCKS = 2
SHARED_KEY_PREFIX = "shared/"  # never a session's (no Identifier has a "/") nor a prompt_cache_key's


@dataclass(frozen=True, slots=True)
class KvEntry:
    """The token ids a cache covers, and one array per past input ([1, kv_heads, len(ids), head_dim])."""

    ids: tuple[int, ...]
    past: tuple[npt.NDArray[np.generic], ...]

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.past)


class SessionKvCache:
    """Byte-bounded, one entry per key (a session, a prompt_cache_key, a shared prefix); ``max_bytes`` 0 keeps
    nothing."""

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

    def peek(self, key: str) -> KvEntry | None:
        """The entry for ``key``, left in the cache as its most recently used."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

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


class SharedPrefixes:
    """Block-aligned prompt prefixes more than one request has started with, kept in ``cache``'s bytes.

    Each prompt's index is the chain of its whole blocks' hashes (block k's hash covers blocks 0..k). The last
    ``max_sightings`` hashes seen are remembered; a prompt that finds none of its prefixes kept but meets a hash
    an earlier prompt left wants that prefix kept, and the engine keeps it right after the prompt's prefill.
    """

    def __init__(self, cache: SessionKvCache, *, max_sightings: int = 65_536) -> None:
        self._cache = cache
        self._seen: OrderedDict[int, None] = OrderedDict()
        self._max_seen = max_sightings

    def find(self, prompt: Sequence[int]) -> tuple[tuple[KvEntry, int] | None, int]:
        """The longest kept prefix of ``prompt`` with how many of its tokens to reuse (never the prompt's last
        one), or None; and how many leading tokens to keep once the prompt has run: the whole blocks an earlier
        prompt started with too, where that is longer than what was found (a stateless client's conversation,
        resent with one more turn each call), else 0 (and 0 for fewer than ``MIN_SHARED_BLOCKS``)."""
        chain = _chain(prompt)
        hit = None
        for blocks, digest in reversed(chain):
            entry = self._cache.peek(_key(blocks, digest))
            if entry is not None and common_prefix(entry.ids, prompt) == len(entry.ids):
                reused = min(len(entry.ids), len(prompt) - 1)
                hit = (entry, reused) if reused >= MIN_REUSED_TOKENS else None
                break
        shared = 0
        for blocks, digest in chain:
            if digest in self._seen:
                shared = blocks
            self._seen[digest] = None
            self._seen.move_to_end(digest)
        while len(self._seen) > self._max_seen:
            self._seen.popitem(last=False)
        if shared < MIN_SHARED_BLOCKS or (hit is not None and shared * BLOCK_TOKENS <= len(hit[0].ids)):
            return hit, 0
        return hit, shared * BLOCK_TOKENS

    def put(self, entry: KvEntry) -> None:
        """Keep ``entry``, a prefix of whole blocks, for the prompts that start with it."""
        blocks, digest = _chain(entry.ids)[-1]
        self._cache.put(_key(blocks, digest), entry)


def _chain(ids: Sequence[int]) -> list[tuple[int, int]]:
    """(blocks, hash of the first ``blocks`` whole blocks) for each whole block of ``ids``."""
    out: list[tuple[int, int]] = []
    digest = 0
    for blocks in range(1, len(ids) // BLOCK_TOKENS + 1):
        digest = hash((digest, tuple(ids[(blocks - 1) * BLOCK_TOKENS : blocks * BLOCK_TOKENS])))
        out.append((blocks, digest))
    return out


def _key(blocks: int, digest: int) -> str:
    return f"{SHARED_KEY_PREFIX}{blocks}/{digest}"


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading ids ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    differ = np.flatnonzero(np.asarray(a[:n], dtype=np.int64) != np.asarray(b[:n], dtype=np.int64))
    return int(differ[0]) if differ.size else n
