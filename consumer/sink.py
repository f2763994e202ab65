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

Token events of one decode step go to Redis as one ``_TOKENS`` script call (one command, one reply and
one round trip per step, whatever the batch size): on a two-core machine the client's per-command work
(packing, reply parsing) competes with the model's threads, so the XADDs and the TTL refreshes of the
whole step run inside Redis instead. The Lua scripts touch two or three keys (request, stream, session); on Redis
Cluster they would need one hash slot, which the key naming does not give today.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import redis.asyncio as aioredis

from consumer.retry import Backoff
from consumer.session import load_sessions
from schemas.events import DoneEvent, ErrorEvent, TokenEvent
from schemas.naming import Names

FINISHED = "finished"

T = TypeVar("T")

# KEYS[1] request key. ARGV[1] ttl. Returns 0 if already finished, else the new attempt number.
_BEGIN = """
if redis.call('HGET', KEYS[1], 'status') == 'finished' then return 0 end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
redis.call('HSET', KEYS[1], 'status', 'running')
redis.call('EXPIRE', KEYS[1], ARGV[1])
return attempt
"""

# KEYS: one stream key per event. ARGV[1] ttl, then per event: its field count n, then n field/value pairs.
# Appends each event to its stream and refreshes the stream's TTL; returns the number of events written.
_TOKENS = """
local i = 2
for _, key in ipairs(KEYS) do
  local n = tonumber(ARGV[i])
  redis.call('XADD', key, '*', unpack(ARGV, i + 1, i + 2 * n))
  redis.call('EXPIRE', key, ARGV[1])
  i = i + 1 + 2 * n
end
return #KEYS
"""

# KEYS[1] request key, KEYS[2] stream key, KEYS[3] session key (chat turns only). ARGV[1] ttl,
# ARGV[2] final type, ARGV[3] attempt, ARGV[4] session ttl, ARGV[5] session patch JSON or '', ARGV[6..]
# field/value pairs. Returns 1 if this attempt's final is in place, 0 if it lost: another attempt finished
# the request, or a newer attempt started (readers follow the newest attempt, so its final must win).
# Finished by this very attempt means the call is a retry whose first run Redis executed but whose reply
# was lost: it writes nothing again and answers 1. Everything that can fail (decoding) runs before the
# first write: Redis does not roll a script back.
_FINAL = """
local current = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0')
if redis.call('HGET', KEYS[1], 'status') == 'finished' then
  if current == tonumber(ARGV[3]) then return 1 end
  return 0
end
if current ~= tonumber(ARGV[3]) then return 0 end
local session = nil
if KEYS[3] ~= nil and ARGV[5] ~= '' then
  local patch = cjson.decode(ARGV[5])
  local doc = nil
  local raw = redis.call('GET', KEYS[3])
  if raw then
    local ok, decoded = pcall(cjson.decode, raw)
    if ok and type(decoded) == 'table' and type(decoded.messages) == 'table' then doc = decoded end
  end
  if doc == nil then
    doc = {session_id = patch.session_id, messages = {}, turns = 0, prompt_tokens = 0, completion_tokens = 0,
           trimmed = 0}
  end
  if doc.last_request_id ~= patch.request_id then
    local old, msgs, first, system = doc.messages, {}, 1, nil
    if type(old[1]) == 'table' and old[1].role == 'system' then system = old[1]; first = 2 end
    if patch.system ~= nil then system = {role = 'system', content = patch.system} end
    if system ~= nil then msgs[#msgs + 1] = system end
    for i = first + patch.drop, #old do msgs[#msgs + 1] = old[i] end
    for _, m in ipairs(patch.append) do msgs[#msgs + 1] = m end
    doc.messages = msgs
    doc.model = patch.model
    doc.turns = (tonumber(doc.turns) or 0) + 1
    doc.prompt_tokens = (tonumber(doc.prompt_tokens) or 0) + patch.prompt_tokens
    doc.completion_tokens = (tonumber(doc.completion_tokens) or 0) + patch.completion_tokens
    doc.context_tokens = patch.prompt_tokens + patch.completion_tokens
    doc.trimmed = (tonumber(doc.trimmed) or 0) + patch.trimmed
    doc.last_request_id = patch.request_id
    doc.updated_at = patch.updated_at
    session = cjson.encode(doc)
  end
end
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 6))
redis.call('HSET', KEYS[1], 'status', 'finished', 'final', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
if session ~= nil then
  redis.call('SET', KEYS[3], session, 'EX', ARGV[4])
elseif KEYS[3] ~= nil then
  redis.call('EXPIRE', KEYS[3], ARGV[4])
end
return 1
"""

