"""OpenAI-compatible endpoints. They publish to Kafka and read the Redis stream like every other client.

Each call is its own session (the OpenAI API is stateless: the full ``messages`` come every time).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response
from sse_starlette import EventSourceResponse

from producer.cancel import abandon
from producer.errors import ApiError, FieldNames
from producer.ingress import Ingress
from producer.openai_bodies import ChatBody, CompletionBody, OpenAIBody
from producer.openai_format import Echo, Finished, Kind, full_response
from producer.openai_stream import chunks, error_from_event
from producer.reasoning import FORMATS as THINK_FORMATS
from producer.reasoning import split_reasoning, think_then
from producer.stream_reader import Answer, AnyEvent, Verdict, request_events
from schemas.events import DoneEvent, ErrorEvent
from schemas.requests import InferenceRequest, RequestAccepted

router = APIRouter(prefix="/v1")

ABANDON_TIMEOUT_S = 2.0  # how long a hung-up stream's handler may spend cancelling its requests


def _model_entry(ingress: Ingress, model: str) -> dict[str, Any]:
    """OpenAI's model object with vLLM's ``root`` and ``max_model_len`` (what its tokenizer files state), plus
    ``cost_classes``: the classes whose workers serve it, cheapest first, and how its answers' tool calls and
    thinking are read."""
    classes = [c.name for c in ingress.settings.classes_serving(model)]
    formats = ingress.formats_for(model)
    info = ingress.tokenizer_info.get(model)
    return {
        "id": model,
        "object": "model",
        "created": 0,
        "owned_by": "brigade",
        "root": model,
        "max_model_len": info.model_max_length if info is not None else None,  # vLLM's; null: none stated
        "cost_classes": classes,
        "tool_call_parser": formats.tool_call_parser,
        "reasoning_parser": formats.reasoning_parser,
    }


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
    with that refusal, and the accepted ones are cancelled: nobody would read them."""
    options: dict[str, Any] = {"traceparent": trace[0], "tracestate": trace[1], "fields": fields}
    if len(wires) == 1:
        return [await ingress.submit(wires[0], **options)]
    results = await ingress.submit_many(wires, **options)
    accepted = [result for result in results if not isinstance(result, ApiError)]
    refused = next((result for result in results if isinstance(result, ApiError)), None)
    if refused is not None:
        await abandon(ingress, accepted, reason="call_refused")
        raise refused
    return accepted


async def _answer(
    kind: Kind, body: OpenAIBody, request: Request, trace: tuple[str | None, str | None]
) -> Response | EventSourceResponse:
    """``trace``: the caller's (traceparent, tracestate) headers, passed on to the Kafka records."""
    ingress: Ingress = request.app.state.ingress
    ingress.check_model(body.model)
    formats = ingress.formats_for(body.model)
    body.use_tool_parser(formats.tool_call_parser)
    await ingress.require_redis()  # publish nothing whose answer could not be read
    wires = [wire for inputs in body.inputs() for wire in body.to_requests(**inputs)]
    parser = formats.reasoning_parser
    thinking = THINK_FORMATS[parser] if kind == "chat" and parser != "none" else None
    if thinking is not None and (spec := wires[0].structured_output) is not None:
        # A reasoning model thinks before its constrained answer, as vLLM has it (a grammar that compiles).
        composed = await asyncio.to_thread(think_then, spec, thinking)
        if composed is None:
            thinking = None  # the grammar shapes the whole answer: there is no thinking to split
        else:
            wires = [wire.model_copy(update={"structured_output": composed}) for wire in wires]
    accepted = await _publish(ingress, wires, trace, body.fields())
    asked = wires[0].logprobs is not None
    calling = body.output().calling
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
            tools=calling,
            thinking=thinking,
        )
        return EventSourceResponse(_cancel_unless_read(payloads, ingress, accepted), ping=15)
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
        await abandon(ingress, accepted, reason="hung_up")
        return Response(status_code=499)  # client closed the request; nobody reads this
    choices: list[Finished] = []
    for i, answer in enumerate(collecting.result()):  # a RedisError here is answered as 503
        if isinstance(answer.final, ErrorEvent):
            raise error_from_event(answer.final)
        assert isinstance(answer.final, DoneEvent)
        echoed = None if echo is None else Echo(echo[i], answer.prompt_logprobs or ())
        reasoning, text = None, "".join(answer.text)
        if thinking is not None:
            reasoning, text = split_reasoning(thinking, text)
        content: str | None = text
        calls = None
        reason = answer.final.finish_reason.value
        if calling is not None:
            content, calls = calling.split(text)
            reason = calling.finish_reason(reason, calls is not None)
        entries = answer.logprobs if asked else None
        choices.append(
            Finished(content or "", answer.final, entries, echoed, calls, finish_reason=reason, reasoning=reasoning)
        )
    return JSONResponse(full_response(kind, request_id=rid, model=model, created=created, choices=choices, n=body.n))


async def _cancel_unless_read(
    payloads: AsyncIterator[str], ingress: Ingress, accepted: list[RequestAccepted]
) -> AsyncIterator[str]:
    """The stream's chunks; if the client hangs up before the last one, its requests are cancelled (vLLM aborts
    them too), so no worker keeps generating what nobody reads. With several choices, one choice's error ends the
    answer: the others are cancelled then (the mark leaves finished ones alone, so a whole answer costs one
    pipelined round trip and changes nothing)."""
    complete = False
    try:
        async for payload in payloads:
            yield payload
        complete = True
    finally:
        if not complete:
            # The response's task is being cancelled: only a shielded scope may still talk to Redis.
            with anyio.CancelScope(shield=True), anyio.move_on_after(ABANDON_TIMEOUT_S):
                await abandon(ingress, accepted, reason="hung_up")
    if len(accepted) > 1:
        await abandon(ingress, accepted, reason="call_failed")


def _prompt_text(ingress: Ingress, model: str, wire: InferenceRequest) -> str:
    """What an echo starts with: the prompt as sent, or its token ids decoded by the model's tokenizer."""
    if wire.prompt is not None:
        return wire.prompt
    return ingress.router.decode(model, wire.prompt_token_ids or [])


async def _collect_all(streams: list[AsyncIterator[tuple[AnyEvent, Verdict]]]) -> list[Answer]:
    return list(await asyncio.gather(*(_collect(s) for s in streams)))
