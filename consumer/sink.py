"""The pass: events into ``brigade:stream:<session_id>``, with exactly one final per request.

Two rules make delivery effectively-once for readers:
- ``begin``: a request whose request key says ``finished`` is skipped (a redelivery after the final
  was written but before the offset was committed); otherwise its ``attempt`` counter is bumped and
  every event of this run carries it, so readers drop a cut-off earlier attempt.
- ``final``: the final event's XADD and ``status=finished`` happen in one Lua script, which first
  checks the status and that this is still the newest attempt. A crash leaves either both or
  neither, and two workers racing on one request (a rebalance mid-generation) produce one final
  between them: the newest attempt's, whose tokens are the ones readers kept.

A chat turn's ``done`` also appends the new turns and the reply to ``brigade:session:<session_id>``
in the same script (see ``consumer/session.py``), so no crash point leaves the reply in the stream but
not in the session or the other way round, and a redelivered finished request appends nothing.

Token events of one decode step go to Redis as one ``TOKENS`` script call (one command, one reply and
one round trip per step, whatever the batch size): on a two-core machine the client's per-command work
(packing, reply parsing) competes with the model's threads, so the XADDs and the TTL refreshes of the
whole step run inside Redis instead. On Redis Cluster a script may touch only keys of one slot, so there
it is one call per session (the cluster client sends each node its share, still one round trip per node);
a final's keys (request, stream, session) share their session's slot by name (``schemas/naming.py``).
The scripts themselves are in ``consumer/scripts.py``.

Cancelling costs no round trip either: a caller marks the request key (``cancel``), ``begin`` answers a
marked request with a negated attempt (it is answered ``cancelled`` without running), and the same
``TOKENS`` call that appends a step's tokens reports which of their requests are marked, so the worker drops
them from the batch at the next step boundary.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

from brigade.redis_config import RedisClient, RedisPipeline
from consumer.retry import Backoff, call_with
from consumer.scripts import BEGIN, FINAL, TOKENS
from consumer.session import queue_session_loads
from schemas.events import DoneEvent, ErrorEvent, TokenEvent
from schemas.naming import Names

FINISHED = "finished"

T = TypeVar("T")

AnyFinal = DoneEvent | ErrorEvent


class Written(NamedTuple):
    """What a write found out besides writing."""

    lost: list[str]  # request ids whose final lost a race: another attempt finished the request
    cancelled: list[str]  # request ids of token events whose request a caller has cancelled


class Begun(NamedTuple):
    """What ``begin_turns`` found: the attempts, and the stored sessions it loaded with them."""

    attempts: list[int]  # as ``begin`` returns them
    sessions: dict[str, str | None]  # session id → raw stored document, None where there is none


class RequestRef(NamedTuple):
    """What names a request's status key (on Redis Cluster the key carries its session)."""

    session_id: str
    request_id: str


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One event bound for one session's stream."""

    session_id: str
    event: TokenEvent | DoneEvent | ErrorEvent
    session: SessionWrite | None = None  # on a chat turn's ``done``: the session append


@dataclass(frozen=True, slots=True)
class SessionWrite:
    """A session change that lands with a final event or not at all."""

    ttl_s: int
    patch: str  # JSON, from ``SessionAppend.patch_json``; applied by the ``FINAL`` script


