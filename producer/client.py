"""Python client for the ingress: ``submit`` a request, ``stream`` its events, or ``generate`` the clean answer.

async with BrigadeClient("http://localhost:8080") as client:
    sub = await client.submit("Once upon a time", max_new_tokens=32)
    async for event in client.stream(sub.session_id, request_id=sub.request_id):
        print(event.type, event.text)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, TypedDict, Unpack

import httpx

from producer.stream_reader import ERROR_STATUS, Answer, AttemptFilter, Verdict
from schemas.events import DoneEvent, ErrorEvent, PromptLogprob, TokenEvent, TokenLogprob, is_final, parse_event
from schemas.requests import ChatMessage, RequestAccepted, StructuredOutput

AnyEvent = TokenEvent | DoneEvent | ErrorEvent


class BrigadeError(Exception):
    """The ingress refused or failed a call; ``message`` says which field, which limit and the fix.

    Subclasses let callers branch on what to do (fix the request, back off, retry elsewhere) without
    reading status codes; ``status``, ``code`` and ``param`` carry the server's details.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.retry_after = retry_after


class InvalidRequest(BrigadeError):
    """400/422: a field is wrong; the message names it. Retrying the same request will not help."""


class NotFound(BrigadeError):
    """404: an unknown model or route."""


class PromptTooLong(BrigadeError):
    """413: the prompt is over BRIGADE_MAX_PROMPT_TOKENS."""


class Overloaded(BrigadeError):
    """429: the request's cost class is over its backlog limit; wait ``retry_after`` seconds."""


class Unavailable(BrigadeError):
    """503: Kafka or Redis is unreachable from the ingress; retry shortly."""


class ServerError(BrigadeError):
    """Any other 5xx."""


class GenerationFailed(BrigadeError):
    """The request was accepted but its stream ended with an ``error`` event (``code``: expired, internal…)."""


_ERRORS: dict[int, type[BrigadeError]] = {
    400: InvalidRequest,
    404: NotFound,
    413: PromptTooLong,
    422: InvalidRequest,
    429: Overloaded,
    503: Unavailable,
}


def error_for(
    status: int, message: str, *, code: str | None = None, param: str | None = None, retry_after: float | None = None
) -> BrigadeError:
    """The ``BrigadeError`` subclass for an HTTP status."""
    cls = _ERRORS.get(status, ServerError if status >= 500 else BrigadeError)
    return cls(status, message, code=code, param=param, retry_after=retry_after)


Submitted = RequestAccepted  # the ingress's 202 body, parsed: request_id, session_id, cost_class, stream…


class RequestOptions(TypedDict, total=False):
    """The request contract's other fields (``schemas/requests.py``, ``brigade schema``), for ``submit`` and
    ``generate``; one left out (or None) takes the contract's default."""

    temperature: float
    top_p: float
    seed: int | None
    stop: str | Sequence[str] | None
    cost_class: str | None
    model: str | None
    deadline: datetime | None
    priority: int
    ignore_eos: bool
    top_k: int | None
    min_p: float | None
    presence_penalty: float | None
    frequency_penalty: float | None
    repetition_penalty: float | None
    logit_bias: Mapping[int, float] | None
    min_tokens: int | None
    stop_token_ids: Sequence[int] | None
    logprobs: int | None
    """Each generated token's log-probability with this many most likely alternatives (0 to 20), on the
    events and on ``Completion.logprobs``."""
    prompt_logprobs: int | None
    """Each prompt token's, likewise, on the first event and on ``Completion.prompt_logprobs``."""
    chat_template_kwargs: Mapping[str, Any] | None
    """With ``messages``: more variables for the model's chat template (Qwen3's ``{"enable_thinking": False}``)."""
    trim_history: bool | None
    """With ``messages``: False answers a conversation too long for the context with ``context_length_exceeded``
    instead of dropping its oldest turns."""
    prompt_cache_key: str | None
    """For a ``prompt`` (or ``messages`` with ``trim_history=False``) that repeats an earlier request's text and
    goes on: requests with one key go to one worker, which computes only what follows the prefix they share."""
    skip_special_tokens: bool | None
    """False keeps the text of special tokens the model generates (its control tokens) in the answer."""
    tools: Sequence[Mapping[str, Any]] | None
    """With ``messages``: the tools the model's chat template describes (OpenAI's shape); pair with a
    ``structured_output`` to make the answer a call."""
    structured_output: StructuredOutput | Mapping[str, Any] | None
    """Constrain the answer: ``{"json_schema": {...}}``, ``{"json_object": True}``, ``{"regex": ...}``,
    ``{"choice": [...]}`` or ``{"grammar": ...}`` (Lark); a schema, regex or grammar that does not compile is
    refused with ``InvalidRequest`` before anything is published."""


