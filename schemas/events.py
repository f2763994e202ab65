"""Events on ``brigade:stream:<session_id>``: one Redis stream entry each, flat string fields.

Readable with plain ``redis-cli XREAD`` (the lists, ``logprobs`` and ``prompt_logprobs``, are JSON text).
Every request ends with exactly one ``done`` or ``error``.
``attempt`` starts at 1 and grows when a request is regenerated after a crash; a reader that sees a
higher attempt for a request drops what it collected from the lower one.

``traceparent`` on ``done`` / ``error`` is optional (W3C trace context of the worker's span for the request,
see ``schemas/tracing.py``): events written before it existed, or by a publisher of its own, parse without it.
``model`` on ``done`` is optional for the same reason, and so are its four ``*_at_ms`` stage times (see
``DoneEvent``): published to Kafka, fetched by the worker, scheduled, first token.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter


class FinishReason(StrEnum):
    STOP = "stop"  # end-of-sequence token or a stop string
    LENGTH = "length"  # max_new_tokens or the model's context reached
    CANCELLED = "cancelled"  # the caller cancelled it (or its OpenAI client hung up): vLLM's "abort"


class ErrorCode(StrEnum):
    EXPIRED = "expired"  # past its deadline before compute started; no GPU time spent
    INVALID_REQUEST = "invalid_request"  # valid JSON, but the worker cannot serve it (e.g. unknown model)
    CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
    INTERNAL = "internal"


class TopLogprob(BaseModel):
    """A token and its log-probability at one position of the output."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    token: str
    """The token decoded on its own (a piece of a multi-byte character decodes to U+FFFD)."""
    id: int
    """The token's id in the model's vocabulary."""
    logprob: float
    """Natural log of its probability under the model's own distribution: before temperature, penalties,
    top_k, top_p and min_p (vLLM's default, raw logprobs). Floored at -9999, as vLLM's OpenAI server does."""


class TokenLogprob(TopLogprob):
    """A generated token's log-probability, with the most likely tokens at its position."""

    top: list[TopLogprob] = Field(default_factory=list)
    """The request's ``logprobs`` most likely tokens at this position, most likely first (the generated token
    among them only if it is one of them)."""


class PromptLogprob(BaseModel):
    """A prompt token's log-probability given the prompt tokens before it, with the most likely tokens there."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    token: str
    """The token decoded on its own, as in TopLogprob."""
    id: int
    """The token's id in the model's vocabulary."""
    logprob: float | None = None
    """As in TopLogprob; null for the first prompt token, which nothing precedes."""
    top: list[TopLogprob] = Field(default_factory=list)
    """The request's ``prompt_logprobs`` most likely tokens at this position, most likely first (empty for the
    first prompt token)."""


def _json_list(value: Any) -> Any:
    """Stream fields are strings: a list travels as JSON text."""
    return json.loads(value) if isinstance(value, str) else value


Logprobs = Annotated[list[TokenLogprob] | None, BeforeValidator(_json_list)]
PromptLogprobs = Annotated[list[PromptLogprob] | None, BeforeValidator(_json_list)]


class _EventBase(BaseModel):
    # Field docstrings are the JSON Schema's descriptions (`brigade schema`): what a stream reader reads.
    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    request_id: str
    """The request this event answers (a session's stream carries all its turns)."""
    seq: int = Field(ge=0)
    """0, 1, 2… within one attempt of one request: a repeated seq is a retried write, to drop."""
    attempt: int = Field(default=1, ge=1)
    """1, then one more each time the request is regenerated after a crash; drop what a lower attempt sent."""

    def to_fields(self) -> dict[str, str]:
        """Flat string fields for XADD (a list as compact JSON)."""
        return {
            k: json.dumps(v, ensure_ascii=False, separators=(",", ":")) if isinstance(v, list) else str(v)
            for k, v in self.model_dump(mode="json").items()
            if v is not None
        }


class TokenEvent(_EventBase):
    type: Literal["token"] = "token"
    text: str
    """The next piece of text (one or more tokens: a step's output for this request)."""
    logprobs: Logprobs = None
    """Requests that asked (``logprobs``): one entry per token generated since the previous event, in order,
    as JSON text in the stream. A token whose text is held back (part of a character, a possible stop string)
    has its entry on the event that carries the text, or on ``done``. Absent otherwise."""
    prompt_logprobs: PromptLogprobs = None
    """Requests that asked (``prompt_logprobs``): one entry per prompt token, in order, as JSON text in the
    stream, on the first token event of each attempt (or on ``done`` when no token event came first). Absent
    otherwise."""


class DoneEvent(_EventBase):
    type: Literal["done"] = "done"
    text: str = ""
    """Text not sent in a token event yet (held bytes of a partial character, a held stop-string prefix)."""
    finish_reason: FinishReason
    """stop: end-of-sequence or a stop string; length: max_new_tokens or the model's context reached;
    cancelled: a caller cancelled it (what it streamed before stands; ``completion_tokens`` counts it)."""
    prompt_tokens: int = Field(ge=0)
    """The prompt's length in the model's tokens (chat template included)."""
    completion_tokens: int = Field(ge=0)
    """Tokens generated."""
    cached_tokens: int | None = Field(default=None, ge=1)
    """Of prompt_tokens, those whose keys and values the worker kept from the previous request of the session
    (or of the prompt_cache_key), or from a prefix another request shared, instead of computing them (vLLM's
    usage.prompt_tokens_details.cached_tokens); absent when none were."""
    logprobs: Logprobs = None
    """As on token events: the entries of the tokens no token event carried (the last one, end-of-sequence,
    a stop string's). Over a request's events there is one entry per generated token."""
    prompt_logprobs: PromptLogprobs = None
    """As on token events, when no token event of the attempt carried them."""
    traceparent: str | None = None
    """The worker's span (W3C trace context): the same trace id as the request's traceparent."""
    model: str | None = None
    """The model that answered (each class may serve its own); absent on older events."""
    # Where the time went, in epoch milliseconds (absent on older events and on events of other publishers).
    published_at_ms: int | None = None
    """The Kafka record's timestamp (producer CreateTime, or LogAppendTime), epoch ms."""
    fetched_at_ms: int | None = None
    """When the worker took the record off Kafka into its queue, epoch ms."""
    scheduled_at_ms: int | None = None
    """When its batch (or its join into a running batch) began admission, epoch ms."""
    first_token_at_ms: int | None = None
    """When the engine step that made its first token ended, epoch ms."""


class ErrorEvent(_EventBase):
    type: Literal["error"] = "error"
    text: str = ""
    """Always empty: an error carries no text, and what the attempt streamed before it stands."""
    code: ErrorCode
    """Why the request failed, for code to branch on; message says it for people."""
    message: str
    """What went wrong, naming the field, the limit and the fix where there is one."""
    traceparent: str | None = None
    """As on done."""


Event = Annotated[TokenEvent | DoneEvent | ErrorEvent, Field(discriminator="type")]
FINAL_TYPES = frozenset({"done", "error"})

_event_adapter: TypeAdapter[TokenEvent | DoneEvent | ErrorEvent] = TypeAdapter(Event)


def parse_event(fields: Mapping[str, Any] | Mapping[bytes, bytes]) -> TokenEvent | DoneEvent | ErrorEvent:
    """Parse one stream entry's fields (str or bytes, as redis-py returns them) into an event; JSON values
    (an SSE payload's) are taken as well."""
    decoded = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in fields.items()
    }
    return _event_adapter.validate_python(decoded)


def is_final(event: TokenEvent | DoneEvent | ErrorEvent) -> bool:
    return event.type in FINAL_TYPES
