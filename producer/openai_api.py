"""OpenAI-compatible endpoints. They publish to Kafka and read the Redis stream like every other client.

Each call is its own session (the OpenAI API is stateless: the full ``messages`` come every time).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, ClassVar, Literal

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
)
from pydantic_core import PydanticCustomError
from sse_starlette import EventSourceResponse

from producer.errors import ApiError, FieldNames
from producer.ingress import Ingress
from producer.openai_format import Echo, Finished, Kind, full_response
from producer.openai_stream import chunks, error_from_event
from producer.openai_structured import ResponseFormat, VllmStructuredOutputs, structured_output
from producer.stream_reader import Answer, AnyEvent, Verdict, request_events
from schemas.events import DoneEvent, ErrorEvent
from schemas.requests import MAX_LOGPROBS, ChatMessage, InferenceRequest, RequestAccepted, StructuredOutput

router = APIRouter(prefix="/v1")

MAX_CHOICES = 16  # n: each choice is a request of its own, on the class's topic like any other
MAX_REQUESTS = 256  # prompts × n of one legacy completion call: each is a request of its own


class StreamOptions(BaseModel):
    include_usage: bool = False


class TextPart(BaseModel):
    """One part of a message's content in the list form newer SDKs send; only text is served here."""

    type: Literal["text"]
    text: str


class OpenAIMessage(BaseModel):
    """A chat turn as OpenAI clients send it: ``developer`` is their newer name for ``system``, and
    content may be a list of text parts. Mapped onto the wire contract's ``ChatMessage``."""

    model_config = ConfigDict(extra="ignore")  # name, tool_calls=None… are accepted and unused

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def to_chat(self) -> ChatMessage:
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return ChatMessage(role="system" if self.role == "developer" else self.role, content=content)


def off_only(*off: Any) -> AfterValidator:
    """For a parameter that changes what OpenAI (or vLLM) would answer and that brigade does not implement:
    accept only null and ``off``, the values that mean "off" (SDKs and frameworks often send those). A caller
    who asked for tool calls, JSON mode or an echoed prompt must not get a plain answer that looks like one."""
    accepted = (None, *off)
    shown = " or ".join("null" if o is None else json.dumps(o) for o in accepted)

    def check(value: Any) -> Any:
        # bool is an int to ==; keep them apart so that best_of=True or echo=0 is not taken for "off".
        if not any(value == o and isinstance(value, bool) == isinstance(o, bool) for o in accepted):
            raise PydanticCustomError(
                "not_implemented", "brigade does not implement it; leave the field out (or send {off})", {"off": shown}
            )
        return value

    return AfterValidator(check)


