"""Events on ``brigade:stream:<session_id>``: one Redis stream entry each, flat string fields.

Readable with plain ``redis-cli XREAD``. Every request ends with exactly one ``done`` or ``error``.
``attempt`` starts at 1 and grows when a request is regenerated after a crash; a reader that sees a
higher attempt for a request drops what it collected from the lower one.

``traceparent`` on ``done`` / ``error`` is optional (W3C trace context of the worker's span for the request,
see ``schemas/tracing.py``): events written before it existed, or by a publisher of its own, parse without it.
``model`` on ``done`` is optional for the same reason, and so are its four ``*_at_ms`` stage times (see
``DoneEvent``): published to Kafka, fetched by the worker, scheduled, first token.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class FinishReason(StrEnum):
    STOP = "stop"  # end-of-sequence token or a stop string
    LENGTH = "length"  # max_new_tokens or the model's context reached


class ErrorCode(StrEnum):
    EXPIRED = "expired"  # past its deadline before compute started; no GPU time spent
    INVALID_REQUEST = "invalid_request"  # valid JSON, but the worker cannot serve it (e.g. unknown model)
    CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
    INTERNAL = "internal"


class _EventBase(BaseModel):
    model_config = ConfigDict(frozen=True)

    request_id: str
    seq: int = Field(ge=0)
    attempt: int = Field(default=1, ge=1)

    def to_fields(self) -> dict[str, str]:
        """Flat string fields for XADD."""
        return {k: str(v) for k, v in self.model_dump(mode="json").items() if v is not None}


class TokenEvent(_EventBase):
    type: Literal["token"] = "token"
    text: str


class DoneEvent(_EventBase):
    type: Literal["done"] = "done"
    text: str = ""
    finish_reason: FinishReason
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    traceparent: str | None = None  # the worker's span: same trace id as the request's traceparent header
    model: str | None = None  # the model that answered (each class may serve its own); absent on older events
    # Where the time went, in epoch milliseconds (absent on older events and on events of other publishers):
    published_at_ms: int | None = None  # the Kafka record's timestamp (producer CreateTime, or LogAppendTime)
    fetched_at_ms: int | None = None  # the worker took it off Kafka into its queue
    scheduled_at_ms: int | None = None  # its batch (or its join into a running batch) began admission
    first_token_at_ms: int | None = None  # the engine step that made its first token ended


class ErrorEvent(_EventBase):
    type: Literal["error"] = "error"
    text: str = ""
    code: ErrorCode
    message: str
    traceparent: str | None = None  # as on ``done``


Event = Annotated[TokenEvent | DoneEvent | ErrorEvent, Field(discriminator="type")]
FINAL_TYPES = frozenset({"done", "error"})

_event_adapter: TypeAdapter[TokenEvent | DoneEvent | ErrorEvent] = TypeAdapter(Event)


def parse_event(fields: Mapping[str, str] | Mapping[bytes, bytes]) -> TokenEvent | DoneEvent | ErrorEvent:
    """Parse one stream entry's fields (str or bytes, as redis-py returns them) into an event."""
    decoded = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in fields.items()
    }
    return _event_adapter.validate_python(decoded)


def is_final(event: TokenEvent | DoneEvent | ErrorEvent) -> bool:
    return event.type in FINAL_TYPES
