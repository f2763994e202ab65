"""``PublishLane`` at its own edges: what the served-over-HTTP tests in test_ingress cannot reach.

The ingress here is a stand-in that raises what the real one would (or worse): the lane's job is to
turn that into the app's answer, not to publish, which test_ingress checks against a real broker.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.types import Message

from producer.errors import ApiError, install_error_handlers
from producer.lane import PublishLane
from producer.routes import router


class StandIn:
    """Raises ``error`` from ``submit`` and ``submit_many``, after noting what it was asked."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls: list[dict[str, Any]] = []

    async def submit(self, request: Any, **kw: Any) -> Any:
        self.calls.append({"request": request, **kw})
        raise self.error

    async def submit_many(self, requests: Any, **kw: Any) -> Any:
        self.calls.append({"requests": requests, **kw})
        raise self.error


def lane_with(error: Exception, *, root_path: str = "") -> tuple[httpx.AsyncClient, StandIn]:
    app = FastAPI()
    ingress = StandIn(error)
    app.state.ingress = ingress
    transport = httpx.ASGITransport(app=PublishLane(app), root_path=root_path)
    return httpx.AsyncClient(transport=transport, base_url="http://ingress"), ingress


async def test_an_unexpected_error_is_a_500_in_the_error_shape_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    http, ingress = lane_with(RuntimeError("boom"))
    with caplog.at_level(logging.ERROR, logger="producer.lane"):
        async with http:
            resp = await http.post("/v1/requests", json={"prompt": "hi"})
    assert resp.status_code == 500
    assert resp.json()["error"]["code"] == "internal" and "RuntimeError" in resp.json()["error"]["message"]
    assert len(ingress.calls) == 1
    assert any(r.exc_info and "boom" in str(r.exc_info[1]) for r in caplog.records)


async def test_an_api_error_keeps_its_status_and_headers_under_a_root_path() -> None:
    refusal = ApiError(
        429,
        "class 'small' is over its backlog; retry after 3 s",
        code="class_backlog_full",
        headers={"Retry-After": "3"},
    )
    http, ingress = lane_with(refusal, root_path="/brigade")
    async with http:
        resp = await http.post(
            "/brigade/v1/requests/batch",
            json={"requests": [{"prompt": "hi"}]},
            headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
        )
    assert resp.status_code == 429 and resp.headers["retry-after"] == "3"
    assert resp.json()["error"]["code"] == "class_backlog_full"
    assert ingress.calls[0]["traceparent"] == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def test_a_body_that_fails_validation_never_reaches_the_ingress() -> None:
    http, ingress = lane_with(RuntimeError("must not be called"))
    async with http:
        resp = await http.post("/v1/requests", json={"prompt": "hi", "max_new_tokens": 0})
    assert resp.status_code == 422 and resp.json()["error"]["param"] == "max_new_tokens"
    assert ingress.calls == []


async def test_a_client_gone_before_its_body_is_not_answered_and_nothing_is_submitted() -> None:
    app = FastAPI()
    ingress = StandIn(RuntimeError("must not be called"))
    app.state.ingress = ingress
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/requests", "root_path": "", "headers": []}
    await PublishLane(app)(scope, receive, send)
    assert sent == [] and ingress.calls == []


async def test_other_methods_and_paths_go_to_the_app() -> None:
    app = FastAPI()
    app.state.ingress = StandIn(RuntimeError("must not be called"))

    @app.get("/v1/requests")
    async def listing() -> dict[str, str]:
        return {"served_by": "app"}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=PublishLane(app)), base_url="http://i") as http:
        assert (await http.get("/v1/requests")).json() == {"served_by": "app"}
        assert (await http.post("/v1/requests/other", json={})).status_code == 404


async def test_a_lone_surrogate_escape_is_named_as_such_not_as_broken_json() -> None:
    http, ingress = lane_with(RuntimeError("must not be called"))
    async with http:
        resp = await http.post("/v1/requests", content=b'{"prompt": "caf\\ud800e"}')
    error = resp.json()["error"]
    assert resp.status_code == 422 and error["param"] == "body"
    assert "not valid Unicode" in error["message"] and "surrogate" in error["message"], error
    assert ingress.calls == []


async def test_without_the_lane_the_apps_own_routes_answer_the_same() -> None:
    """Where the app runs bare (mounted in another ASGI app), its declarations of the two routes serve them."""
    refusal = ApiError(429, "over its backlog", code="class_backlog_full", headers={"Retry-After": "3"})
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router)
    ingress = StandIn(refusal)
    app.state.ingress = ingress
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingress") as http:
        invalid = await http.post("/v1/requests", json={"prompt": "hi", "max_new_tokens": 0})
        refused = await http.post(
            "/v1/requests/batch", json={"requests": [{"prompt": "hi"}]}, headers={"tracestate": "k=v"}
        )
    assert invalid.status_code == 422 and invalid.json()["error"]["param"] == "max_new_tokens"
    assert refused.status_code == 429 and refused.headers["retry-after"] == "3"
    assert refused.json()["error"]["code"] == "class_backlog_full"
    assert len(ingress.calls) == 1 and ingress.calls[0]["tracestate"] == "k=v"