# Fields whose OpenAI (or vLLM) name and meaning are the wire contract's: copied onto the request as they are.
PASSED_ON = (
    "temperature",
    "top_p",
    "seed",
    "ignore_eos",
    "presence_penalty",
    "frequency_penalty",
    "top_k",
    "min_p",
    "repetition_penalty",
    "priority",
)


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")  # harmless fields SDKs send (user, store, metadata…) are unused
    prompt_field: ClassVar[str] = "prompt"  # the field that carries the prompt, for an error about it to name

    model: str
    # Unset (or null), as with OpenAI and vLLM: as many as the model's context leaves, up to the deployment's
    # limit. Legacy completions default to 16, as theirs do.
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)  # one request per choice, side by side
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False  # vLLM's extension, as its benchmark clients send it
    # Passed on as they are; the wire contract checks their ranges (and names the field when one is out).
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    top_k: int | None = None  # vLLM's
    min_p: float | None = None  # vLLM's
    repetition_penalty: float | None = None  # vLLM's
    priority: int = 0  # vLLM's: lower goes first
    tools: Annotated[Any, off_only([])] = None
    tool_choice: Annotated[Any, off_only("none", "auto")] = None
    functions: Annotated[Any, off_only([])] = None
    function_call: Annotated[Any, off_only("none", "auto")] = None
    response_format: ResponseFormat | None = None  # OpenAI's JSON mode and JSON Schema outputs
    structured_outputs: VllmStructuredOutputs | None = None  # vLLM's
    logit_bias: dict[str, float] | None = None  # token id (as a string, OpenAI's JSON) to its bias
    best_of: Annotated[Any, off_only(1)] = None
    suffix: Annotated[Any, off_only("")] = None
    min_tokens: int | None = None  # vLLM's
    stop_token_ids: list[int] | None = None  # vLLM's
    guided_json: dict[str, Any] | str | None = None  # vLLM's older names for structured_outputs
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None

    def logprobs_asked(self) -> int | None:
        """The contract's ``logprobs``: how many alternatives per token, None for no log-probabilities."""
        return None

    def prompt_logprobs_asked(self) -> int | None:
        """The contract's ``prompt_logprobs``: the prompt's entries are needed (an echo with logprobs)."""
        return None

    def inputs(self) -> list[dict[str, Any]]:
        """The prompt field of each request to make, before ``n``: one per prompt."""
        raise NotImplementedError

    def echo_asked(self) -> bool:
        """Whether each choice's text starts with its prompt (a legacy completion's ``echo``)."""
        return False

    @property
    def max_tokens_field(self) -> str:
        """The name the caller used, so a limit error names what they sent."""
        return "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"

    def structured(self) -> tuple[StructuredOutput, str] | None:
        """The contract's ``structured_output`` and the field it came from, or None."""
        guided = {
            name: getattr(self, name) for name in ("guided_json", "guided_regex", "guided_choice", "guided_grammar")
        }
        return structured_output(
            response_format=self.response_format, structured_outputs=self.structured_outputs, guided=guided
        )

    def fields(self) -> FieldNames:
        """The names this caller used for the fields an ingress error may name."""
        asked = self.structured()
        return FieldNames(
            max_tokens=self.max_tokens_field,
            prompt=self.prompt_field,
            structured_output=asked[1] if asked is not None else None,
        )

    def to_requests(self, **inputs: Any) -> list[InferenceRequest]:
        """One wire request per choice (``n``), each its own session so that the choices run side by side (a
        session's requests run one after another). With a seed, choice i samples with seed + i: the choices
        differ and each replays; without one each request's id seeds it. Greedy choices are all the same."""
        first = self.to_request(**inputs)
        seed = first.seed

        def choice(i: int) -> InferenceRequest:
            update: dict[str, Any] = {"request_id": uuid.uuid4().hex, "session_id": uuid.uuid4().hex}
            if seed is not None:
                update["seed"] = (seed + i) % 2**63
            return first.model_copy(update=update)

        return [first, *(choice(i) for i in range(1, self.n))]

    def to_request(self, **inputs: Any) -> InferenceRequest:
        """The wire request; a value the contract refuses raises ValidationError (answered as 422)."""
        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        max_new = self.max_completion_tokens or self.max_tokens
        if self.min_tokens and max_new is not None and self.min_tokens > max_new:  # the contract's check, in our words
            message = f"min_tokens={self.min_tokens} is over {self.max_tokens_field}={max_new}; lower min_tokens"
            raise ApiError(422, message, param="min_tokens")
        asked = self.structured()
        return InferenceRequest(
            request_id=uuid.uuid4().hex,
            session_id=uuid.uuid4().hex,
            model=self.model,
            stop=stop,
            **{name: getattr(self, name) for name in PASSED_ON},
            max_new_tokens=max_new,
            logprobs=self.logprobs_asked(),
            prompt_logprobs=self.prompt_logprobs_asked(),
            # their "off" values stay off the wire, so a worker of an earlier release reads the request too
            logit_bias=self.logit_bias or None,
            min_tokens=self.min_tokens or None,
            stop_token_ids=self.stop_token_ids or None,
            structured_output=asked[0] if asked is not None else None,
            **inputs,
        )


