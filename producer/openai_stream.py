"""A streamed OpenAI answer: the events of a call's requests, one request per choice, as SSE chunks.

Each choice is its own request on its own session, so its events come from its own Redis stream; they are
merged as they arrive, and every chunk names its choice by ``index``, as OpenAI's do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from producer.call_scanner import JsonCallScanner, tool_call
from producer.errors import ApiError
from producer.openai_format import Kind, chunk, logprobs, usage_chunk
from producer.openai_tools import ToolCalling
from producer.reasoning import ThinkFormat, ThinkStream
from producer.stream_reader import ERROR_STATUS, AnyEvent, LiveText, Verdict
from producer.tool_parsers import CallStream
from schemas.events import DoneEvent, ErrorEvent, PromptLogprob, TokenEvent, TokenLogprob

Judged = AsyncIterator[tuple[AnyEvent, Verdict]]


def error_from_event(event: ErrorEvent) -> ApiError:
    return ApiError(ERROR_STATUS.get(event.code, 500), event.message, code=event.code.value)


async def merged(streams: Sequence[Judged]) -> AsyncGenerator[tuple[int, AnyEvent, Verdict], None]:
    """Every stream's events as they come, each with its stream's index; ends when all have ended."""
    if len(streams) == 1:  # the common call (n = 1): no tasks, no queue
        async for event, verdict in streams[0]:
            yield 0, event, verdict
        return
    queue: asyncio.Queue[tuple[int, AnyEvent, Verdict] | BaseException | None] = asyncio.Queue()

    async def pump(index: int, events: Judged) -> None:
        try:
            async for event, verdict in events:
                await queue.put((index, event, verdict))
        except Exception as exc:  # a Redis failure reaches the reader, not a forgotten task
            await queue.put(exc)
        await queue.put(None)

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass
class _Choice:
    """What one choice's client side has: its text and entries (a replayed attempt's seam hidden)."""

    text: LiveText[str] = field(default_factory=LiveText[str])
    entries: LiveText[list[TokenLogprob]] = field(default_factory=LiveText[list[TokenLogprob]])
    first: bool = True  # the next chunk is its first (chat's delta names the role)
    offset: int = 0  # characters of its text sent: the legacy text_offset of the next entry
    echo: str | None = None  # the prompt, until the first chunk carries it (``echo``)
    held: str = ""  # a list of tool calls' text, parsed whole at its end for the finish reason
    listed: JsonCallScanner = field(default_factory=JsonCallScanner)  # that list, streamed as it comes
    auto: CallStream | None = None  # tool_choice auto: content now, calls as they are written
    think: ThinkStream | None = None  # a reasoning model's: its thinking split from its content


def _text_fields(tools: ToolCalling | None, c: _Choice, text: str, *, end: bool = False) -> dict[str, Any] | None:
    """What a choice's new text becomes in its chunk: reasoning, content, a named call's arguments, or nothing
    yet. ``end``: the answer has ended; flush what its reasoning split held."""
    if c.think is None:
        return _answer_fields(tools, c, text)
    reasoning, content = c.think.end() if end else c.think.feed(text)
    fields = _answer_fields(tools, c, content) if content else None
    return {"reasoning": reasoning, **(fields or {})} if reasoning else fields


def _answer_fields(tools: ToolCalling | None, c: _Choice, text: str) -> dict[str, Any] | None:
    """What the answer's text (a reasoning model's, past its thinking) becomes in its chunk."""
    if tools is None:
        return {"text": text}
    if tools.auto is not None:
        c.auto = c.auto or CallStream(tools.auto)
        content, calls = c.auto.feed(text)
        fields: dict[str, Any] = {"text": content} if content else {}
        return fields | {"tool_calls": calls} if calls else fields or None
    if tools.named is None:
        c.held += text
        calls = c.listed.feed(text)
        return {"tool_calls": calls} if calls else None
    if c.first:
        return {"tool_calls": [tool_call(tools.named, text, index=0)]}
    return {"tool_calls": [{"index": 0, "function": {"arguments": text}}]}


def _closing_fields(tools: ToolCalling | None, c: _Choice) -> tuple[list[dict[str, Any]], bool]:
    """At a choice's end, the chunks of what it still held (thinking, content, a list of calls, an auto
    answer's calls), and whether it made calls."""
    out = []
    if c.think is not None and (fields := _text_fields(tools, c, "", end=True)) is not None:
        out.append(fields)
    if tools is None or tools.named is not None:
        return out, False
    held, called = _held_fields(tools, c)
    return out + held, called


