"""The Lua the sink runs, and how it is sent: ``EVAL`` with the script's text, in the caller's pipeline.

Not ``EVALSHA``: redis-py's pipeline runs a ``SCRIPT EXISTS`` round trip before every ``EXECUTE`` that
contains a registered script, a second round trip in each decode step's write and each ``begin`` (8 token
events or 8 begins per call against a local redis-server: p50 522-790 µs with it, 399-653 µs with ``EVAL``;
BENCHMARKS.md, figure 3).
``EVAL`` sends the text each time (at most 2.6 KB, for ``FINAL``), which Redis hashes to its cache of
compiled scripts, and it cannot fail with NOSCRIPT: not after a Redis restart emptied that cache, and not
on a cluster node that never saw the script.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from brigade.redis_config import RedisPipeline


@dataclass(frozen=True, slots=True)
class LuaScript:
    text: str

    def queue(self, pipe: RedisPipeline, keys: Sequence[str], args: Sequence[str | int]) -> None:
        """Add one run of the script to ``pipe`` (its reply comes with the pipeline's)."""
        pipe.eval(self.text, len(keys), *keys, *args)


# KEYS[1] request key. ARGV[1] ttl. Returns 0 if already finished, else the new attempt number, negated when
# a caller cancelled the request before it ran (``cancel``, schemas/naming.py CANCEL_FIELD).
BEGIN = LuaScript("""
if redis.call('HGET', KEYS[1], 'status') == 'finished' then return 0 end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
redis.call('HSET', KEYS[1], 'status', 'running')
redis.call('EXPIRE', KEYS[1], ARGV[1])
if redis.call('HEXISTS', KEYS[1], 'cancel') == 1 then return -attempt end
return attempt
""")

# KEYS: per event its stream key, then its request's key. ARGV[1] ttl, then per event: its field count n, then
# n field/value pairs. Appends each event to its stream and refreshes the stream's TTL; returns the positions
# (1-based) of the events whose request a caller cancelled: the step's write is how a running request learns
# it, with no round trip of its own.
TOKENS = LuaScript("""
local i = 2
local cancelled = {}
for k = 1, #KEYS, 2 do
  local n = tonumber(ARGV[i])
  redis.call('XADD', KEYS[k], '*', unpack(ARGV, i + 1, i + 2 * n))
  redis.call('EXPIRE', KEYS[k], ARGV[1])
  if redis.call('HEXISTS', KEYS[k + 1], 'cancel') == 1 then cancelled[#cancelled + 1] = (k + 1) / 2 end
  i = i + 1 + 2 * n
end
return cancelled
""")

# KEYS[1] request key, KEYS[2] stream key, KEYS[3] session key (chat turns only). ARGV[1] ttl,
# ARGV[2] final type, ARGV[3] attempt, ARGV[4] session ttl, ARGV[5] session patch JSON or '', ARGV[6..]
# field/value pairs. Returns 1 if this attempt's final is in place, 0 if it lost: another attempt finished
# the request, or a newer attempt started (readers follow the newest attempt, so its final must win).
# Finished by this very attempt means the call is a retry whose first run Redis executed but whose reply
# was lost: it writes nothing again and answers 1. A turn that continued a stored conversation
# (patch.continues) whose session is gone by now (deleted or expired while it ran) appends nothing: the final
# still lands. Everything that can fail (decoding) runs before the first write: Redis does not roll a script back.
FINAL = LuaScript("""
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
  if doc == nil and not (raw == false and patch.continues) then
    doc = {session_id = patch.session_id, messages = {}, turns = 0, prompt_tokens = 0, completion_tokens = 0,
           trimmed = 0}
  end
  if doc ~= nil and doc.last_request_id ~= patch.request_id then
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
""")
