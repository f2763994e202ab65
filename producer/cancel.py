"""Cancelling a request from the ingress: mark its request key; the worker that holds it, or will, ends it.

The mark is the request key's ``cancel`` field (``schemas/naming.py``), so any publisher can set it with one
``HSET`` and no worker needs to be found: a queued request is answered ``cancelled`` when a worker takes it,
a running one at the next step boundary (``consumer/sink.py``). The mark lives as long as a response stream
(``BRIGADE_STREAM_TTL_S``): a request published after its mark expired runs.

``POST /v1/sessions/{session_id}/requests/{request_id}/cancel`` is the route; the OpenAI endpoints call
``cancel`` themselves when their client hangs up before the answer is complete, as vLLM aborts such requests.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from brigade.redis_config import RedisClient
from producer.ingress import Ingress
from producer.sessions import SessionId
from schemas.naming import CANCEL_FIELD, Names
from schemas.requests import RequestAccepted

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1")

RequestId = SessionId  # a request id follows the same identifier rules

# What the request was doing when the mark was set: a worker's "running", or no worker's yet ("queued", which
# is also what an unknown or expired request id reads as). A "finished" request is left unmarked.
Status = Literal["queued", "running", "finished"]

# KEYS[1] request key. ARGV[1] the mark's field, ARGV[2] ttl. Returns the status the request had.
MARK = """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'finished' then return status end
redis.call('HSET', KEYS[1], ARGV[1], '1')
redis.call('EXPIRE', KEYS[1], ARGV[2])
return status or 'queued'
"""


async def mark(redis: RedisClient, names: Names, refs: Sequence[tuple[str, str]], *, ttl_s: int) -> list[Status]:
    """Mark requests cancelled (``refs``: their session and request ids), in one pipelined round trip, leaving
    finished ones alone; say what each was doing."""
    async with redis.pipeline(transaction=False) as pipe:
        for session_id, request_id in refs:
            pipe.eval(MARK, 1, names.request_key(request_id, session_id), CANCEL_FIELD, ttl_s)
        statuses = await pipe.execute()
    for (_, request_id), status in zip(refs, statuses, strict=True):
        if status not in ("queued", "running", "finished"):
            raise RuntimeError(f"request key of {request_id!r} holds status {status!r}")
    return list(statuses)


async def cancel(redis: RedisClient, names: Names, *, session_id: str, request_id: str, ttl_s: int) -> Status:
    """Mark one request cancelled (unless it finished); say what it was doing."""
    (status,) = await mark(redis, names, [(session_id, request_id)], ttl_s=ttl_s)
    return status


async def abandon(ingress: Ingress, accepted: list[RequestAccepted], *, reason: str) -> None:
    """Cancel requests nobody will read (``reason``: ``hung_up``, their OpenAI client left; ``call_refused`` or
    ``call_failed``, another choice of their call was refused or failed); finished ones are left alone. A failure
    is logged, not raised, as there is no one left to answer."""
    s = ingress.settings
    refs = [(a.session_id, a.request_id) for a in accepted]
    try:
        statuses = await mark(ingress.redis, s.names, refs, ttl_s=s.stream_ttl_s)
    except RedisError as exc:
        ids = [a.request_id for a in accepted]
        log.warning("could not cancel abandoned requests", extra={"request_ids": ids, "error": str(exc)})
        return
    marked = sum(status != "finished" for status in statuses)
    if marked:
        ingress.metrics.cancels.labels(reason).inc(marked)


@router.post(
    "/sessions/{session_id}/requests/{request_id}/cancel",
    responses={200: {"description": "It had finished: nothing to cancel"}, 202: {"description": "Marked"}},
)
async def cancel_request(session_id: SessionId, request_id: RequestId, request: Request) -> JSONResponse:
    """Cancel a request, queued or running: it ends with one ``done`` event whose finish_reason is ``cancelled``
    (what it streamed before stands). 202 once marked; 200 with ``cancelled: false`` if it had finished."""
    ingress: Ingress = request.app.state.ingress
    s = ingress.settings
    status = await cancel(ingress.redis, s.names, session_id=session_id, request_id=request_id, ttl_s=s.stream_ttl_s)
    if status != "finished":
        ingress.metrics.cancels.labels("requested").inc()
    body: dict[str, Any] = {
        "object": "request.cancel",
        "request_id": request_id,
        "session_id": session_id,
        "status": status,
        "cancelled": status != "finished",
    }
    return JSONResponse(body, status_code=200 if status == "finished" else 202)
