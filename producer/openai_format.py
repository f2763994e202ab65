"""OpenAI's wire shapes for completions and chat completions. Pure builders, no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from schemas.events import DoneEvent, PromptLogprob, TokenLogprob, TopLogprob

Kind = Literal["text", "chat"]


def completion_id(kind: Kind, request_id: str) -> str:
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{request_id}"


@dataclass(frozen=True, slots=True)
class Echo:
    """A completion's ``echo``: the prompt's text before the answer's, and its entries when logprobs were asked."""

    text: str
    entries: Sequence[PromptLogprob] = ()


@dataclass(frozen=True, slots=True)
class Finished:
    """One choice of a whole answer: its text, its done event, and its logprobs when the call asked."""

    text: str
    done: DoneEvent
    entries: Sequence[TokenLogprob] | None = None
    echo: Echo | None = None
    tool_calls: list[dict[str, Any]] | None = None  # a forced tool call's: the message carries these, not text
    finish_reason: str | None = None  # where it is not the done event's own (tool calls)
    reasoning: str | None = None  # a reasoning model's thinking, split from the text (BRIGADE_REASONING_PARSER)


def reasoning_fields(text: str) -> dict[str, str]:
    """A chat message's (or delta's) thinking: vLLM's current ``reasoning``, and ``reasoning_content``, the name
    it had until vLLM 0.11 and that many clients still read."""
    return {"reasoning": text, "reasoning_content": text}


def usage(dones: Sequence[DoneEvent], *, n: int = 1) -> dict[str, Any]:
    """Each prompt once (its ``n`` choices answer the same one; ``dones`` in choice order, prompt-major), the
    choices' tokens summed, as OpenAI counts; ``prompt_tokens_details.cached_tokens``: of each prompt's tokens,
    those a worker's KV cache held (a ``prompt_cache_key``'s previous call, a shared prefix), for the choice that
    found them."""
    prompt = sum(d.prompt_tokens for d in dones[::n])
    completion = sum(d.completion_tokens for d in dones)
    cached = sum(max(d.cached_tokens or 0 for d in dones[i : i + n]) for i in range(0, len(dones), n))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def _chat_token(t: TopLogprob) -> dict[str, Any]:
    return {"token": t.token, "logprob": t.logprob, "bytes": list(t.token.encode())}


def logprobs(
    kind: Kind, entries: Sequence[TokenLogprob], *, text_offset: int = 0, prompt: Sequence[PromptLogprob] = ()
) -> dict[str, Any]:
    """A choice's ``logprobs``: chat's ``content`` list, or the legacy completion's parallel lists.

    The legacy ``top_logprobs`` maps each position's most likely tokens and always the generated one (so up
    to logprobs + 1 keys, as OpenAI documents); ``text_offset`` is each token's character offset in the
    text, the first generated token's at ``text_offset`` (after the echoed prompt, or a stream's earlier
    chunks). ``prompt``: an echoed prompt's entries, first (offsets from 0; the first token's value null).
    """
    if kind == "chat":
        content = [_chat_token(e) | {"top_logprobs": [_chat_token(t) for t in e.top]} for e in entries]
        return {"content": content}
    scored: list[TokenLogprob | PromptLogprob] = [*prompt, *entries]
    offsets, at = [], 0
    for p in prompt:
        offsets.append(at)
        at += len(p.token)
    for e in entries:
        offsets.append(text_offset)
        text_offset += len(e.token)
    return {
        "tokens": [e.token for e in scored],
        "token_logprobs": [e.logprob for e in scored],
        "top_logprobs": [
            None if e.logprob is None else {t.token: t.logprob for t in e.top} | {e.token: e.logprob} for e in scored
        ],
        "text_offset": offsets,
    }


def _choice(
    kind: Kind,
    *,
    index: int,
    text: str | None,
    finish_reason: str | None,
    first: bool,
    lp: dict[str, Any] | None,
    tool_calls: list[dict[str, Any]] | None = None,
    reasoning: str | None = None,
) -> dict[str, Any]:
    if kind == "text":
        return {"index": index, "text": text or "", "logprobs": lp, "finish_reason": finish_reason}
    delta: dict[str, Any] = {}
    if first:
        delta["role"] = "assistant"
    if reasoning is not None:
        delta |= reasoning_fields(reasoning)
    if text is not None:
        delta["content"] = text
    if tool_calls is not None:
        delta["tool_calls"] = tool_calls
    return {"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish_reason}


def chunk(
    kind: Kind,
    *,
    request_id: str,
    model: str,
    created: int,
    index: int = 0,
    text: str | None = None,
    finish_reason: str | None = None,
    first: bool = False,
    lp: dict[str, Any] | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    reasoning: str | None = None,
) -> dict[str, Any]:
    """One ``data:`` payload of a streamed answer, for choice ``index``; ``lp``: its ``logprobs``; ``tool_calls``:
    chat's ``delta.tool_calls`` (each with its ``index``); ``reasoning``: chat's thinking."""
    one = _choice(
        kind,
        index=index,
        text=text,
        finish_reason=finish_reason,
        first=first,
        lp=lp,
        tool_calls=tool_calls,
        reasoning=reasoning,
    )
    return {
        "id": completion_id(kind, request_id),
        "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
        "created": created,
        "model": model,
        "choices": [one],
    }


def usage_chunk(
    kind: Kind, *, request_id: str, model: str, created: int, dones: Sequence[DoneEvent], n: int = 1
) -> dict[str, Any]:
    """The extra last chunk sent when ``stream_options.include_usage`` is set: no choices, only usage."""
    return {
        "id": completion_id(kind, request_id),
        "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage(dones, n=n),
    }


def _whole_choice(kind: Kind, index: int, choice: Finished) -> dict[str, Any]:
    echo = choice.echo or Echo("")
    lp = None
    if choice.entries is not None:
        lp = logprobs(kind, choice.entries, text_offset=len(echo.text), prompt=echo.entries)
    finish = choice.finish_reason or choice.done.finish_reason.value
    if kind == "chat":
        message: dict[str, Any] = {"role": "assistant", "content": choice.text}
        if choice.tool_calls is not None:  # content: what the model wrote around its calls (auto), else null
            message |= {"content": choice.text or None, "tool_calls": choice.tool_calls}
        if choice.reasoning is not None:
            message |= reasoning_fields(choice.reasoning)
        return {"index": index, "message": message, "logprobs": lp, "finish_reason": finish}
    return {"index": index, "text": echo.text + choice.text, "logprobs": lp, "finish_reason": finish}


def full_response(
    kind: Kind, *, request_id: str, model: str, created: int, choices: Sequence[Finished], n: int = 1
) -> dict[str, Any]:
    """The whole answer of a ``stream: false`` call, one choice per request it made (prompts × ``n``)."""
    return {
        "id": completion_id(kind, request_id),
        "object": "chat.completion" if kind == "chat" else "text_completion",
        "created": created,
        "model": model,
        "choices": [_whole_choice(kind, i, c) for i, c in enumerate(choices)],
        "usage": usage([c.done for c in choices], n=n),
    }
