"""Python client for the ingress: ``submit`` a request, ``stream`` its events, or ``generate`` the clean answer.

async with BrigadeClient("http://localhost:8080") as client:
    sub = await client.submit("Once upon a time", max_new_tokens=32)
    async for event in client.stream(sub.session_id, request_id=sub.request_id):
        print(event.type, event.text)
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any

import httpx

from producer.stream_reader import Answer, AttemptFilter
from schemas.events import DoneEvent, ErrorEvent, TokenEvent, is_final, parse_event
from schemas.requests import ChatMessage, RequestAccepted

AnyEvent = TokenEvent | DoneEvent | ErrorEvent


class BrigadeError(Exception):
    """The ingress refused or failed a call; ``message`` says which field, which limit and the fix."""

    def __init__(self, status: int, message: str, *, code: str | None = None, retry_after: float | None = None):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.code = code
        self.retry_after = retry_after


Submitted = RequestAccepted  # the ingress's 202 body, parsed


@dataclass(frozen=True, slots=True)
class Completion:
    request_id: str
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


def _raise_for(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    try:
        err = resp.json()["error"]
        message, code = str(err["message"]), err.get("code")
    except (ValueError, KeyError, TypeError):
        message, code = resp.text or resp.reason_phrase, None
    retry = resp.headers.get("retry-after")
    raise BrigadeError(resp.status_code, message, code=code, retry_after=float(retry) if retry else None)


class BrigadeClient:
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
        messages: Sequence[ChatMessage | dict[str, str]] | None = None,
        session_id: str | None = None,
        request_id: str | None = None,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] = (),
        cost_class: str | None = None,
        deadline: datetime | None = None,
        priority: int = 0,
        ignore_eos: bool = False,
    ) -> RequestAccepted:
        """Publish one request; returns once the broker has acknowledged it."""
        body: dict[str, Any] = {
            "prompt": prompt,
            "messages": [m.model_dump() if isinstance(m, ChatMessage) else dict(m) for m in messages]
            if messages is not None
            else None,
            "session_id": session_id,
            "request_id": request_id,
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "seed": seed,
            "stop": list(stop),
            "cost_class": cost_class,
            "deadline": deadline.isoformat() if deadline else None,
            "priority": priority,
            "ignore_eos": ignore_eos,
        }
        resp = await self._http.post("/v1/requests", json={k: v for k, v in body.items() if v is not None})
        _raise_for(resp)
        return RequestAccepted.model_validate(resp.json())

    async def stream(
        self, session_id: str, *, request_id: str | None = None, last_event_id: str | None = None
    ) -> AsyncIterator[AnyEvent]:
        """Events of a session as they happen (all attempts, as written); ends after ``request_id``'s final."""
        params = {"request_id": request_id} if request_id else {}
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        timeout = httpx.Timeout(self._http.timeout.connect, read=None)
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
                    event = parse_event({k: str(v) for k, v in json.loads("\n".join(data)).items() if v is not None})
                    data = []
                    yield event
                    if request_id is not None and event.request_id == request_id and is_final(event):
                        return

    async def generate(self, prompt: str | None = None, **kwargs: Any) -> Completion:
        """Submit and wait for the clean answer: partial attempts of a crashed worker are dropped."""
        sub = await self.submit(prompt, **kwargs)
        attempts, answer = AttemptFilter(), Answer()
        async for event in self.stream(sub.session_id, request_id=sub.request_id):
            answer.add(event, attempts.judge(event))
        final = answer.final
        if isinstance(final, ErrorEvent):
            raise BrigadeError(500, final.message, code=final.code.value)
        assert isinstance(final, DoneEvent), "the stream ended without a final event"
        return Completion(
            request_id=sub.request_id,
            text="".join(answer.text),
            finish_reason=final.finish_reason.value,
            prompt_tokens=final.prompt_tokens,
            completion_tokens=final.completion_tokens,
        )