def _held_fields(tools: ToolCalling, c: _Choice) -> tuple[list[dict[str, Any]], bool]:
    """At a choice's end, what its held text becomes: content, then the calls it made (each with its index).
    Calls that went out as they were written stand, even if the whole no longer parses (cut by max_tokens):
    the text they came from is not sent again as content."""
    content, calls = c.auto.end() if c.auto is not None else tools.split(c.held)
    if c.listed.sent or (c.auto is not None and c.auto.sent):
        return ([{"text": content}] if content and calls is not None else []), True
    fields: list[dict[str, Any]] = [{"text": content}] if content else []
    if calls is not None:
        fields.append({"tool_calls": [{"index": i, **call} for i, call in enumerate(calls)]})
    return fields, calls is not None


async def chunks(
    kind: Kind,
    streams: Sequence[Judged],
    *,
    request_id: str,
    model: str,
    created: int,
    asked_logprobs: bool,
    include_usage: bool,
    echo: Sequence[str] | None = None,
    n: int = 1,
    tools: ToolCalling | None = None,
    thinking: ThinkFormat | None = None,
) -> AsyncIterator[str]:
    """The ``data:`` payloads of a streamed call, ``[DONE]`` last. An error event ends the whole answer with an
    error payload (the other choices' requests still finish, unread). ``echo``: the text each choice's first
    chunk starts with, with the prompt's entries (which come on its first event) when logprobs were asked;
    ``n``: choices per prompt, for usage; ``tools``: a tool call, whose text goes out as ``tool_calls`` (a named
    function's arguments as they come; a list of calls, each as its name and then its arguments come; with
    ``auto``, the text before the model's first call as content, then the calls as they come where the format
    writes them as JSON objects, else at the end); ``thinking``: a reasoning model's format,
    whose thinking goes out as ``reasoning`` (``producer/reasoning.py``)."""
    choices = [
        _Choice(echo=None if echo is None else echo[i], think=None if thinking is None else ThinkStream(thinking))
        for i in range(len(streams))
    ]
    dones: dict[int, DoneEvent] = {}

    def payload(index: int, **fields: Any) -> str:
        return json.dumps(chunk(kind, request_id=request_id, model=model, created=created, index=index, **fields))

    async with contextlib.aclosing(merged(streams)) as events:
        async for index, event, verdict in events:
            c = choices[index]
            if isinstance(event, TokenEvent | DoneEvent):
                text = c.text.feed(event.text, verdict)
                entries = c.entries.feed(event.logprobs or [], verdict)
                prompt: list[PromptLogprob] = []
                if c.echo is not None and verdict is not Verdict.DROP:
                    text, c.offset, c.echo = c.echo + text, len(c.echo), None
                    prompt = event.prompt_logprobs or []
                if text or entries or prompt:
                    lp = logprobs(kind, entries, text_offset=c.offset, prompt=prompt) if asked_logprobs else None
                    c.offset += sum(len(e.token) for e in entries)
                    fields = _text_fields(tools, c, text)
                    if fields is not None or lp is not None:
                        yield payload(index, first=c.first, lp=lp, **(fields or {}))
                        c.first = False
            if verdict is Verdict.DROP:
                continue
            if isinstance(event, DoneEvent):
                end = "" if kind == "text" else None
                closing, called = _closing_fields(tools, c)
                for fields in closing:
                    yield payload(index, first=c.first, **fields)
                    c.first = False
                reason = event.finish_reason.value
                reason = reason if tools is None else tools.finish_reason(reason, called)
                yield payload(index, text=end, finish_reason=reason, first=c.first)
                dones[index] = event
            elif isinstance(event, ErrorEvent):
                yield json.dumps(error_from_event(event).body())
                break
        else:
            if include_usage:
                usage = usage_chunk(
                    kind,
                    request_id=request_id,
                    model=model,
                    created=created,
                    dones=[dones[i] for i in sorted(dones)],
                    n=n,
                )
                yield json.dumps(usage)
    yield "[DONE]"
