"""Conversation state: ``brigade:session:<session_id>``, one JSON string with a sliding TTL.

Which requests are conversations:
- ``messages``: a chat turn. The worker loads the stored conversation, adds this request's new turns
  (see ``merge_turn``), trims oldest-first to the model's context keeping the system message
  (``fit_history``), renders it with the model's chat template, and on ``done`` appends the new turns
  and the assistant's reply in the same Lua script that writes the final event (``consumer/sink.py``).
  An ``error`` final leaves the session as it was, so the user can simply send the turn again.
- ``prompt``: a raw completion, stateless, as OpenAI's ``/v1/completions``: it neither reads nor
  writes the session, whatever its ``session_id``.

A client may send only the new user turn, or (OpenAI style) the whole conversation every call: when
the request's messages repeat the stored tail, only what follows it is new (``new_turns_from``).
A leading system message replaces the stored one. The OpenAI routes give every call a fresh
session_id, so they stay stateless.

The document (``SessionDoc``): ``messages`` ({role, content}, system first when there is one; what the
model sees next turn, so trimmed messages are gone for good and the key stays bounded by the context),
``model``, ``turns`` (completed turns), ``prompt_tokens`` / ``completion_tokens`` (summed over turns),
``context_tokens`` (last prompt + reply: the context the conversation fills now), ``trimmed`` (messages
dropped so far), ``last_request_id``, ``updated_at``. One string key rather than a hash: one GET/SET
and one TTL, the JSON is the contract as-is, and the Lua script decodes/encodes it with ``cjson``.

The TTL (``BRIGADE_SESSION_TTL_S``) is refreshed when a turn loads the session (``GETEX``) and when
its reply is appended.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import TypeAdapter

from brigade.redis_config import RedisPipeline
from schemas.naming import Names
from schemas.requests import ChatMessage

_messages: TypeAdapter[list[ChatMessage]] = TypeAdapter(list[ChatMessage])


class CorruptSession(ValueError):
    """The stored value is not a session document; DELETE /v1/sessions/{id} starts over."""


@dataclass(frozen=True, slots=True)
class SessionDoc:
    """The parts of a stored session the worker needs."""

    messages: tuple[ChatMessage, ...] = ()
    turns: int = 0

    @classmethod
    def from_json(cls, raw: str | None) -> SessionDoc:
        if raw is None:
            return cls()
        try:
            doc = json.loads(raw)
            messages = _messages.validate_python(doc.get("messages") or [])
            return cls(messages=tuple(messages), turns=int(doc.get("turns", 0)))
        except (ValueError, TypeError, AttributeError) as exc:
            message = f"the stored session is not a session document ({exc}); DELETE it to start over"
            raise CorruptSession(message) from exc


def split_system(messages: Sequence[ChatMessage]) -> tuple[ChatMessage | None, list[ChatMessage]]:
    """A leading system message, and the rest."""
    if messages and messages[0].role == "system":
        return messages[0], list(messages[1:])
    return None, list(messages)


def new_turns_from(history: Sequence[ChatMessage], incoming: Sequence[ChatMessage]) -> int:
    """Index of the first message of ``incoming`` that is not already in ``history``.

    ``incoming`` repeats the stored conversation when it holds a run ending with history's last
    message that is either the whole history (the full conversation resent, maybe with older turns
    we trimmed) or starts at ``incoming[0]`` (the client resent only a tail). The latest such run
    counts; without one, everything in ``incoming`` is new. (Non-system messages on both sides.)
    """
    if not history:
        return 0
    last = history[-1]
    for end in range(len(incoming), 0, -1):
        if incoming[end - 1] != last:
            continue
        k = 1
        while k < len(history) and k < end and incoming[end - 1 - k] == history[-1 - k]:
            k += 1
        if k == len(history) or end == k:
            return end
    return 0


@dataclass(frozen=True, slots=True)
class Merge:
    """The conversation of one turn: the stored part and what this request adds."""

    system: ChatMessage | None
    history: tuple[ChatMessage, ...]  # stored, non-system
    new: tuple[ChatMessage, ...]  # this request's new turns, non-system
    system_changed: bool  # the request brought a system message other than the stored one

    @property
    def body(self) -> list[ChatMessage]:
        return [*self.history, *self.new]


def merge_turn(stored: Sequence[ChatMessage], incoming: Sequence[ChatMessage]) -> Merge:
    """Stored conversation + a request's messages → the conversation to render for this turn."""
    stored_system, history = split_system(stored)
    incoming_system, body = split_system(incoming)
    new = body[new_turns_from(history, body) :]
    system = incoming_system or stored_system
    changed = incoming_system is not None and incoming_system != stored_system
    return Merge(system=system, history=tuple(history), new=tuple(new), system_changed=changed)


@dataclass(frozen=True, slots=True)
class Fit:
    """How many of the oldest body messages to drop, and the token count of what is left."""

    dropped: int
    tokens: int
    fits: bool


def drop_points(body: Sequence[ChatMessage]) -> list[int]:
    """How many oldest messages may be dropped: 0, or so that the rest starts with a user turn.

    The last user message and what follows it are never dropped (it is the turn being answered), and
    a conversation never resumes on an assistant message (many chat templates reject that).
    """
    users = [i for i, m in enumerate(body) if m.role == "user"]
    return [0, *(i for i in users if i > 0)]


