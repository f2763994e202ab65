"""The pass: events into ``brigade:stream:<session_id>``, with exactly one final per request.

Two rules make delivery effectively-once for readers:
- ``begin``: a request whose request key says ``finished`` is skipped (a redelivery after the final
  was written but before the offset was committed); otherwise its ``attempt`` counter is bumped and
  every event of this run carries it, so readers drop a cut-off earlier attempt.
- ``final``: the final event's XADD and ``status=finished`` happen in one Lua script, which first
  checks the status and that this is still the newest attempt. A crash leaves either both or
  neither, and two workers racing on one request (a rebalance mid-generation) produce one final
  between them: the newest attempt's, whose tokens are the ones readers kept.

Token events of one decode step go in one non-transactional pipeline (one round trip per step,
whatever the batch size). The Lua scripts touch two keys (stream + request); on Redis Cluster both
would need one hash slot, which the key naming does not give today.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

from schemas.events import DoneEvent, ErrorEvent, TokenEvent
from schemas.naming import Names

FINISHED = "finished"

# KEYS[1] request key. ARGV[1] ttl. Returns 0 if already finished, else the new attempt number.
_BEGIN = """
if redis.call('HGET', KEYS[1], 'status') == 'finished' then return 0 end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
redis.call('HSET', KEYS[1], 'status', 'running')
redis.call('EXPIRE', KEYS[1], ARGV[1])
return attempt
"""

# KEYS[1] request key, KEYS[2] stream key. ARGV[1] ttl, ARGV[2] final type, ARGV[3] attempt,
# ARGV[4..] field/value pairs. Returns 1 if this call wrote the final, 0 if it lost: the request is
# already finished, or a newer attempt started (readers follow the newest attempt, so its final must win).
_FINAL = """
if redis.call('HGET', KEYS[1], 'status') == 'finished' then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0') ~= tonumber(ARGV[3]) then return 0 end
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 4))
redis.call('HSET', KEYS[1], 'status', 'finished', 'final', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return 1
"""

AnyFinal = DoneEvent | ErrorEvent


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One event bound for one session's stream."""

    session_id: str
    event: TokenEvent | DoneEvent | ErrorEvent


class RedisSink:
    """Writes events; owns the scripts, not the connection (the worker closes that)."""

    def __init__(self, redis: aioredis.Redis, *, names: Names, ttl_s: int) -> None:
        self._redis = redis
        self._names = names
        self._ttl = ttl_s
        self._begin = redis.register_script(_BEGIN)
        self._final = redis.register_script(_FINAL)

    async def begin(self, request_ids: Sequence[str]) -> list[int]:
        """Per request: 0 if it already finished (skip it), else this run's attempt number."""
        if not request_ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for rid in request_ids:
                await self._begin(keys=[self._names.request_key(rid)], args=[self._ttl], client=pipe)
            replies = await pipe.execute()
        return [int(r) for r in replies]

    async def write(self, events: Sequence[Outgoing]) -> list[str]:
        """Write one step's events in order, in one round trip; return request_ids whose final lost a race.

        Token events with empty text are not written (the engine holds back partial characters).
        """
        tokens = [o for o in events if not (isinstance(o.event, TokenEvent) and not o.event.text)]
        if not tokens:
            return []
        finals: list[str] = []
        streams: set[str] = set()
        async with self._redis.pipeline(transaction=False) as pipe:
            for out in tokens:
                key = self._names.stream_key(out.session_id)
                if isinstance(out.event, TokenEvent):
                    pipe.xadd(key, out.event.to_fields())  # type: ignore[arg-type]
                    streams.add(key)
                else:
                    await self._final_call(out.session_id, out.event, pipe)
                    finals.append(out.event.request_id)
            for key in streams:
                pipe.expire(key, self._ttl)
            replies = await pipe.execute()
        final_replies = [r for o, r in zip(tokens, replies, strict=False) if not isinstance(o.event, TokenEvent)]
        return [rid for rid, r in zip(finals, final_replies, strict=True) if int(r) == 0]

    async def _final_call(self, session_id: str, event: AnyFinal, pipe: aioredis.client.Pipeline) -> None:
        args: list[str | int] = [self._ttl, event.type, event.attempt]
        for k, v in event.to_fields().items():
            args += [k, v]
        keys = [self._names.request_key(event.request_id), self._names.stream_key(session_id)]
        await self._final(keys=keys, args=args, client=pipe)