class RedisSink:
    """Writes events; owns the scripts, not the connection (the worker closes that).

    With ``retry`` every operation is retried as a whole while Redis is unreachable (a restart, a
    failover), bounded by its deadline; ``consumer/retry.py`` says why repeating each one is safe.
    Without it (unit tests) the first Redis error propagates.
    """

    def __init__(self, redis: RedisClient, *, names: Names, ttl_s: int, retry: Backoff | None = None) -> None:
        self._redis = redis
        self._names = names
        self._ttl = ttl_s
        self._retry = retry

    async def _call(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        return await call_with(self._retry, what, op)

    async def begin(self, refs: Sequence[RequestRef]) -> list[int]:
        """Per request: 0 if it already finished (skip it), else this run's attempt number, negated when a caller
        has cancelled it (answer it ``cancelled`` without running it)."""
        return (await self.begin_turns(refs, (), ttl_s=0)).attempts

    async def begin_turns(self, refs: Sequence[RequestRef], session_ids: Sequence[str], *, ttl_s: int) -> Begun:
        """``begin``, and the stored documents of ``session_ids`` (their TTL refreshed to ``ttl_s``) in the same
        round trip: a chat turn's admission pays one, not two. A session loaded for a request that ``begin``
        then skips or answers only had its TTL refreshed."""
        if not refs and not session_ids:
            return Begun([], {})
        return await self._call("begin", lambda: self._begin_once(refs, session_ids, ttl_s))

    async def _begin_once(self, refs: Sequence[RequestRef], session_ids: Sequence[str], ttl_s: int) -> Begun:
        async with self._redis.pipeline(transaction=False) as pipe:
            for ref in refs:
                BEGIN.queue(pipe, [self._names.request_key(ref.request_id, ref.session_id)], [self._ttl])
            queue_session_loads(pipe, self._names, session_ids, ttl_s=ttl_s)
            replies = await pipe.execute()
        stored = dict(zip(session_ids, replies[len(refs) :], strict=True))
        return Begun([int(r) for r in replies[: len(refs)]], stored)

    async def write(self, events: Sequence[Outgoing]) -> Written:
        """Write one step's events in order, in one round trip; say whose final lost a race and which of the
        requests written to were cancelled.

        Token events with empty text are not written (the engine holds back partial characters).
        """
        kept = [o for o in events if not (isinstance(o.event, TokenEvent) and not o.event.text)]
        if not kept:
            return Written([], [])
        return await self._call("write", lambda: self._write_once(kept))

    async def _write_once(self, events: Sequence[Outgoing]) -> Written:
        tokens = [o for o in events if isinstance(o.event, TokenEvent)]
        finals = [(o, o.event) for o in events if not isinstance(o.event, TokenEvent)]
        async with self._redis.pipeline(transaction=False) as pipe:
            # Tokens before the finals: a request's last token and its ``done`` come in one step.
            groups = _by_session(tokens) if self._names.cluster else [tokens] if tokens else []
            for group in groups:
                self._queue_tokens(group, pipe)
            for out, final in finals:
                self._queue_final(out.session_id, final, out.session, pipe)
            replies = await pipe.execute()
        cancelled = {
            group[int(position) - 1].event.request_id
            for group, positions in zip(groups, replies[: len(groups)], strict=True)
            for position in positions
        }
        final_replies = replies[len(groups) :]
        lost = [final.request_id for (_, final), r in zip(finals, final_replies, strict=True) if int(r) == 0]
        return Written(lost, sorted(cancelled))

    def _queue_tokens(self, tokens: Sequence[Outgoing], pipe: RedisPipeline) -> None:
        keys: list[str] = []
        args: list[str | int] = [self._ttl]
        for o in tokens:
            keys += [self._names.stream_key(o.session_id), self._names.request_key(o.event.request_id, o.session_id)]
            fields = o.event.to_fields()
            args.append(len(fields))
            for k, v in fields.items():
                args += [k, v]
        TOKENS.queue(pipe, keys, args)

    def _queue_final(self, session_id: str, event: AnyFinal, session: SessionWrite | None, pipe: RedisPipeline) -> None:
        args: list[str | int] = [self._ttl, event.type, event.attempt]
        args += [session.ttl_s, session.patch] if session is not None else [0, ""]
        for k, v in event.to_fields().items():
            args += [k, v]
        keys = [self._names.request_key(event.request_id, session_id), self._names.stream_key(session_id)]
        if session is not None:
            keys.append(self._names.session_key(session_id))
        FINAL.queue(pipe, keys, args)


def _by_session(tokens: Sequence[Outgoing]) -> list[list[Outgoing]]:
    """Token events grouped by session, in first-seen order (one session's events keep their order)."""
    groups: dict[str, list[Outgoing]] = {}
    for o in tokens:
        groups.setdefault(o.session_id, []).append(o)
    return list(groups.values())
