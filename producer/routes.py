"""The native API: submit a request, read a session's events as Server-Sent Events."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Annotated, Any, NamedTuple, Protocol

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import to_json
from sse_starlette import EventSourceResponse, ServerSentEvent

from producer.errors import ApiError
from producer.ingress import Ingress
from producer.stream_reader import follow
from schemas.events import is_final
from schemas.requests import Identifier, InferenceRequest

router = APIRouter()

_JSON = "application/json"
MAX_BATCH_REQUESTS = 1000  # requests per POST /v1/requests/batch; more is more than one HTTP body should carry


def _new_id() -> str:
    return uuid.uuid4().hex


class SubmitBody(InferenceRequest):
    """``InferenceRequest`` with ``request_id`` and ``session_id`` optional: the ingress generates them.

    Being an ``InferenceRequest`` once validated, it is published as it is, with no second validation.
    """

    request_id: Identifier = Field(default_factory=_new_id)
    session_id: Identifier = Field(default_factory=_new_id)


class BatchBody(BaseModel):
    """Many requests in one POST: the HTTP cost is paid once, and their messages share produce batches."""

    model_config = ConfigDict(extra="forbid")

    requests: list[SubmitBody] = Field(min_length=1, max_length=MAX_BATCH_REQUESTS)


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI for a body the route parses itself, with every ``$ref`` inlined (there is no ``$defs`` there).

    The two publish routes read their body with ``model_validate_json`` rather than as a FastAPI parameter:
    one parse in pydantic's own JSON reader, instead of ``json.loads`` and then a validation of the Python
    objects, and no dependency solving for the headers. That was about a tenth of the ingress's CPU per
    request. Errors still come out as pydantic's, which the error handlers answer as 422 naming the field.
    """
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(value) for value in node]
        return node

    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline(schema)}}}}


def ingress_of(request: Request) -> Ingress:
    ingress: Ingress = request.app.state.ingress
    return ingress


class Answer(NamedTuple):
    """A publish route's response: what ``PublishLane`` sends, and what the FastAPI routes wrap."""

    status: int
    body: bytes
    headers: dict[str, str] | None = None

    def response(self) -> Response:
        return Response(self.body, status_code=self.status, headers=self.headers, media_type=_JSON)


async def answer_submit(ingress: Ingress, body: bytes, *, traceparent: str | None, tracestate: str | None) -> Answer:
    """``POST /v1/requests``: validate, publish, answer 202 with where the request went (errors raise)."""
    request = SubmitBody.model_validate_json(body)
    accepted = await ingress.submit(request, traceparent=traceparent, tracestate=tracestate)
    return Answer(202, to_json(accepted))


async def answer_batch(ingress: Ingress, body: bytes, *, traceparent: str | None, tracestate: str | None) -> Answer:
    """``POST /v1/requests/batch``: each request answered as ``answer_submit`` would, in order (a body that fails
    validation raises, so nothing of it is published)."""
    batch = BatchBody.model_validate_json(body)
    outcomes = await ingress.submit_many(batch.requests, traceparent=traceparent, tracestate=tracestate)
    results: list[dict[str, Any]] = []
    retry_after: list[int] = []
    for outcome in outcomes:
        if isinstance(outcome, ApiError):
            results.append({"status": outcome.status, **outcome.body()})
            if "Retry-After" in outcome.headers:
                retry_after.append(int(outcome.headers["Retry-After"]))
        else:
            results.append({"status": 202, "accepted": outcome})
    refused = len(results) - sum(1 for r in results if r["status"] == 202)
    headers = {"Retry-After": str(max(retry_after))} if retry_after else None
    answer = {"accepted": len(results) - refused, "refused": refused, "results": results}
    # pydantic's serializer writes the models and dicts in one pass; json.dumps needed model_dump first.
    return Answer(207 if refused else 202, to_json(answer), headers)


class Handler(Protocol):
    """``answer_submit`` and ``answer_batch``: a publish route's work, from the raw body to its answer."""

    def __call__(
        self, ingress: Ingress, body: bytes, *, traceparent: str | None, tracestate: str | None
    ) -> Awaitable[Answer]: ...


# The two publish routes are served by ``PublishLane`` (producer/lane.py) ahead of the app; these
# declarations give them their OpenAPI entries, and serve them where the app runs without the lane.


async def _through_app(handler: Handler, request: Request) -> Response:
    h = request.headers
    answer = await handler(
        ingress_of(request), await request.body(), traceparent=h.get("traceparent"), tracestate=h.get("tracestate")
    )
    return answer.response()


@router.post("/v1/requests", status_code=202, openapi_extra=json_body(SubmitBody))
async def submit(request: Request) -> Response:
    """Publish a request to its cost class's topic; 202 once the broker has acknowledged it.

    A W3C ``traceparent`` header (with ``tracestate``) makes the request part of the caller's trace.
    """
    return await _through_app(answer_submit, request)


@router.post(
    "/v1/requests/batch",
    status_code=202,
    responses={207: {"description": "Some requests were refused"}},
    openapi_extra=json_body(BatchBody),
)
async def submit_batch(request: Request) -> Response:
    """Publish each request as ``POST /v1/requests`` would; 202 when all were acknowledged, else 207.

    A body that fails validation is refused whole (422, naming ``requests.<index>.<field>``), so nothing of a
    malformed batch is published. What depends on the deployment (routing, limits, backlog, broker) is
    answered per request, in order: ``{"status": 202, "accepted": {...}}`` or ``{"status": 4xx/5xx,
    "error": {...}}``; the accepted ones are on Kafka whatever happened to the others.
    """
    return await _through_app(answer_batch, request)


@router.get("/v1/sessions/{session_id}/events")
async def session_events(
    session_id: str,
    request: Request,
    request_id: Annotated[str | None, Query(description="End after this request's final event.")] = None,
    last_event_id: Annotated[str | None, Query(description="Resume after this stream entry id.")] = None,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> EventSourceResponse:
    """Server-Sent Events from ``brigade:stream:<session_id>``: ``id`` is the Redis entry id, so resuming works."""
    ingress = ingress_of(request)
    await ingress.require_redis()  # a 503 now, rather than a stream that breaks after its headers
    key = ingress.settings.names.stream_key(session_id)
    start = last_event_id_header or last_event_id or "0-0"

    # A stream that follows a whole session never ends by itself: it ends when the ingress drains, and the
    # client resumes elsewhere with Last-Event-ID. One request's stream is left to finish its answer.
    until: asyncio.Event | None = request.app.state.draining if request_id is None else None

    async def events() -> AsyncIterator[ServerSentEvent]:
        async for entry_id, event in follow(ingress.redis, key, last_id=start, until=until):
            if request_id is not None and event.request_id != request_id:
                continue
            yield ServerSentEvent(id=entry_id, event=event.type, data=json.dumps(event.model_dump(mode="json")))
            if request_id is not None and is_final(event):
                return

    return EventSourceResponse(events(), ping=15)