class CompletionBody(_Common):
    # Text, token ids, or a list of either (one choice per prompt and n, prompt-major, as OpenAI numbers them).
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(default=16, ge=1)
    # The legacy form: a count of alternatives per token (strict: a chat-style true is refused, not taken as 1).
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS, strict=True)

    # The prompt's text before the answer's; with logprobs, its tokens' entries first (the first one's null).
    echo: bool = False

    @field_validator("prompt", mode="wrap")
    @classmethod
    def _one_prompt_shape(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """One error naming the four shapes, in place of one per union member that did not match."""
        try:
            return handler(value)
        except ValidationError:
            raise PydanticCustomError(
                "prompt_shape",
                "send a string, a list of strings, token ids (a list of integers) or a list of token-id lists",
            ) from None

    def logprobs_asked(self) -> int | None:
        return self.logprobs

    def prompt_logprobs_asked(self) -> int | None:
        return self.logprobs if self.echo else None

    def inputs(self) -> list[dict[str, Any]]:
        if not self.prompt:
            raise ApiError(
                422, "prompt: send a string, token ids, or a list of either; this one is empty", param="prompt"
            )
        prompts: list[str | list[int]]
        if isinstance(self.prompt, str) or isinstance(self.prompt[0], int):
            prompts = [self.prompt]  # one text, or one prompt's token ids
        else:
            prompts = list(self.prompt)
        if len(prompts) * self.n > MAX_REQUESTS:
            raise ApiError(
                422,
                f"prompt: {len(prompts)} prompts × n={self.n} is over {MAX_REQUESTS} choices per call; split the call",
                param="prompt",
            )
        return [{"prompt": p} if isinstance(p, str) else {"prompt_token_ids": p} for p in prompts]

    def echo_asked(self) -> bool:
        return self.echo


class ChatBody(_Common):
    prompt_field: ClassVar[str] = "messages"
    messages: list[OpenAIMessage] = Field(min_length=1)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    echo: Annotated[Any, off_only(False)] = None  # vLLM's chat echo (the last message first): not served

    def inputs(self) -> list[dict[str, Any]]:
        return [{"messages": [m.to_chat() for m in self.messages]}]

    def logprobs_asked(self) -> int | None:
        if not self.logprobs:
            if self.top_logprobs:
                raise ApiError(
                    422, "top_logprobs: send logprobs: true with it, as OpenAI requires", param="top_logprobs"
                )
            return None
        return self.top_logprobs or 0


def _model_entry(ingress: Ingress, model: str) -> dict[str, Any]:
    """OpenAI's model object, plus ``cost_classes``: the classes whose workers serve it, cheapest first."""
    classes = [c.name for c in ingress.settings.classes_serving(model)]
    return {"id": model, "object": "model", "created": 0, "owned_by": "brigade", "cost_classes": classes}


@router.get("/models")
async def models(request: Request) -> dict[str, Any]:
    """Every distinct model some class serves (``BRIGADE_MODEL`` and ``BRIGADE_CLASS_<NAME>_MODEL``)."""
    ingress: Ingress = request.app.state.ingress
    return {"object": "list", "data": [_model_entry(ingress, m) for m in ingress.served_models]}


@router.get("/models/{model_id:path}")
async def model(model_id: str, request: Request) -> dict[str, Any]:
    ingress: Ingress = request.app.state.ingress
    ingress.check_model(model_id)
    return _model_entry(ingress, model_id)


@router.post("/completions", response_model=None)
async def completions(
    body: CompletionBody,
    request: Request,
    traceparent: Annotated[str | None, Header()] = None,
    tracestate: Annotated[str | None, Header()] = None,
) -> Response | EventSourceResponse:
    return await _answer("text", body, request, (traceparent, tracestate))


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatBody,
    request: Request,
    traceparent: Annotated[str | None, Header()] = None,
    tracestate: Annotated[str | None, Header()] = None,
) -> Response | EventSourceResponse:
    return await _answer("chat", body, request, (traceparent, tracestate))


