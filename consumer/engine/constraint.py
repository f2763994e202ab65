"""Structured output in the engine: one llguidance matcher per constrained sequence, masking its logits row.

Each step the matcher says which tokens keep the answer inside its language; the others get -inf before
the sampler sees the row, so greedy, sampling, penalties and logit_bias all choose among allowed tokens only.
A matcher that has reached the end of its language (only end-of-sequence could follow) ends the sequence at
once, without a step for that token. Compiling a grammar costs ~0.2 ms for a small schema and much more for a
large one, so each engine keeps the last compiled matchers by spec and copies them for new sequences; the
worker's intake compiles a request's spec before it joins, off the step's path.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Collection

import numpy as np
import numpy.typing as npt
from llguidance import LLMatcher, LLTokenizer
from tokenizers import Tokenizer

from brigade.structured import to_grammar
from schemas.requests import StructuredOutput

_CACHED_GRAMMARS = 64


class Constraint:
    """One sequence's matcher and its mask buffer."""

    def __init__(self, matcher: LLMatcher, *, tokenizer_vocab: int, width: int) -> None:
        self._matcher = matcher
        self._width = width  # the logits row: the ids the engine samples from
        self._bits = np.zeros((max(tokenizer_vocab, width) + 31) // 32, dtype=np.int32)

    @property
    def finished(self) -> bool:
        """The answer is complete: nothing but end-of-sequence may follow."""
        return bool(self._matcher.is_stopped())

    def allowed(self) -> npt.NDArray[np.bool_]:
        """Which ids of the logits row may come next."""
        self._matcher.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        bits = np.unpackbits(self._bits.view(np.uint8), bitorder="little")
        return bits[: self._width].astype(np.bool_)

    def mask(self, logits: npt.NDArray[np.floating]) -> None:
        """Disallowed ids to -inf in this row. Should an earlier adjustment (min_tokens holding back the end)
        have left no allowed id above -inf, the grammar wins: its ids are made equally likely."""
        allowed = self.allowed()
        ids = np.flatnonzero(allowed)
        if not len(ids):  # the matcher failed (a parser limit): ``failure`` says why, and the sequence ends
            return
        # Index by the smaller set: on a 50k vocabulary with 8 % allowed, 57 µs against 85 (one row, this CPU).
        if 2 * len(ids) < len(allowed):
            kept = logits[ids]
            logits.fill(-np.inf)
            logits[ids] = kept
        else:
            logits[~allowed] = -np.inf
        if not np.isfinite(logits[ids]).any():
            logits[ids] = 0.0

    @property
    def failure(self) -> str | None:
        """Why the matcher can go no further (the first line of llguidance's message, not its state dump), or
        None: it stays failed once it has."""
        return str(self._matcher.get_error()).splitlines()[0] if self._matcher.is_error() else None

    def consume(self, token_id: int) -> None:
        """Advance past the chosen token; one the grammar did not allow leaves the matcher failed."""
        self._matcher.consume_token(token_id)


class Constraints:
    """An engine's way to constraints: its tokenizer as llguidance sees it, built once, and compiled grammars."""

    def __init__(self, tokenizer: Tokenizer, *, vocab: int, eos_ids: Collection[int]) -> None:
        self._tokenizer = tokenizer
        self._vocab = vocab
        self._eos = sorted(eos_ids)
        self._ll: LLTokenizer | None = None
        self._compiled: OrderedDict[str, LLMatcher | str] = OrderedDict()
        # The worker's intake compiles (``error``) on its own thread while the engine's thread starts sequences
        # (``for_sequence``): the cache and the tokenizer's first build are shared between them.
        self._lock = threading.Lock()

    def _llg_tokenizer(self) -> LLTokenizer:
        with self._lock:
            if self._ll is None:  # ~50 ms for a 50k vocabulary: only engines that meet a constraint pay it
                self._ll = LLTokenizer(self._tokenizer.to_str(), eos_token=self._eos or None)
            return self._ll

    def error(self, spec: StructuredOutput) -> str | None:
        """Why ``spec`` cannot constrain an answer on this vocabulary (llguidance's message, which points into the
        grammar), or None. Compiles it, so that the sequences asking for it find it ready."""
        compiled = self._compile(spec)
        return compiled if isinstance(compiled, str) else None

    def for_sequence(self, spec: StructuredOutput) -> Constraint:
        compiled = self._compile(spec)
        if isinstance(compiled, str):
            raise ValueError(f"structured_output.{spec.kind}: {compiled}")
        return Constraint(compiled.deep_copy(), tokenizer_vocab=self._llg_tokenizer().vocab_size, width=self._vocab)

    def _compile(self, spec: StructuredOutput) -> LLMatcher | str:
        """The matcher for ``spec``, or why there is none; the last few are kept by spec (OpenAI's ``n`` and
        prompt lists send one spec with many requests), failures too."""
        key = spec.model_dump_json(exclude_none=True)
        with self._lock:
            compiled = self._compiled.get(key)
            if compiled is not None:
                self._compiled.move_to_end(key)
                return compiled
        try:  # outside the lock: a large grammar takes milliseconds, and the other thread may want a cached one
            matcher = LLMatcher(self._llg_tokenizer(), to_grammar(spec), log_level=0)
            compiled = matcher.get_error().strip() if matcher.is_error() else matcher
        except ValueError as exc:
            compiled = str(exc)
        with self._lock:
            self._compiled[key] = compiled
            if len(self._compiled) > _CACHED_GRAMMARS:
                self._compiled.popitem(last=False)
        return compiled
