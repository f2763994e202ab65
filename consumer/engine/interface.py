"""What the worker needs from an engine, and nothing more (the seeds' ``IInferenceEngine``).

A batch runs step by step so the worker can write each step's tokens to Redis while the next
step computes; ``step`` is blocking and is always called from an executor thread. ``encode``, ``render_chat``
and ``constraint_error`` are called from another thread (the worker's intake), while a step may be running:
they must be safe alongside it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from schemas.events import FinishReason, PromptLogprob, TokenLogprob
from schemas.requests import ChatMessage, SamplingParams, StructuredOutput


class OutOfMemory(RuntimeError):
    """The device could not hold this batch. The worker halves its batch limit and runs the requests again."""


@dataclass(frozen=True, slots=True)
class GenerationInput:
    """One sequence of a batch, already tokenized."""

    request_id: str
    prompt_ids: Sequence[int]
    max_new_tokens: int
    sampling: SamplingParams
    # a chat turn's session, or a request's prompt_cache_key: an engine may keep the finished sequence's KV cache
    # under it for the next request with it, whose prompt starts with the same tokens (``consumer/engine/kv_cache.py``)
    cache_key: str | None = None


@dataclass(frozen=True, slots=True)
class TokenDelta:
    """What one step produced for one sequence."""

    request_id: str
    # new printable text since the last delta; "" while bytes of a character or a stop-string prefix are held back
    text: str
    completion_tokens: int  # tokens generated so far for this sequence
    finish_reason: FinishReason | None  # set on the sequence's last delta, None while it runs
    logprob: TokenLogprob | None = None  # this step's token's entry, for a request that asked (``logprobs``)
    # on a prefill's delta, for a request that asked (``prompt_logprobs``): one entry per prompt token
    prompt_logprobs: list[PromptLogprob] | None = None
    # set on the last delta of a sequence the engine gave up on alone (its structured output's grammar failed):
    # the request is answered with this error, and the rest of the batch goes on
    error: str | None = None
    # on the prefill's delta of a sequence that looked for a cache (its session's, its prompt_cache_key's, a shared
    # prefix): its prompt tokens whose keys and values came from one instead of being computed; None: it did not look
    cached_tokens: int | None = None


class BatchRun(Protocol):
    """A batch in flight. A sequence's first ``step`` runs its prefill."""

    @property
    def finished(self) -> bool:
        """True once every sequence has its finish_reason."""
        ...

    @property
    def running(self) -> int:
        """Sequences that still need steps: the batch's occupancy."""
        ...

    def step(self) -> list[TokenDelta]:
        """Advance by one token the sequences that joined since the last step (their prefill) or, if none did,
        every running sequence; one delta per sequence advanced (or ended without room for a token)."""
        ...

    def join(self, inputs: Sequence[GenerationInput]) -> None:
        """Add sequences at a step boundary (continuous batching); the next ``step`` prefills them."""
        ...

    def drop(self, request_ids: Collection[str]) -> None:
        """Stop sequences at a step boundary (their callers cancelled them): they leave the batch, free their
        place, and no later ``step`` reports them. Ids not running are ignored."""
        ...


class InferenceEngine(Protocol):
    @property
    def model_name(self) -> str: ...

    @property
    def max_context(self) -> int:
        """Prompt plus generated tokens may not exceed this."""
        ...

    @property
    def vocab_size(self) -> int:
        """Token ids a request may name (logit_bias): 0 up to this."""
        ...

    def encode(self, text: str) -> list[int]: ...

    def render_chat(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[dict[str, Any]] | None = None,
        template_kwargs: Mapping[str, Any] | None = None,
    ) -> str:
        """The model's chat template applied to a conversation (and the tools it may call, OpenAI's shape, and
        the request's own template variables), ending where the assistant speaks."""
        ...

    def constraint_error(self, spec: StructuredOutput) -> str | None:
        """Why ``spec`` cannot constrain an answer on this model's vocabulary, or None; the engine keeps what it
        compiled for the sequences that ask for it."""
        ...

    def start(self, inputs: Sequence[GenerationInput]) -> BatchRun: ...

    def warmup(self, *, batch_size: int) -> None:
        """One prefill and a few decode steps at this batch size, before the worker joins its group."""
        ...

    def close(self) -> None:
        """Release the ONNX Runtime session (and its device memory) explicitly."""
        ...
