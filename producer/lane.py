"""The publish routes in plain ASGI, in front of the FastAPI app: the ingress's hot path without its layers.

Through FastAPI a ``POST /v1/requests`` passed a dozen middleware and routing layers (FastAPI's and
Starlette's) and built a Request and a Response: measured with py-spy at saturation, those layers were 29%
of the ingress's CPU per request, more than publishing it. ``PublishLane`` answers the two publish routes
itself (the handlers in ``producer/routes.py``, the error mapping in ``producer/errors.py``, so the answers
are the app's) and passes everything else, these paths with other methods included, to the app.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI
from pydantic_core import to_json
from starlette.types import Receive, Scope, Send

from producer.errors import error_answer
from producer.ingress import Ingress
from producer.routes import Answer, Handler, answer_batch, answer_submit

log = logging.getLogger(__name__)


ROUTES: dict[str, Handler] = {"/v1/requests": answer_submit, "/v1/requests/batch": answer_batch}

_JSON = (b"content-type", b"application/json")


class PublishLane:
    """An ASGI app: the publish routes answered here, the rest by ``app``."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = ROUTES.get(_route_path(scope))
            if handler is not None:
                await self._serve(handler, scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _serve(self, handler: Handler, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _read_body(receive)
        if body is None:
            return  # the client left before sending its body: nobody to answer, nothing published
        traceparent = tracestate = None
        for name, value in scope["headers"]:
            if name == b"traceparent":
                traceparent = value.decode("latin-1")
            elif name == b"tracestate":
                tracestate = value.decode("latin-1")
        ingress: Ingress = self.app.state.ingress
        try:
            answer = await handler(ingress, body, traceparent=traceparent, tracestate=tracestate)
        except Exception as exc:
            status, error, headers = error_answer(exc)
            if status == 500:
                log.exception("unexpected error answering %s", scope["path"])
            answer = Answer(status, to_json(error), headers)
        extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (answer.headers or {}).items()]
        length = (b"content-length", str(len(answer.body)).encode())
        await send({"type": "http.response.start", "status": answer.status, "headers": [_JSON, length, *extra]})
        await send({"type": "http.response.body", "body": answer.body})


def _route_path(scope: Scope) -> str:
    """The path the app's router would match: without the root path a proxy mounts the ingress under."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None if the client disconnected first.

    Read here rather than through Starlette's ``Request``: its ``body()`` and ``headers`` cost about 6 µs per
    request against 0.6 µs for this and the header scan in ``_serve`` (timeit, one 200-byte body).
    """
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)
