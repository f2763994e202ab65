"""One sequence's bookkeeping between model steps: text, stop strings, limits, finish reason.

Kept apart from ONNX Runtime so the rules (what ends a sequence, what text goes out) are tested with
token ids alone.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import numpy.typing as npt

from consumer.engine.constraint import Constraint
from consumer.engine.detokenizer import Decoder, IncrementalDetokenizer
from consumer.engine.interface import GenerationInput, TokenDelta
from consumer.engine.sampling import Seen, make_generator
from consumer.engine.stops import StopMatcher
from schemas.events import FinishReason, TokenLogprob


class SequenceState:
    def __init__(
        self,
        item: GenerationInput,
        *,
        prompt_ids: list[int],
        decoder: Decoder,
        eos_ids: Collection[int],
        max_context: int,
        constraint: Constraint | None = None,
    ) -> None:
        self.request_id = item.request_id
        self.cache_key = item.cache_key
        self.prompt_ids = prompt_ids
        self.sampling = item.sampling
        self.rng: np.random.Generator | None = make_generator(item.sampling)
        # Prompt plus generated tokens never exceed the context; both limits end with LENGTH.
        self.budget = max(0, min(item.max_new_tokens, max_context - len(prompt_ids)))
        # What ends the sequence like end-of-sequence: the model's (unless ignored) and the request's own.
        self._eos = frozenset(() if item.sampling.ignore_eos else eos_ids) | frozenset(
            item.sampling.stop_token_ids or ()
        )
        self._detok = IncrementalDetokenizer(
            decoder, prompt_ids=prompt_ids, skip_special_tokens=item.sampling.skip_special_tokens is not False
        )
        self._stops = StopMatcher(item.sampling.stop)
        self.token_ids: list[int] = []  # generated ids, for tests and debugging; text is what goes out
        self.seen = Seen(prompt_ids) if item.sampling.penalized else None
        # The arrays ``adjust`` needs, made only for the requests that use them: most skip it.
        bias = item.sampling.logit_bias
        self._bias = (
            (np.fromiter(bias, dtype=np.int64, count=len(bias)), np.fromiter(bias.values(), dtype=np.float32))
            if bias
            else None
        )
        self._min_tokens = item.sampling.min_tokens or 0
        self._eos_ids = np.fromiter(self._eos, dtype=np.int64) if self._min_tokens and self._eos else None
        self.constraint = constraint  # structured output: its mask comes last, after every other adjustment
        self.adjusts = self._bias is not None or self._eos_ids is not None or constraint is not None
        self.finish_reason: FinishReason | None = None if self.budget > 0 else FinishReason.LENGTH
        self.error: str | None = None  # why the engine gave up on this sequence alone (its grammar failed)

    @property
    def generated(self) -> int:
        return len(self.token_ids)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self.error is not None

    def adjust(self, logits: npt.NDArray[np.floating]) -> None:
        """This sequence's own changes to its row of logits before a token is chosen: its logit_bias,
        end-of-sequence masked while it has fewer than min_tokens, and what its structured output forbids."""
        if self._bias is not None:
            ids, values = self._bias
            logits[ids] += values
        if self._eos_ids is not None and self.generated < self._min_tokens:
            logits[self._eos_ids] = -np.inf
        if self.constraint is not None:
            self.constraint.mask(logits)

    def delta(self, text: str = "", logprob: TokenLogprob | None = None) -> TokenDelta:
        return TokenDelta(self.request_id, text, self.generated, self.finish_reason, logprob, error=self.error)

    def advance(self, token_id: int, logprob: TokenLogprob | None = None) -> TokenDelta:
        """Take the sampled token (and its log-probability entry, when the request asked for one); say what
        text goes out and whether the sequence has ended."""
        self.token_ids.append(token_id)
        if self.seen is not None:
            self.seen.add(token_id)
        if token_id in self._eos:
            self.finish_reason = FinishReason.STOP
            return self.delta(self._drain(), logprob)
        if self.constraint is not None:
            self.constraint.consume(token_id)
            if (failure := self.constraint.failure) is not None:
                self.error = f"structured output failed after {self.generated - 1} tokens: {failure}"
                return self.delta(logprob=logprob)
        piece = self._detok.push(token_id)
        # Before min_tokens no stop string may end it: that text goes out unsearched.
        text, stopped = self._stops.push(piece) if self.generated >= self._min_tokens else (piece, False)
        if stopped:
            self.finish_reason = FinishReason.STOP
        elif self.constraint is not None and self.constraint.finished:
            self.finish_reason = FinishReason.STOP  # the answer is complete: its end-of-sequence is not generated
            text += self._drain()
        elif self.generated >= self.budget:
            self.finish_reason = FinishReason.LENGTH
            text += self._drain()
        return self.delta(text, logprob)

    def _drain(self) -> str:
        """Ending without a stop string: held bytes and held stop-string prefixes are real text after all."""
        text, stopped = self._stops.push(self._detok.flush())
        if stopped:
            self.finish_reason = FinishReason.STOP
            return text
        return text + self._stops.flush()
