"""OpenAI-compatible endpoints. They publish to Kafka and read the Redis stream like every other client.

Each call is its own session (the OpenAI API is stateless: the full ``messages`` come every time).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette import EventSourceResponse

from producer.errors import ApiError, error_body
from producer.ingress import Ingress
from producer.openai_format import Kind, chunk, full_response, usage_chunk
from producer.stream_reader import Answer, LiveText, request_events
from schemas.events import DoneEvent, ErrorCode, ErrorEvent, TokenEvent
from schemas.requests import ChatMessage, InferenceRequest

router = APIRouter(prefix="/v1")

_ERROR_STATUS = {
    ErrorCode.EXPIRED: 408,
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.CONTEXT_LENGTH_EXCEEDED: 400,
    ErrorCode.INTERNAL: 500,
}


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")  # SDKs send fields we do not use (user, n=1, logprobs=None…)

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    def to_request(self, **inputs: Any) -> InferenceRequest:
        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        max_new = self.max_completion_tokens or self.max_tokens
        return InferenceRequest(
            request_id=uuid.uuid4().hex,
            session_id=uuid.uuid4().hex,
            model=self.model,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
            stop=stop,
            **({"max_new_tokens": max_new} if max_new is not None else {}),
            **inputs,
        )


class CompletionBody(_Common):
    prompt: str | list[str]

    def prompt_text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise ApiError(422, "prompt: send one prompt per call (a string or a list of one)", param="prompt")
        return self.prompt[0]


class ChatBody(_Common):
    messages: list[ChatMessage] = Field(min_length=1)


@router.get("/models")
async def models(request: Request) -> dict[str, Any]:
    ingress: Ingress = request.app.state.ingress
    return {
        "object": "list",
        "data": [{"id": m, "object": "model", "created": 0, "owned_by": "brigade"} for m in ingress.served_models],
    }


@router.post("/completions", response_model=None)
async def completions(
    body: CompletionBody, request: Request, traceparent: Annotated[str | None, Header()] = None
) -> JSONResponse | EventSourceResponse:
    return await _answer("text", body, body.to_request(prompt=body.prompt_text()), request, traceparent)


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatBody, request: Request, traceparent: Annotated[str | None, Header()] = None
) -> JSONResponse | EventSourceResponse:
    return await _answer("chat", body, body.to_request(messages=body.messages), request, traceparent)


def _error_from_event(event: ErrorEvent) -> ApiError:
    return ApiError(_ERROR_STATUS.get(event.code, 500), event.message, code=event.code.value)


async def _answer(
    kind: Kind, body: _Common, req: InferenceRequest, request: Request, traceparent: str | None
) -> JSONResponse | EventSourceResponse:
    ingress: Ingress = request.app.state.ingress
    if body.model not in ingress.served_models:
        raise ApiError(
            404,
            f"model {body.model!r} is not served here; served: {', '.join(ingress.served_models)} (GET /v1/models)",
            param="model",
            code="model_not_found",
        )
    accepted = await ingress.submit(req, traceparent=traceparent)
    created = int(time.time())
    events = request_events(ingress.redis, accepted.stream, accepted.request_id)
    rid, model = accepted.request_id, body.model
    if not body.stream:
        answer = Answer()
        async for event, verdict in events:
            answer.add(event, verdict)
        if isinstance(answer.final, ErrorEvent):
            raise _error_from_event(answer.final)
        assert isinstance(answer.final, DoneEvent)
        text = "".join(answer.text)
        return JSONResponse(
            full_response(kind, request_id=rid, model=model, created=created, text=text, done=answer.final)
        )

    include_usage = body.stream_options is not None and body.stream_options.include_usage

    async def stream() -> AsyncIterator[str]:
        live = LiveText()
        first = True
        async for event, verdict in events:
            if isinstance(event, TokenEvent):
                text = live.feed(event.text, verdict)
                if text:
                    yield json.dumps(chunk(kind, request_id=rid, model=model, created=created, text=text, first=first))
                    first = False
            elif isinstance(event, DoneEvent):
                last = chunk(
                    kind,
                    request_id=rid,
                    model=model,
                    created=created,
                    text="" if kind == "text" else None,
                    finish_reason=event.finish_reason.value,
                    first=first,
                )
                yield json.dumps(last)
                if include_usage:
                    yield json.dumps(usage_chunk(kind, request_id=rid, model=model, created=created, done=event))
            elif isinstance(event, ErrorEvent):
                err = _error_from_event(event)
                yield json.dumps(error_body(err.status, err.message, code=err.code))
        yield "[DONE]"

    return EventSourceResponse(stream(), ping=15)
