"""The request contract: what anyone may publish to ``brigade.requests.<class>``.

Only ``request_id``, ``session_id``, ``prompt`` (or ``messages``) and ``max_new_tokens`` are needed;
everything else has a default, so a plain Kafka client (kcat, a Java producer) can publish work.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

SCHEMA_VERSION: Literal[1] = 1

# Hard ceilings of the wire format itself; deployments set tighter limits in settings.
MAX_ID_LENGTH = 128
MAX_STOP_STRINGS = 8

Identifier = Annotated[
    str,
    Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=r"^[A-Za-z0-9._:\-]+$"),
]


def _encodable(text: str) -> str:
    """Refuse lone surrogates: JSON's ``\\ud800`` escapes can smuggle them into a str, and no tokenizer,
    Kafka record or Redis stream can carry them."""
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        raise ValueError(f"not valid Unicode text (a lone surrogate at character {exc.start}); send UTF-8") from None
    return text


Text = Annotated[str, AfterValidator(_encodable)]


def utcnow() -> datetime:
    return datetime.now(UTC)


class ChatMessage(BaseModel):
    """One turn of a conversation, in OpenAI's shape."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["system", "user", "assistant"]
    content: Text


class SamplingParams(BaseModel):
    """How to pick each next token. ``temperature`` 0 means greedy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stop: list[Annotated[Text, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=MAX_STOP_STRINGS
    )
    ignore_eos: bool = False  # keep generating past end-of-sequence, as vLLM's flag: fixed-length benchmarks
    # Off when absent (null), so that a request using none of them is the same bytes a worker of an earlier
    # release reads: the wire only grows for the requests that ask.
    top_k: int | None = Field(default=None, ge=-1)  # the k most likely tokens; 0 or -1 (vLLM's) keep all
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)  # drop tokens below min_p × the top probability
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)  # OpenAI's: once per generated token
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)  # OpenAI's: per time it was generated
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=2.0)  # vLLM's/HF's: prompt and output

    @property
    def penalized(self) -> bool:
        """Whether the logits need adjusting from this sequence's history before a token is chosen."""
        return bool(self.presence_penalty or self.frequency_penalty) or self.repetition_penalty not in (None, 1.0)

    @property
    def truncated(self) -> bool:
        """Whether sampling keeps fewer tokens than top_p alone would (top_k or min_p)."""
        return bool(self.top_k and self.top_k > 0) or bool(self.min_p)


class InferenceRequest(SamplingParams):
    """A unit of work on a request topic. Keyed by ``session_id`` so one session's turns stay ordered."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = SCHEMA_VERSION
    request_id: Identifier
    session_id: Identifier
    prompt: Text | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    max_new_tokens: int = Field(default=64, ge=1)  # deployments cap it: BRIGADE_MAX_NEW_TOKENS_LIMIT
    model: str | None = None
    cost_class: str | None = None
    priority: int = Field(default=0, ge=-100, le=100)
    deadline: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)

    @model_validator(mode="after")
    def _exactly_one_input(self) -> InferenceRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' (a string) or 'messages' (a list of chat turns)")
        return self

    def sampling(self) -> SamplingParams:
        # Already validated as part of this request: copied, not checked again.
        return SamplingParams.model_construct(**{name: getattr(self, name) for name in SamplingParams.model_fields})

    def expired(self, now: datetime) -> bool:
        return self.deadline is not None and now >= self.deadline

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> InferenceRequest:
        return cls.model_validate_json(raw)


class RequestAccepted(BaseModel):
    """The ingress's 202 answer: where the request went and where its answer will appear."""

    model_config = ConfigDict(frozen=True)

    request_id: str
    session_id: str
    cost_class: str
    topic: str
    partition: int
    offset: int
    stream: str  # the Redis stream key, for readers that go straight to Redis
    # The ingress's count of the text it received, or None where an upper bound (its UTF-8 length) already
    # settled the class and the prompt limit. The done event's prompt_tokens is the engine's exact count.
    prompt_tokens: int | None
    events_url: str  # the SSE endpoint for this request
    # W3C trace context the request travels with: the caller's header when valid, else a new trace
    traceparent: str | None = None
