"""The request contract: what anyone may publish to ``brigade.requests.<class>``.

Only ``request_id``, ``session_id``, ``prompt`` (or ``messages``, or ``prompt_token_ids``) and
``max_new_tokens`` are needed; everything else has a default, so a plain Kafka client (kcat, a Java producer)
can publish work.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.reasons import FieldError

SCHEMA_VERSION: Literal[1] = 1

# Hard ceilings of the wire format itself; deployments set tighter limits in settings.
MAX_ID_LENGTH = 128
MAX_STOP_STRINGS = 8
MAX_LOGPROBS = 20  # most likely tokens listed per position: OpenAI's top_logprobs ceiling, vLLM's max_logprobs
MAX_LOGIT_BIAS = 300  # token ids one request may bias: what OpenAI's API accepts
MAX_STOP_TOKEN_IDS = 64
MAX_GRAMMAR_CHARS = 65_536  # a JSON schema (as JSON), regex or grammar: compiled for every request that sends it
MAX_CHOICE_STRINGS = 256  # structured_output.choice: the strings an answer may be one of
MAX_TOOLS = 128  # OpenAI's limit on tools per request
MAX_TEMPLATE_KWARGS_CHARS = 16_384  # chat_template_kwargs as JSON: variables for a template, not documents
MAX_CACHE_KEY_CHARS = 256  # prompt_cache_key: a conversation's or user's id, not a document
# The variables a worker gives every chat template itself; chat_template_kwargs may not replace them.
TEMPLATE_VARIABLES = ("messages", "tools", "add_generation_prompt", "bos_token", "eos_token")


def _template_kwargs(value: dict[str, Any]) -> dict[str, Any]:
    taken = [name for name in TEMPLATE_VARIABLES if name in value]
    if taken:
        raise ValueError(f"{', '.join(taken)}: set by the worker for every template; send them as their own fields")
    if len(json.dumps(value)) > MAX_TEMPLATE_KWARGS_CHARS:
        raise ValueError(f"over {MAX_TEMPLATE_KWARGS_CHARS} characters as JSON; a template takes flags, not documents")
    return value


TemplateKwargs = Annotated[dict[str, Any], AfterValidator(_template_kwargs)]

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


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    name: Annotated[str, Field(min_length=1, max_length=64)]
    """The function called."""
    arguments: Text
    """Its arguments, as JSON text (OpenAI's shape; chat templates are given the parsed object)."""


class ToolCall(BaseModel):
    """A call an assistant turn made, in OpenAI's shape."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    id: Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]
    """The call's id, which the tool turn answering it repeats."""
    type: Literal["function"] = "function"
    """Always function: the one kind of tool the contract carries."""
    function: FunctionCall
    """What was called, with which arguments."""


class ChatMessage(BaseModel):
    """One turn of a conversation, in OpenAI's shape."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    role: Literal["system", "user", "assistant", "tool"]
    """Who speaks; OpenAI's developer role arrives here as system (the OpenAI endpoints map it). A tool turn
    carries a tool's result back."""
    content: Text
    """The turn's text ("" for an assistant turn that only called tools)."""
    tool_calls: list[ToolCall] | None = Field(default=None, min_length=1, max_length=MAX_TOOLS)
    """An assistant turn's calls of the request's tools."""
    tool_call_id: Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)] | None = None
    """A tool turn's: the id of the call it answers."""

    @model_validator(mode="after")
    def _tool_fields_on_their_roles(self) -> ChatMessage:
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError(f"tool_calls belong to an assistant turn, not a {self.role} turn")
        if (self.role == "tool") != (self.tool_call_id is not None):
            raise ValueError("a tool turn names the call it answers in tool_call_id, and only a tool turn has one")
        return self


