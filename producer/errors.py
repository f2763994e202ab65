"""One error shape everywhere, OpenAI's, so SDKs surface our messages: ``{"error": {message, type, param, code}}``.

Every message names the field, the limit and the fix.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from redis.exceptions import AuthenticationError, RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from schemas.reasons import location, reason

log = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
}


@dataclass(frozen=True, slots=True)
class FieldNames:
    """What the caller called a request's fields, so an error names what they sent: the contract's names
    (``POST /v1/requests``), or an OpenAI endpoint's (``max_tokens``, ``prompt``, ``response_format``)."""

    max_tokens: str = "max_new_tokens"
    prompt: str | None = None  # None: the request's own input field (prompt, messages or prompt_token_ids)
    structured_output: str | None = None  # None: structured_output.<the constraint given>


CONTRACT_FIELDS = FieldNames()


class ApiError(Exception):
    """An answer other than success, with what the caller needs to fix it."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The one error shape (``error_body``) for this answer: as a response, or as a batch item's error."""
        return error_body(self.status, self.message, param=self.param, code=self.code)


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": _TYPES.get(status, "api_error"), "param": param, "code": code}}


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def validation_message(errors: list[Any]) -> tuple[str, str | None]:
    """Pydantic errors → one sentence per field, e.g. "max_new_tokens: Input should be greater than or equal to 1"."""
    parts = []
    first: str | None = None
    for err in errors:
        invalid_json = err.get("type") == "json_invalid"
        # A JSON error's location is ("body", <character offset>): the offset is not a field.
        field = "body" if invalid_json else _field(location(err))
        first = first or field
        msg = reason(err)
        if invalid_json:
            why = err.get("ctx", {}).get("error", msg)
            if "hex escape" in why:  # how the JSON reader reports a \ud800-style escape with no pair
                parts.append(
                    f"the body's text is not valid Unicode ({why}): a \\u escape encodes half of a UTF-16 "
                    "surrogate pair; send UTF-8 text, or escape both halves of the pair"
                )
            else:
                parts.append(f"the body is not valid JSON ({why}); send a JSON object")
        else:
            parts.append(f"{field}: {msg}")
    return "; ".join(parts), first


def error_answer(exc: Exception) -> tuple[int, dict[str, Any], dict[str, str] | None]:
    """The status, body and headers that answer ``exc``: one mapping for the app's handlers and the publish lane."""
    if isinstance(exc, ApiError):
        return exc.status, exc.body(), exc.headers or None
    if isinstance(exc, RequestValidationError | ValidationError):
        # A ValidationError is also a body that passed its own model but not the wire contract (an OpenAI field
        # mapped onto InferenceRequest): still the caller's mistake, so 422 and not a 500.
        message, field = validation_message(list(exc.errors()))
        return 422, error_body(422, message, param=field, code="invalid_value"), None
    if isinstance(exc, AuthenticationError):  # a ConnectionError to redis-py, but no retry by the caller mends it
        log.error("redis refused the ingress's credentials", extra={"error": str(exc)})
        message = (
            "Redis refused the ingress's credentials (revoked or rotated since it started?); retrying will not help "
            "until an operator fixes BRIGADE_REDIS_URL and restarts the ingress"
        )
        return 503, error_body(503, message, code="redis_unavailable"), {"Retry-After": "30"}
    if isinstance(exc, RedisError):
        log.warning("redis unavailable", extra={"error": str(exc)})
        message = f"Redis is not reachable ({type(exc).__name__}); retry shortly (BRIGADE_REDIS_URL)"
        return 503, error_body(503, message, code="redis_unavailable"), {"Retry-After": "1"}
    # Unexpected failures still answer in the one error shape, so SDKs show a message, not a parse error.
    message = f"internal error ({type(exc).__name__}); the ingress logs have the details"
    return 500, error_body(500, message, code="internal"), None


def install_error_handlers(app: FastAPI) -> None:
    async def _answer(_request: Request, exc: Exception) -> JSONResponse:
        status, body, headers = error_answer(exc)
        return JSONResponse(body, status_code=status, headers=headers)

    for caught in (ApiError, RequestValidationError, ValidationError, RedisError, Exception):
        app.add_exception_handler(caught, _answer)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}; see /docs for the methods it takes"
        elif exc.status_code == 404:
            message = f"no route {request.url.path}; see /docs for the API"
        headers = dict(exc.headers) if exc.headers else None
        return JSONResponse(error_body(exc.status_code, message), status_code=exc.status_code, headers=headers)
