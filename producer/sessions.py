"""Conversation state over HTTP: read or forget ``brigade:session:<session_id>``.

The workers write the session (see ``consumer/session.py`` for the document and its rules); the
ingress only reads it and deletes it. Reading does not extend its TTL; a turn does.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response

from producer.errors import ApiError
from producer.ingress import Ingress
from schemas.requests import MAX_ID_LENGTH

router = APIRouter(prefix="/v1")

SessionId = Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH, pattern=r"^[A-Za-z0-9._:\-]+$")]


def _ingress(request: Request) -> Ingress:
    ingress: Ingress = request.app.state.ingress
    return ingress


@router.get("/sessions/{session_id}")
async def get_session(session_id: SessionId, request: Request) -> dict[str, Any]:
    """The stored conversation: messages (system first), token counts, model, turns, and the TTL left."""
    ingress = _ingress(request)
    key = ingress.settings.names.session_key(session_id)
    async with ingress.redis.pipeline(transaction=False) as pipe:
        pipe.get(key)
        pipe.ttl(key)
        raw, ttl = await pipe.execute()
    if raw is None:
        raise ApiError(
            404,
            f"no session {session_id!r}: it has had no completed chat turn, or it was deleted, or it expired "
            f"{ingress.settings.session_ttl_s} s after its last turn (BRIGADE_SESSION_TTL_S). "
            "Send a request with 'messages' and this session_id to start one",
            param="session_id",
            code="session_not_found",
        )
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise ApiError(
            500,
            f"session {session_id!r} holds something other than a session document; DELETE it to start over",
            param="session_id",
            code="session_corrupt",
        )
    return {"object": "session", **doc, "session_id": session_id, "ttl_s": max(int(ttl), 0)}


@router.delete("/sessions/{session_id}", status_code=204)
async def delete_session(session_id: SessionId, request: Request) -> Response:
    """Forget the conversation; the next chat turn starts a new one. 204 whether or not it existed."""
    ingress = _ingress(request)
    await ingress.redis.delete(ingress.settings.names.session_key(session_id))
    return Response(status_code=204)
