"""Open-loop load through the ingress: requests sent at a fixed rate whatever the fleet is going through.

Open loop on purpose: a closed loop (send the next when the last was answered) slows down exactly when
a fault hits and so hides it. Each request carries its own ``request_id``, so a request the ingress did
not acknowledge (a 503 while the broker was frozen) can still be looked for in Redis afterwards: the
broker may have taken it after the ingress gave up waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from schemas.requests import RequestAccepted

ACCEPTED = 202


@dataclass(frozen=True, slots=True)
class Submission:
    """One POST /v1/requests and what the ingress answered."""

    request_id: str
    session_id: str
    status: int  # HTTP status; 0 when no answer came (connection refused, timeout)
    partition: int | None = None  # from the 202 body: where the broker put it
    offset: int | None = None

    @property
    def acknowledged(self) -> bool:
        return self.status == ACCEPTED


def prompt_body(request_id: str, session_id: str, *, max_new_tokens: int, cost_class: str = "small") -> dict[str, Any]:
    """A fixed-length, greedy completion: every attempt of it generates the same tokens."""
    return {
        "request_id": request_id,
        "session_id": session_id,
        "prompt": f"Ticket {request_id}: fire the dish and send it to the pass.",
        "max_new_tokens": max_new_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "cost_class": cost_class,
    }


async def post_request(http: httpx.AsyncClient, body: dict[str, Any]) -> Submission:
    rid, sid = str(body["request_id"]), str(body["session_id"])
    try:
        resp = await http.post("/v1/requests", json=body)
    except httpx.HTTPError:
        return Submission(rid, sid, 0)
    if resp.status_code != ACCEPTED:
        return Submission(rid, sid, resp.status_code)
    ack = RequestAccepted.model_validate(resp.json())
    return Submission(ack.request_id, ack.session_id, ACCEPTED, ack.partition, ack.offset)


async def send_paced(
    url: str,
    bodies: Sequence[dict[str, Any]],
    *,
    rate_per_s: float,
    on_answer: Callable[[Submission], None] | None = None,
    timeout_s: float = 30.0,
) -> list[Submission]:
    """POST each body at ``t0 + i / rate_per_s`` without waiting for earlier answers; all answers, in order."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as http:

        async def one(i: int, body: dict[str, Any]) -> Submission:
            await asyncio.sleep(max(0.0, t0 + i / rate_per_s - loop.time()))  # the load's schedule
            sub = await post_request(http, body)
            if on_answer is not None:
                on_answer(sub)
            return sub

        return await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies)))
