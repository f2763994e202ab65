"""Reading response streams: follow a session's Redis stream, and drop partial attempts.

A request cut off mid-generation is generated again with ``attempt`` + 1. ``AttemptFilter`` is the
pure part: given events in stream order it says which belong to the answer the user should see.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Generic, TypeVar

from brigade.redis_config import RedisClient
from brigade.streams import xread
from schemas.events import (
    DoneEvent,
    ErrorCode,
    ErrorEvent,
    PromptLogprob,
    TokenEvent,
    TokenLogprob,
    is_final,
    parse_event,
)

AnyEvent = TokenEvent | DoneEvent | ErrorEvent
Piece = TypeVar("Piece", str, list[TokenLogprob])

BLOCK_MS = 1000  # one XREAD's wait: how soon a reader notices a stop, and a floor for the socket timeout

# What an error event means to a caller in HTTP terms: the OpenAI endpoints answer with these statuses and
# the Python client raises with them, so both sides of an error read the same.
ERROR_STATUS: dict[ErrorCode, int] = {
    ErrorCode.EXPIRED: 408,
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.CONTEXT_LENGTH_EXCEEDED: 400,
    ErrorCode.INTERNAL: 500,
}


class Verdict(Enum):
    KEEP = "keep"  # part of the current attempt
    RESTART = "restart"  # first event of a newer attempt: forget what was collected, then keep this one
    DROP = "drop"  # a stale attempt's event, or one after the final


@dataclass
class AttemptFilter:
    """Per request: the newest attempt wins; nothing after the final event counts; no ``seq`` counts twice.

    The last rule is for a worker's Redis write retried after a lost connection: when Redis ran the
    write but the reply never came back, the retry adds the same token events again (same attempt, same
    ``seq``). ``seq`` only grows within an attempt, so an event at or below the last kept one is a repeat.
    """

    _attempt: dict[str, int] = field(default_factory=dict)
    _seq: dict[str, int] = field(default_factory=dict)  # last kept seq of the current attempt
    _finished: set[str] = field(default_factory=set)

    def judge(self, event: AnyEvent) -> Verdict:
        rid = event.request_id
        if rid in self._finished:
            return Verdict.DROP
        current = self._attempt.get(rid)
        if current is not None and event.attempt < current:
            return Verdict.DROP
        if current == event.attempt and event.seq <= self._seq[rid]:
            return Verdict.DROP
        self._attempt[rid] = event.attempt
        self._seq[rid] = event.seq
        if is_final(event):
            self._finished.add(rid)
        return Verdict.RESTART if current is not None and event.attempt > current else Verdict.KEEP


async def follow(
    redis: RedisClient,
    key: str,
    *,
    last_id: str = "0-0",
    block_ms: int = BLOCK_MS,
    until: asyncio.Event | None = None,
) -> AsyncIterator[tuple[str, AnyEvent]]:
    """Every event on ``key`` after ``last_id``, until ``until`` is set (forever without it).

    ``block_ms`` bounds each XREAD, so ``until`` is noticed within that time; it must stay under the
    client's socket timeout (redis-py's default is 5 s, and a longer blocked XREAD fails as a timeout).
    """
    while until is None or not until.is_set():
        for _key, entries in await xread(redis, {key: last_id}, block_ms=block_ms):
            for entry_id, fields in entries:
                last_id = entry_id
                yield entry_id, parse_event(fields)


@dataclass
class Answer:
    """The clean answer to one request, after partial attempts are dropped."""

    text: list[str] = field(default_factory=list)
    final: DoneEvent | ErrorEvent | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)  # one per generated token, for requests that asked
    prompt_logprobs: list[PromptLogprob] | None = None  # one per prompt token, for requests that asked

    def add(self, event: AnyEvent, verdict: Verdict) -> None:
        if verdict is Verdict.DROP:
            return
        if verdict is Verdict.RESTART:
            self.text.clear()
            self.logprobs.clear()
            self.prompt_logprobs = None
        if isinstance(event, TokenEvent | DoneEvent):
            if event.text:  # the contract lets a final event carry the last piece of text
                self.text.append(event.text)
            self.logprobs += event.logprobs or ()
            if event.prompt_logprobs is not None:
                self.prompt_logprobs = event.prompt_logprobs
        if not isinstance(event, TokenEvent):
            self.final = event


async def request_events(
    redis: RedisClient, key: str, request_id: str, *, last_id: str = "0-0"
) -> AsyncIterator[tuple[AnyEvent, Verdict]]:
    """One request's events with their verdicts, ending after its final event."""
    attempts = AttemptFilter()
    async for _entry_id, event in follow(redis, key, last_id=last_id):
        if event.request_id != request_id:
            continue
        verdict = attempts.judge(event)
        yield event, verdict
        if verdict is not Verdict.DROP and is_final(event):
            return


@dataclass
class LiveText(Generic[Piece]):
    """Streams text (or logprob entries, one per token) to a client that cannot take them back.

    After a restart the new attempt's pieces are held back until they pass what the client already has;
    when sampling is reproducible (greedy, or a seed) the regenerated text is identical and the seam is
    invisible.
    """

    sent: int = 0  # characters (entries) the client has
    position: int = 0  # characters (entries) of the current attempt seen so far

    def feed(self, piece: Piece, verdict: Verdict) -> Piece:
        if verdict is Verdict.DROP:
            return piece[:0]
        if verdict is Verdict.RESTART:
            self.position = 0
        start = self.position
        self.position += len(piece)
        if self.position <= self.sent:
            return piece[:0]
        fresh = piece[max(0, self.sent - start) :]
        self.sent = self.position
        return fresh