def fit_history(
    system: ChatMessage | None,
    body: Sequence[ChatMessage],
    *,
    budget: int,
    count: Callable[[list[ChatMessage]], int],
    headroom: float = 0.0,
) -> Fit:
    """Drop the oldest messages (never the system message) so the rendered prompt fits ``budget``.

    Once it must trim, it trims the fewest messages that leave ``headroom`` (a share of ``budget``) free, or,
    where no drop point does, the fewest that fit: a conversation kept at the edge of its budget would lose
    its oldest turn on every turn, and with it its start — every turn's prompt would differ from the last from
    its first token, and no turn could reuse the previous one's KV cache (``consumer/engine/kv_cache.py``).
    With headroom, the turns after a trim keep the same start until the headroom is used up.

    ``count`` renders and tokenizes a conversation. The token count only falls as messages are dropped,
    so this is a binary search over ``drop_points``: one ``count`` when nothing needs trimming, about
    log2(turns) when it does. If even the most trimmed conversation is over budget, ``fits`` is False and
    that conversation's count comes back (the caller answers ``context_length_exceeded``).
    """
    head = [system] if system is not None else []
    points = drop_points(body)
    counts: dict[int, int] = {}

    def tokens(i: int) -> int:
        if i not in counts:
            counts[i] = count([*head, *body[points[i] :]])
        return counts[i]

    if tokens(0) <= budget:
        return Fit(dropped=0, tokens=tokens(0), fits=True)
    roomy = int(budget * (1 - headroom))
    first_fit = bisect.bisect_left(range(1, len(points)), True, key=lambda i: tokens(i) <= roomy) + 1
    if first_fit == len(points) and roomy < budget:  # no drop point leaves the headroom: the fewest that fit
        first_fit = bisect.bisect_left(range(1, len(points)), True, key=lambda i: tokens(i) <= budget) + 1
    if first_fit == len(points):
        last = len(points) - 1
        return Fit(dropped=points[last], tokens=tokens(last), fits=False)
    return Fit(dropped=points[first_fit], tokens=tokens(first_fit), fits=True)


@dataclass(frozen=True, slots=True)
class SessionAppend:
    """What a turn adds to its session; the sink applies it atomically with the ``done`` event."""

    session_id: str
    model: str
    ttl_s: int
    drop: int  # oldest stored non-system messages to remove (trimmed this turn)
    append: tuple[ChatMessage, ...]  # this turn's new messages (the reply goes after them)
    system: str | None  # replaces (or adds) the stored system message
    prompt_tokens: int
    trimmed: int  # messages dropped this turn, new turns included
    # the turn continued a stored conversation: if that is gone when the reply is done (deleted or expired while
    # it ran), the reply does not bring back a conversation that would lack its start
    continues: bool = False

    def patch_json(self, *, reply: str, completion_tokens: int, request_id: str, now: datetime) -> str:
        """The argument the Lua script applies (see ``consumer/sink.py``)."""
        patch: dict[str, Any] = {
            "session_id": self.session_id,
            "model": self.model,
            "drop": self.drop,
            # a turn's unused tool fields stay out: a worker of an earlier release reads the document too
            "append": [
                m.model_dump(exclude_none=True) for m in (*self.append, ChatMessage(role="assistant", content=reply))
            ],
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "trimmed": self.trimmed,
            "request_id": request_id,
            "updated_at": now.isoformat(),
        }
        if self.system is not None:
            patch["system"] = self.system
        if self.continues:
            patch["continues"] = True
        return json.dumps(patch, ensure_ascii=False)


def plan_append(merge: Merge, fit: Fit, *, session_id: str, model: str, ttl_s: int) -> SessionAppend:
    """Turn a merge and its trimming into the session change to make once the reply is done."""
    from_history = min(fit.dropped, len(merge.history))
    from_new = fit.dropped - from_history
    return SessionAppend(
        session_id=session_id,
        model=model,
        ttl_s=ttl_s,
        drop=from_history,
        append=merge.new[from_new:],
        system=merge.system.content if merge.system_changed and merge.system is not None else None,
        prompt_tokens=fit.tokens,
        trimmed=fit.dropped,
        continues=bool(merge.history),
    )


@dataclass(slots=True)
class TurnPlan:
    """The prompt of one chat turn and the session change its ``done`` will make."""

    messages: list[ChatMessage]
    append: SessionAppend
    reply: list[str] = field(default_factory=list)


def plan_turn(
    stored: SessionDoc,
    incoming: Sequence[ChatMessage],
    *,
    budget: int,
    count: Callable[[list[ChatMessage]], int],
    session_id: str,
    model: str,
    ttl_s: int,
    headroom: float = 0.0,
) -> tuple[TurnPlan, Fit]:
    """Merge, trim and plan one chat turn (pure apart from ``count``)."""
    merge = merge_turn(stored.messages, incoming)
    fit = fit_history(merge.system, merge.body, budget=budget, count=count, headroom=headroom)
    head = [merge.system] if merge.system is not None else []
    messages = [*head, *merge.body[fit.dropped :]]
    append = plan_append(merge, fit, session_id=session_id, model=model, ttl_s=ttl_s)
    return TurnPlan(messages=messages, append=append), fit


def queue_session_loads(pipe: RedisPipeline, names: Names, session_ids: Sequence[str], *, ttl_s: int) -> None:
    """Queue a ``GETEX`` per session (its raw stored document, refreshing its TTL) on a pipeline that also
    carries the turn's other admission commands, so loading costs no round trip of its own."""
    for sid in session_ids:
        pipe.getex(names.session_key(sid), ex=ttl_s)
