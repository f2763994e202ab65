"""OpenAI's wire shapes for completions and chat completions. Pure builders, no I/O."""

from __future__ import annotations

from typing import Any, Literal

from schemas.events import DoneEvent

Kind = Literal["text", "chat"]


def completion_id(kind: Kind, request_id: str) -> str:
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{request_id}"


def usage(done: DoneEvent | None) -> dict[str, int]:
    prompt = done.prompt_tokens if done else 0
    completion = done.completion_tokens if done else 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _choice(kind: Kind, *, text: str | None, finish_reason: str | None, first: bool) -> dict[str, Any]:
    if kind == "text":
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
    delta: dict[str, Any] = {}
    if first:
        delta["role"] = "assistant"
    if text is not None:
        delta["content"] = text
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def chunk(
    kind: Kind,
    *,
    request_id: str,
    model: str,
    created: int,
    text: str | None = None,
    finish_reason: str | None = None,
    first: bool = False,
) -> dict[str, Any]:
    """One ``data:`` payload of a streamed answer."""
    return {
        "id": completion_id(kind, request_id),
        "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
        "created": created,
        "model": model,
        "choices": [_choice(kind, text=text, finish_reason=finish_reason, first=first)],
    }


def usage_chunk(kind: Kind, *, request_id: str, model: str, created: int, done: DoneEvent | None) -> dict[str, Any]:
    """The extra last chunk sent when ``stream_options.include_usage`` is set: no choices, only usage."""
    return {
        "id": completion_id(kind, request_id),
        "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage(done),
    }


def full_response(
    kind: Kind, *, request_id: str, model: str, created: int, text: str, done: DoneEvent
) -> dict[str, Any]:
    """The whole answer of a ``stream: false`` call."""
    if kind == "chat":
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": done.finish_reason.value,
        }
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": done.finish_reason.value}
        obj = "text_completion"
    return {
        "id": completion_id(kind, request_id),
        "object": obj,
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": usage(done),
    }