async def _until_disconnected(request: Request) -> None:
    """Return when the client goes away (the body is already read, so the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _collect(events: AsyncIterator[tuple[AnyEvent, Verdict]]) -> Answer:
    answer = Answer()
    async for event, verdict in events:
        answer.add(event, verdict)
    return answer


async def _publish(
    ingress: Ingress, wires: list[InferenceRequest], trace: tuple[str | None, str | None], fields: FieldNames
) -> list[RequestAccepted]:
    """One record per choice. With ``n`` > 1 and one refused (its class over its backlog), the call is answered
    with that refusal; the accepted ones still run, unread."""
    options: dict[str, Any] = {"traceparent": trace[0], "tracestate": trace[1], "fields": fields}
    if len(wires) == 1:
        return [await ingress.submit(wires[0], **options)]
    accepted: list[RequestAccepted] = []
    for result in await ingress.submit_many(wires, **options):
        if isinstance(result, ApiError):
            raise result
        accepted.append(result)
    return accepted


async def _answer(
    kind: Kind, body: _Common, request: Request, trace: tuple[str | None, str | None]
) -> Response | EventSourceResponse:
    """``trace``: the caller's (traceparent, tracestate) headers, passed on to the Kafka records."""
    ingress: Ingress = request.app.state.ingress
    ingress.check_model(body.model)
    await ingress.require_redis()  # publish nothing whose answer could not be read
    wires = [wire for inputs in body.inputs() for wire in body.to_requests(**inputs)]
    accepted = await _publish(ingress, wires, trace, body.fields())
    asked = wires[0].logprobs is not None
    echo = [_prompt_text(ingress, body.model, wire) for wire in wires] if body.echo_asked() else None
    created = int(time.time())
    streams = [request_events(ingress.redis, a.stream, a.request_id) for a in accepted]
    rid, model = accepted[0].request_id, body.model
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        payloads = chunks(
            kind,
            streams,
            request_id=rid,
            model=model,
            created=created,
            asked_logprobs=asked,
            include_usage=include_usage,
            echo=echo,
            n=body.n,
        )
        return EventSourceResponse(payloads, ping=15)
    # Starlette does not cancel a handler whose client left; without this an abandoned call would
    # keep reading Redis until the answer came, however long that took.
    collecting = asyncio.create_task(_collect_all(streams))
    gone = asyncio.create_task(_until_disconnected(request))
    done, _ = await asyncio.wait({collecting, gone}, return_when=asyncio.FIRST_COMPLETED)
    loser = gone if collecting in done else collecting
    loser.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await loser
    if collecting is loser:
        return Response(status_code=499)  # client closed the request; nobody reads this
    choices: list[Finished] = []
    for i, answer in enumerate(collecting.result()):  # a RedisError here is answered as 503
        if isinstance(answer.final, ErrorEvent):
            raise error_from_event(answer.final)
        assert isinstance(answer.final, DoneEvent)
        echoed = None if echo is None else Echo(echo[i], answer.prompt_logprobs or ())
        choices.append(Finished("".join(answer.text), answer.final, answer.logprobs if asked else None, echoed))
    return JSONResponse(full_response(kind, request_id=rid, model=model, created=created, choices=choices, n=body.n))


def _prompt_text(ingress: Ingress, model: str, wire: InferenceRequest) -> str:
    """What an echo starts with: the prompt as sent, or its token ids decoded by the model's tokenizer."""
    if wire.prompt is not None:
        return wire.prompt
    return ingress.router.decode(model, wire.prompt_token_ids or [])


async def _collect_all(streams: list[AsyncIterator[tuple[AnyEvent, Verdict]]]) -> list[Answer]:
    return list(await asyncio.gather(*(_collect(s) for s in streams)))