class StructuredOutput(BaseModel):
    """Constrain the answer to a language: give exactly one field. vLLM's structured outputs (its
    ``structured_outputs`` / ``guided_*`` and OpenAI's ``response_format``), enforced token by token, so the
    answer parses; one cut short by max_new_tokens or a stop string ends with finish_reason ``length`` / ``stop``
    and may not."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    json_schema: dict[str, Any] | None = None
    """The answer is JSON valid against this JSON Schema (vLLM's ``json``; OpenAI's json_schema.schema)."""
    json_object: Literal[True] | None = None
    """The answer is a JSON object, any object (OpenAI's JSON mode)."""
    regex: Annotated[Text, Field(min_length=1, max_length=MAX_GRAMMAR_CHARS)] | None = None
    """The whole answer matches this regular expression (Rust regex syntax, no lookaround or backreferences)."""
    choice: list[Annotated[Text, Field(min_length=1, max_length=1024)]] | None = Field(
        default=None, min_length=1, max_length=MAX_CHOICE_STRINGS
    )
    """The answer is exactly one of these strings."""
    grammar: Annotated[Text, Field(min_length=1, max_length=MAX_GRAMMAR_CHARS)] | None = None
    """The answer is a sentence of this Lark grammar (llguidance's dialect: rules, regex terminals, %json)."""

    @field_validator("json_schema")
    @classmethod
    def _bounded(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        if schema is not None and len(json.dumps(schema)) > MAX_GRAMMAR_CHARS:
            raise ValueError(f"the schema is over {MAX_GRAMMAR_CHARS} characters as JSON; send a smaller schema")
        return schema

    @model_validator(mode="after")
    def _exactly_one(self) -> StructuredOutput:
        if len(self.given) != 1:
            raise ValueError(
                "give exactly one of json_schema (an object), json_object (true), regex, choice (a list of "
                f"strings) or grammar; got {', '.join(self.given) or 'none'}"
            )
        return self

    @property
    def given(self) -> list[str]:
        return [name for name in type(self).model_fields if getattr(self, name) is not None]

    @property
    def kind(self) -> str:
        """The one field given, for an error to name."""
        return self.given[0]


class SamplingParams(BaseModel):
    """How to pick each next token. ``temperature`` 0 means greedy."""

    # Field docstrings are the JSON Schema's descriptions (`brigade schema`): what a Kafka client reads.
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    """Divides the logits before sampling; 0 is greedy (always the most likely token)."""
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    """Sample from the smallest set of most likely tokens whose probability reaches top_p; 1 keeps all."""
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    """Seeds the request's sampler; without one the worker derives one from request_id, so a regenerated
    request samples the same tokens."""
    stop: list[Annotated[Text, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=MAX_STOP_STRINGS
    )
    """Strings that end the generation when produced; the stop string itself is not sent."""
    ignore_eos: bool = False
    """Keep generating past end-of-sequence, up to max_new_tokens (vLLM's flag: fixed-length benchmarks)."""
    stop_token_ids: list[Annotated[int, Field(ge=0)]] | None = Field(default=None, max_length=MAX_STOP_TOKEN_IDS)
    """vLLM's: token ids that end the generation as end-of-sequence does (finish_reason stop, their text not
    sent), such as a chat model's end-of-turn token; min_tokens holds them back too, ignore_eos does not."""
    # The fields below are off when absent (null), so that a request using none of them is the same bytes a
    # worker of an earlier release reads: the wire only grows for the requests that ask.
    top_k: int | None = Field(default=None, ge=-1)
    """Sample from the k most likely tokens only; 0 or -1 (vLLM's) keep all."""
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    """Drop tokens whose probability is below min_p times the most likely token's."""
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    """OpenAI's: subtracted from the logit of every token generated so far, once."""
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    """OpenAI's: subtracted from a token's logit once per time it was generated so far."""
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=2.0)
    """vLLM's and Hugging Face's: a token seen in the prompt or the output has its logit divided by it
    (multiplied when negative); 1 is off."""
    logit_bias: dict[Annotated[int, Field(ge=0)], Annotated[float, Field(ge=-100.0, le=100.0)]] | None = Field(
        default=None, max_length=MAX_LOGIT_BIAS
    )
    """OpenAI's: token id (in the model's vocabulary) to a bias from -100 to 100, added to its logit before
    sampling; -100 all but bans the token, 100 all but forces it."""
    min_tokens: int | None = Field(default=None, ge=0)
    """vLLM's: neither end-of-sequence nor a stop string ends the generation before this many tokens (the text
    of those tokens is not searched for stop strings)."""
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    """Return each generated token's log-probability with this many most likely tokens at its position (0:
    the generated token's alone), on the events' logprobs field; vLLM's meaning. null: none."""
    prompt_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    """vLLM's: return each prompt token's log-probability given the tokens before it, with this many most
    likely tokens at its position (0: the prompt token's alone), on the first event's prompt_logprobs field
    (scoring, as an evaluation harness's loglikelihood asks it). The worker then computes the model's output
    at every prompt position, not only the last. null: none."""
    skip_special_tokens: bool | None = None
    """vLLM's: false keeps the text of special tokens the model generates (a chat model's control tokens, such
    as Mistral's [TOOL_CALLS]) in the answer; null or true drops it, as vLLM does by default. End-of-sequence
    and stop_token_ids are never text."""
    structured_output: StructuredOutput | None = None
    """Constrain the answer to JSON (a schema, or any object), a regular expression, a list of choices or a
    grammar; null: free text."""

    @property
    def penalized(self) -> bool:
        """Whether the logits need adjusting from this sequence's history before a token is chosen."""
        return bool(self.presence_penalty or self.frequency_penalty) or self.repetition_penalty not in (None, 1.0)

    @property
    def truncated(self) -> bool:
        """Whether sampling keeps fewer tokens than top_p alone would (top_k or min_p)."""
        return bool(self.top_k and self.top_k > 0) or bool(self.min_p)


class InferenceRequest(SamplingParams):
    """A unit of work on a request topic. Keyed by ``session_id`` so one session's turns stay ordered (or by
    ``prompt_cache_key``, for a request that keeps no session state: see ``record_key``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    schema_version: Literal[1] = SCHEMA_VERSION
    """The contract's version; a worker refuses a version it does not know."""
    request_id: Identifier
    """Unique per request; a redelivered record with the same id is answered once."""
    session_id: Identifier
    """The Kafka record key and the Redis stream (brigade:stream:<session_id>): a session's turns stay in order
    on one partition, and its history is kept for chat turns."""
    prompt: Text | None = None
    """Plain text to continue. Give exactly one of prompt, messages and prompt_token_ids."""
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    """Chat turns, rendered with the model's chat template. Give exactly one of prompt, messages and
    prompt_token_ids."""
    tools: list[dict[str, Any]] | None = Field(default=None, min_length=1, max_length=MAX_TOOLS)
    """With messages: the tools the conversation may call, in OpenAI's shape ({"type": "function", "function":
    {"name", "description", "parameters"}}), given to the model's chat template as ``tools``, where a template
    written for tool use describes them to the model. To make the answer a call, constrain it with
    structured_output (the OpenAI endpoint does that for tool_choice "required" or a named function)."""
    chat_template_kwargs: TemplateKwargs | None = None
    """With messages: more variables for the model's chat template, as vLLM's chat_template_kwargs (Qwen3's
    {"enable_thinking": false}); a template that does not read one ignores it. Not the variables the worker sets
    itself (messages, tools, add_generation_prompt, bos_token, eos_token)."""
    trim_history: bool | None = None
    """With messages: whether a conversation too long for the model's context beside max_new_tokens loses its
    oldest turns (never the system message) until it fits, as a stored session's do. Absent or true: it does;
    false: the request is answered context_length_exceeded instead, as OpenAI's and vLLM's chat endpoints answer
    (the OpenAI endpoint here sends false: its callers hold the conversation and decide what to drop)."""
    prompt_cache_key: (
        Annotated[str, Field(min_length=1, max_length=MAX_CACHE_KEY_CHARS), AfterValidator(_encodable)] | None
    ) = None
    """For a request that carries its whole context (prompt, prompt_token_ids, or messages with trim_history
    false), OpenAI's prompt_cache_key: requests with the same key go to the same partition (it is the Kafka
    record key in place of session_id), where the worker keeps the last one's KV cache for the next, which
    computes only what follows the prefix they share. Use one key per conversation or user: every request with
    one key goes to one worker. A session's chat turns are cached by their session without it."""
    prompt_token_ids: list[Annotated[int, Field(ge=0)]] | None = Field(default=None, min_length=1)
    """The prompt as ids of the model's vocabulary, read as they are (no tokenizing, no special tokens added):
    what an evaluation harness that tokenized the text itself sends. Give exactly one of prompt, messages and
    prompt_token_ids."""
    max_new_tokens: int | None = Field(default=64, ge=1)
    """The most tokens to generate; deployments cap it (BRIGADE_MAX_NEW_TOKENS_LIMIT). null: as many as the
    model's context leaves after the prompt, up to that cap (what OpenAI's and vLLM's max_tokens left out
    means); the request is routed as if it asked for the cap."""
    model: str | None = None
    """The model to answer with; absent means the model of the class that takes the request."""
    cost_class: str | None = None
    """The cost class whose topic carries the request: an explicit value sent to the ingress wins over its
    estimate; absent, the ingress fills in the class it chose."""
    priority: int = Field(default=0, ge=-100, le=100)
    """Lower goes first, as in vLLM: a worker picks among the requests in its local queue (BRIGADE_QUEUE_SIZE)
    by priority, then arrival; a partition's backlog in Kafka is still read in offset order, so for isolation
    use a cost class. A session's turns keep their order whatever their priorities."""
    deadline: datetime | None = None
    """ISO 8601; a request still waiting at its deadline gets an expired error and costs no compute."""
    created_at: datetime = Field(default_factory=utcnow)
    """When the request was made (the ingress's clock); when absent, the time it was parsed."""

    @model_validator(mode="after")
    def _exactly_one_input(self) -> InferenceRequest:
        if sum(given is not None for given in (self.prompt, self.messages, self.prompt_token_ids)) != 1:
            raise ValueError(
                "give exactly one of 'prompt' (a string), 'messages' (a list of chat turns) or 'prompt_token_ids' "
                "(a list of token ids)"
            )
        if self.tools is not None and self.messages is None:
            raise FieldError(
                "tools", "allowed only with messages, since only a chat template can describe tools to the model"
            )
        if self.chat_template_kwargs is not None and self.messages is None:
            raise FieldError(
                "chat_template_kwargs", "allowed only with messages, since only a chat template reads them"
            )
        if self.trim_history is not None and self.messages is None:
            raise FieldError("trim_history", "allowed only with messages, since only a conversation has turns to trim")
        if self.prompt_cache_key is not None and self.messages is not None and self.trim_history is not False:
            raise FieldError(
                "prompt_cache_key",
                "allowed only with a request that carries its whole context (prompt, prompt_token_ids, or messages "
                "with trim_history: false); a session's chat turns are kept in order, and cached, by their session_id",
            )
        if self.tools is not None and len(json.dumps(self.tools)) > MAX_GRAMMAR_CHARS:
            raise FieldError("tools", f"over {MAX_GRAMMAR_CHARS} characters as JSON; describe fewer or shorter")
        if self.min_tokens and self.max_new_tokens is not None and self.min_tokens > self.max_new_tokens:
            raise FieldError(
                "min_tokens", f"{self.min_tokens} is over max_new_tokens={self.max_new_tokens}; lower min_tokens"
            )
        return self

    @property
    def input_field(self) -> str:
        """The field that carries the prompt, for an error about it to name."""
        if self.prompt is not None:
            return "prompt"
        return "messages" if self.messages is not None else "prompt_token_ids"

    @property
    def record_key(self) -> bytes:
        """The Kafka record key: the session, whose turns must stay in order on one partition, unless the
        request names a prompt_cache_key (which only a request that carries its whole context may)."""
        return (self.prompt_cache_key or self.session_id).encode()

    def sampling(self) -> SamplingParams:
        # Already validated as part of this request: copied, not checked again.
        return SamplingParams.model_construct(**{name: getattr(self, name) for name in SamplingParams.model_fields})

    def expired(self, now: datetime) -> bool:
        return self.deadline is not None and now >= self.deadline

    def new_tokens_cap(self, limit: int) -> int:
        """The most tokens this request may generate under a deployment's ``limit``, before the context's say."""
        return limit if self.max_new_tokens is None else self.max_new_tokens

    def to_bytes(self) -> bytes:
        if self.max_new_tokens is not None:
            return self.model_dump_json(exclude_none=True).encode()
        # A null max_new_tokens is not the same as an absent one (64): it stays on the wire.
        off = {name for name, value in self if value is None and name != "max_new_tokens"}
        return self.model_dump_json(exclude=off).encode()

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