@dataclass(frozen=True, slots=True)
class Completion:
    """The clean answer to one request: partial attempts dropped, text joined."""

    request_id: str
    session_id: str
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    attempts: int  # 1 unless a worker crashed mid-generation and the request was regenerated
    cached_tokens: int = 0  # of prompt_tokens, those a worker kept from the previous turn (not computed again)
    traceparent: str | None = None  # the worker's span (W3C): its trace id is the request's
    logprobs: list[TokenLogprob] | None = None  # one per generated token, when the request asked
    prompt_logprobs: list[PromptLogprob] | None = None  # one per prompt token, when the request asked


def _raise_for(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    code: str | None = None
    param: str | None = None
    try:
        err = resp.json()["error"]
        message, code, param = str(err["message"]), err.get("code"), err.get("param")
    except (ValueError, KeyError, TypeError):
        message = resp.text or resp.reason_phrase
    retry = resp.headers.get("retry-after")
    try:
        retry_after = float(retry) if retry else None
    except ValueError:  # an HTTP date; we never send one, a proxy might
        retry_after = None
    raise error_for(resp.status_code, message, code=code, param=param, retry_after=retry_after)


def _parse_sse(lines: list[str]) -> AnyEvent:
    payload = json.loads("\n".join(lines))
    return parse_event({k: v for k, v in payload.items() if v is not None})


_READ_TIMEOUT_S = 60.0  # the SSE endpoint pings every 15 s, so a silent minute means the server is gone


class BrigadeClient:
    """One ingress, over one pooled ``httpx.AsyncClient``. Use as ``async with BrigadeClient(url) as client``."""

    def __init__(self, base_url: str, *, timeout: float = 30.0, http: httpx.AsyncClient | None = None) -> None:
        self._http = http or httpx.AsyncClient(base_url=base_url, timeout=timeout)
        self._owns_http = http is None

    async def __aenter__(self) -> BrigadeClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def submit(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[ChatMessage | Mapping[str, Any]] | None = None,
        prompt_token_ids: Sequence[int] | None = None,
        session_id: str | None = None,
        request_id: str | None = None,
        max_new_tokens: int | None = 64,
        traceparent: str | None = None,
        **options: Unpack[RequestOptions],
    ) -> Submitted:
        """Publish one request; returns once the broker has acknowledged it. Raises a ``BrigadeError`` subclass.

        Give one of ``prompt``, ``messages`` and ``prompt_token_ids`` (ids of the model's vocabulary, read as
        they are). ``options`` are the contract's (``RequestOptions``): what is left out takes its default.
        ``traceparent`` (W3C) joins the request to the caller's trace; without one (or with an invalid one) the
        ingress starts a new trace, and ``Submitted.traceparent`` says which.
        """
        body: dict[str, Any] = {k: v for k, v in options.items() if v is not None}
        if isinstance(stop := body.get("stop"), str):
            body["stop"] = [stop]
        if "deadline" in body:
            body["deadline"] = body["deadline"].isoformat()
        if "logit_bias" in body:
            body["logit_bias"] = dict(body["logit_bias"])
        if "stop_token_ids" in body:
            body["stop_token_ids"] = list(body["stop_token_ids"])
        if "tools" in body:
            body["tools"] = [dict(t) for t in body["tools"]]
        if "chat_template_kwargs" in body:
            body["chat_template_kwargs"] = dict(body["chat_template_kwargs"])
        if isinstance(spec := body.get("structured_output"), StructuredOutput):
            body["structured_output"] = spec.model_dump(exclude_none=True)
        if messages is not None:
            body["messages"] = [
                m.model_dump(exclude_none=True) if isinstance(m, ChatMessage) else dict(m) for m in messages
            ]
        ids = list(prompt_token_ids) if prompt_token_ids is not None else None
        inputs = {"prompt": prompt, "prompt_token_ids": ids, "session_id": session_id, "request_id": request_id}
        body |= {k: v for k, v in inputs.items() if v is not None}
        headers = {"traceparent": traceparent} if traceparent else {}
        # max_new_tokens=None is sent: null asks for as many tokens as the context leaves (absent would be 64)
        resp = await self._http.post("/v1/requests", json=body | {"max_new_tokens": max_new_tokens}, headers=headers)
        _raise_for(resp)
        return Submitted.model_validate(resp.json())

    async def submit_many(
        self, requests: Sequence[Mapping[str, Any]], *, traceparent: str | None = None
    ) -> list[Submitted | BrigadeError]:
        """Publish up to 1000 requests in one ``POST /v1/requests/batch``; one answer per request, in order.

        Each mapping is a ``POST /v1/requests`` body (``prompt`` or ``messages``, ``max_new_tokens``, …). A
        request the ingress refused comes back as its ``BrigadeError`` (the others are on Kafka regardless); a
        body that fails validation raises ``InvalidRequest`` for the whole call, with nothing published.
        """
        headers = {"traceparent": traceparent} if traceparent else {}
        resp = await self._http.post("/v1/requests/batch", json={"requests": list(requests)}, headers=headers)
        if resp.status_code not in (202, 207):
            _raise_for(resp)
        out: list[Submitted | BrigadeError] = []
        for result in resp.json()["results"]:
            if result["status"] == 202:
                out.append(Submitted.model_validate(result["accepted"]))
            else:
                err = result["error"]
                out.append(error_for(result["status"], err["message"], code=err.get("code"), param=err.get("param")))
        return out

    async def cancel(self, session_id: str, request_id: str) -> bool:
        """Cancel a request, queued or running: it ends with one ``done`` whose finish_reason is ``cancelled``
        (what it streamed before stands). False if it had already finished: there was nothing to cancel."""
        resp = await self._http.post(f"/v1/sessions/{session_id}/requests/{request_id}/cancel")
        _raise_for(resp)
        return bool(resp.json()["cancelled"])

    async def stream(
        self, session_id: str, *, request_id: str | None = None, last_event_id: str | None = None
    ) -> AsyncIterator[AnyEvent]:
        """A session's events as written, every attempt included; ends after ``request_id``'s final event.

        A regenerated request shows up as events with a higher ``attempt``: a reader that builds text should
        start over when it sees one (``generate`` does; ``AttemptFilter`` is the helper).
        Without ``request_id`` it follows the session until the caller stops iterating.
        """
        params = {"request_id": request_id} if request_id else {}
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        timeout = httpx.Timeout(self._http.timeout.connect, read=_READ_TIMEOUT_S)
        async with self._http.stream(
            "GET", f"/v1/sessions/{session_id}/events", params=params, headers=headers, timeout=timeout
        ) as resp:
            if resp.status_code >= 400:
                await resp.aread()
                _raise_for(resp)
            data: list[str] = []
            async for line in resp.aiter_lines():
                if line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))
                elif not line and data:
                    event = _parse_sse(data)
                    data = []
                    yield event
                    if request_id is not None and event.request_id == request_id and is_final(event):
                        return

    async def generate(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[ChatMessage | Mapping[str, Any]] | None = None,
        prompt_token_ids: Sequence[int] | None = None,
        session_id: str | None = None,
        request_id: str | None = None,
        max_new_tokens: int | None = 64,
        timeout_s: float | None = None,
        traceparent: str | None = None,
        **options: Unpack[RequestOptions],
    ) -> Completion:
        """Submit and wait for the clean answer: a partial attempt of a crashed worker is dropped.

        ``timeout_s`` bounds the wait for the answer (TimeoutError); a request given up on, by that or by the
        caller's task being cancelled, is cancelled too, so no worker goes on generating it.
        Raises ``GenerationFailed`` when the stream ends with an error event.
        """
        sub = await self.submit(
            prompt,
            messages=messages,
            prompt_token_ids=prompt_token_ids,
            session_id=session_id,
            request_id=request_id,
            max_new_tokens=max_new_tokens,
            traceparent=traceparent,
            **options,
        )
        attempts, answer, attempt = AttemptFilter(), Answer(), 1
        try:
            async with asyncio.timeout(timeout_s):
                async for event in self.stream(sub.session_id, request_id=sub.request_id):
                    verdict = attempts.judge(event)
                    if verdict is not Verdict.DROP:
                        attempt = event.attempt
                    answer.add(event, verdict)
        except (TimeoutError, asyncio.CancelledError):
            with contextlib.suppress(BrigadeError, httpx.HTTPError):
                await self.cancel(sub.session_id, sub.request_id)
            raise
        final = answer.final
        if isinstance(final, ErrorEvent):
            raise GenerationFailed(ERROR_STATUS.get(final.code, 500), final.message, code=final.code.value)
        if not isinstance(final, DoneEvent):
            raise ServerError(502, f"the event stream of {sub.request_id} ended without a final event")
        return Completion(
            request_id=sub.request_id,
            session_id=sub.session_id,
            text="".join(answer.text),
            finish_reason=final.finish_reason.value,
            prompt_tokens=final.prompt_tokens,
            completion_tokens=final.completion_tokens,
            attempts=attempt,
            cached_tokens=final.cached_tokens or 0,
            traceparent=final.traceparent,
            logprobs=answer.logprobs if options.get("logprobs") is not None else None,
            prompt_logprobs=answer.prompt_logprobs,
        )