AnyFinal = DoneEvent | ErrorEvent


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
    patch: str  # JSON, from ``SessionAppend.patch_json``; applied by the ``_FINAL`` script


class RedisSink:
    """Writes events; owns the scripts, not the connection (the worker closes that).

    With ``retry`` every operation is retried as a whole while Redis is unreachable (a restart, a
    failover), bounded by its deadline; ``consumer/retry.py`` says why repeating each one is safe.
    Without it (unit tests) the first Redis error propagates.
    """

    def __init__(self, redis: aioredis.Redis, *, names: Names, ttl_s: int, retry: Backoff | None = None) -> None:
        self._redis = redis
        self._names = names
        self._ttl = ttl_s
        self._retry = retry
        self._begin = redis.register_script(_BEGIN)
        self._final = redis.register_script(_FINAL)
        self._tokens = redis.register_script(_TOKENS)

    async def _call(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        return await (op() if self._retry is None else self._retry.call(what, op))

    async def load_sessions(self, session_ids: Sequence[str], *, ttl_s: int) -> Mapping[str, str | None]:
        """Stored session documents (raw JSON, None where there is none), refreshing their TTL."""
        return await self._call(
            "load_sessions", lambda: load_sessions(self._redis, self._names, session_ids, ttl_s=ttl_s)
        )

    async def begin(self, request_ids: Sequence[str]) -> list[int]:
        """Per request: 0 if it already finished (skip it), else this run's attempt number."""
        if not request_ids:
            return []
        return await self._call("begin", lambda: self._begin_once(request_ids))

    async def _begin_once(self, request_ids: Sequence[str]) -> list[int]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for rid in request_ids:
                await self._begin(keys=[self._names.request_key(rid)], args=[self._ttl], client=pipe)
            replies = await pipe.execute()
        return [int(r) for r in replies]

    async def write(self, events: Sequence[Outgoing]) -> list[str]:
        """Write one step's events in order, in one round trip; return request_ids whose final lost a race.

        Token events with empty text are not written (the engine holds back partial characters).
        """
        kept = [o for o in events if not (isinstance(o.event, TokenEvent) and not o.event.text)]
        if not kept:
            return []
        return await self._call("write", lambda: self._write_once(kept))

    async def _write_once(self, events: Sequence[Outgoing]) -> list[str]:
        tokens = [o for o in events if isinstance(o.event, TokenEvent)]
        finals = [(o, o.event) for o in events if not isinstance(o.event, TokenEvent)]
        async with self._redis.pipeline(transaction=False) as pipe:
            if tokens:  # before the finals: a request's last token and its ``done`` come in one step
                keys = [self._names.stream_key(o.session_id) for o in tokens]
                args: list[str | int] = [self._ttl]
                for o in tokens:
                    fields = o.event.to_fields()
                    args.append(len(fields))
                    for k, v in fields.items():
                        args += [k, v]
                await self._tokens(keys=keys, args=args, client=pipe)
            for out, final in finals:
                await self._final_call(out.session_id, final, out.session, pipe)
            replies = await pipe.execute()
        final_replies = replies[1:] if tokens else replies
        return [final.request_id for (_, final), r in zip(finals, final_replies, strict=True) if int(r) == 0]

    async def _final_call(
        self, session_id: str, event: AnyFinal, session: SessionWrite | None, pipe: aioredis.client.Pipeline
    ) -> None:
        args: list[str | int] = [self._ttl, event.type, event.attempt]
        args += [session.ttl_s, session.patch] if session is not None else [0, ""]
        for k, v in event.to_fields().items():
            args += [k, v]
        keys = [self._names.request_key(event.request_id), self._names.stream_key(session_id)]
        if session is not None:
            keys.append(self._names.session_key(session_id))
        await self._final(keys=keys, args=args, client=pipe)
