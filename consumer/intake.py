"""Admission: which fetched requests may run, and what each costs nothing to answer.

Requests that must not cost compute are answered first with a single final event:
- already finished (a redelivery): nothing is written at all;
- cancelled by a caller before it ran: ``done`` with finish_reason ``cancelled``;
- past their deadline: ``expired``;
- asking for another model, for more new tokens than this deployment allows, or naming token ids outside the
  model's vocabulary: ``invalid_request``;
- prompt plus ``max_new_tokens`` beyond the model's context (or, with ``max_new_tokens`` null, a prompt that
  leaves no room for a token): ``context_length_exceeded``.

A chat request (``messages``) is a turn of its session's conversation: its stored history is loaded
with the admission, merged with the request's messages and trimmed oldest-first to fit
(``consumer/session.py``); its ``done`` will carry the session append. A ``prompt`` (or ``prompt_token_ids``)
request is a stateless completion and never touches the session.

Which requests keep their KV cache for the next (``consumer/engine/kv_cache.py``): a session's chat turns, by
session, and any request that names a ``prompt_cache_key``, by that key (``_cache_key``). Prefixes shared between
requests are the engine's own business.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sys
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import datetime

from consumer.batcher import PendingItem
from consumer.engine.interface import GenerationInput, InferenceEngine
from consumer.session import SessionDoc, TurnPlan, plan_turn
from consumer.sink import RedisSink, RequestRef
from schemas.events import DoneEvent, ErrorCode, ErrorEvent, FinishReason, PromptLogprob, TokenLogprob
from schemas.requests import ChatMessage, InferenceRequest, SamplingParams
from schemas.settings import Settings

log = logging.getLogger(__name__)

CACHE_KEY_PREFIX = "prompt_cache_key/"


@dataclass(slots=True)
class Running:
    """One request's progress in this run."""

    item: PendingItem
    attempt: int
    prompt_tokens: int
    seq: int = 0  # next event's seq within this attempt
    completion_tokens: int = 0
    last_token_at: float | None = None  # monotonic time of the previous delta (TPOT)
    scheduled_at_ms: int | None = None  # wall clock (epoch ms) when its admission began
    first_token_at_ms: int | None = None  # wall clock (epoch ms) when the step with its first token ended
    finished: bool = False
    turn: TurnPlan | None = None  # a chat turn: its session append, and the reply collected so far
    cached_tokens: int = 0  # prompt tokens the engine took from a cache (its prefill delta says)
    logprobs: list[TokenLogprob] = field(default_factory=list)  # entries not written yet (their text is held)
    prompt_logprobs: list[PromptLogprob] | None = None  # the prompt's entries until an event carries them

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq - 1

    def take_logprobs(self) -> list[TokenLogprob] | None:
        """The entries the next event carries: every one since the last event, None when there are none."""
        if not self.logprobs:
            return None
        taken, self.logprobs = self.logprobs, []
        return taken

    def take_prompt_logprobs(self) -> list[PromptLogprob] | None:
        """The prompt's entries, for the first event written after its prefill; None on the others."""
        taken, self.prompt_logprobs = self.prompt_logprobs, None
        return taken


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why one request gets an error event instead of a run."""

    code: ErrorCode
    message: str


@dataclass(slots=True)
class Admission:
    """The outcome of the checks: requests to run, and finals to write without compute."""

    runnable: list[tuple[Running, GenerationInput]] = field(default_factory=list)
    rejected: list[tuple[PendingItem, ErrorEvent]] = field(default_factory=list)
    skipped: list[PendingItem] = field(default_factory=list)
    cancelled: list[tuple[PendingItem, DoneEvent]] = field(default_factory=list)


class Intake:
    """The checks and the tokenizing between a fetched request and the engine.

    ``executor`` is the intake's own thread, not the engine's: rendering a chat turn (trimming included) and
    tokenizing it took 3.5 ms for an 8-turn conversation on ``gpt2-small-shape``, which on the engine's thread
    would wait for the running step to end and then hold up the next step of every running sequence. On its own
    thread it runs while the step computes (the engine releases the GIL in ONNX Runtime), so a joiner is ready at
    the step boundary.
    """

    def __init__(self, *, settings: Settings, engine: InferenceEngine, sink: RedisSink, executor: Executor) -> None:
        self._settings = settings
        self._engine = engine
        self._sink = sink
        self._executor = executor

    async def admit(self, items: Sequence[PendingItem], *, now: datetime, scheduled_at_ms: int) -> Admission:
        """Begin ``items`` (``RedisSink.begin_turns``, which loads their stored sessions in the same round trip)
        and sort them into run, reject and skip.

        ``scheduled_at_ms`` (epoch ms, when their admission began) goes on each runnable request's final event.
        """
        begun = await self._sink.begin_turns(
            [RequestRef(item.session_id, item.request.request_id) for item in items],
            [item.session_id for item in items if item.request.messages is not None],
            ttl_s=self._settings.session_ttl_s,
        )
        out = Admission()
        to_encode: list[tuple[PendingItem, int]] = []
        for item, attempt in zip(items, begun.attempts, strict=True):
            if attempt == 0:
                out.skipped.append(item)
                continue
            if attempt < 0:
                out.cancelled.append((item, cancelled_event(item, -attempt, scheduled_at_ms, self._engine.model_name)))
                continue
            problem = self._static_check(item.request, now)
            if problem is not None:
                out.rejected.append((item, error_event(item, attempt, *problem)))
            else:
                to_encode.append((item, attempt))
        if not to_encode:
            return out
        encoded = await asyncio.get_running_loop().run_in_executor(
            self._executor,
            self._encode_all,
            [(item.request, begun.sessions.get(item.session_id)) for item, _ in to_encode],
        )
        for (item, attempt), result in zip(to_encode, encoded, strict=True):
            request = item.request
            if isinstance(result, Refusal):
                out.rejected.append((item, error_event(item, attempt, result.code, result.message)))
                continue
            ids, turn = result
            problem = self._length_check(request, len(ids))
            if problem is not None:
                out.rejected.append((item, error_event(item, attempt, *problem)))
                continue
            run = Running(
                item=item, attempt=attempt, prompt_tokens=len(ids), turn=turn, scheduled_at_ms=scheduled_at_ms
            )
            gen = GenerationInput(
                request_id=request.request_id,
                prompt_ids=ids,
                # null: the limit, which the engine's sequence clamps to what the context leaves
                max_new_tokens=request.new_tokens_cap(self._settings.max_new_tokens_limit),
                sampling=replayable_sampling(request),
                cache_key=_cache_key(request),
            )
            out.runnable.append((run, gen))
        return out

    def _static_check(self, request: InferenceRequest, now: datetime) -> tuple[ErrorCode, str] | None:
        if request.expired(now):
            return ErrorCode.EXPIRED, f"deadline {request.deadline} passed before the request was started"
        if request.model is not None and request.model != self._engine.model_name:
            return ErrorCode.INVALID_REQUEST, (
                f"model {request.model!r} is not served here; this worker serves {self._engine.model_name!r}"
            )
        if request.max_new_tokens is not None and request.max_new_tokens > self._settings.max_new_tokens_limit:
            return ErrorCode.INVALID_REQUEST, (
                f"max_new_tokens={request.max_new_tokens} exceeds the limit {self._settings.max_new_tokens_limit}"
            )
        vocab = self._engine.vocab_size
        named = (
            ("logit_bias", request.logit_bias),
            ("prompt_token_ids", request.prompt_token_ids),
            ("stop_token_ids", request.stop_token_ids),
        )
        for name, ids in named:
            unknown = min((i for i in ids or () if i >= vocab), default=None)
            if unknown is not None:
                return ErrorCode.INVALID_REQUEST, (
                    f"{name} names token id {unknown}, outside the vocabulary of {self._engine.model_name} "
                    f"(ids 0 to {vocab - 1})"
                )
        return None

    def _length_check(self, request: InferenceRequest, prompt_tokens: int) -> tuple[ErrorCode, str] | None:
        context = self._engine.max_context
        if prompt_tokens <= self._settings.max_prompt_tokens and prompt_tokens + room_needed(request) <= context:
            return None
        asked = (
            "max_new_tokens is null (as many as fit), which needs room for one"
            if request.max_new_tokens is None
            else f"max_new_tokens is {request.max_new_tokens}"
        )
        chat = request.messages is not None
        what, shorten = ("the conversation", "drop or shorten messages") if chat else ("prompt", "shorten the prompt")
        # The OpenAI endpoints' callers sent max_tokens: the message names both, as the worker cannot tell which.
        return ErrorCode.CONTEXT_LENGTH_EXCEEDED, (
            f"{what} has {prompt_tokens} tokens and {asked}; their sum may not exceed the model's context of "
            f"{context} (and the prompt may not exceed {self._settings.max_prompt_tokens} tokens); {shorten} "
            "or ask for fewer new tokens (max_new_tokens, or max_tokens on the OpenAI endpoints)"
        )

    def _encode_all(
        self, requests: Sequence[tuple[InferenceRequest, str | None]]
    ) -> list[tuple[list[int], TurnPlan | None] | Refusal]:
        """Check structured outputs' grammars, render chats and tokenize (the intake's thread: a large grammar
        takes milliseconds to compile). A ``Refusal`` is the error for that request."""
        out: list[tuple[list[int], TurnPlan | None] | Refusal] = []
        for request, stored in requests:
            spec = request.structured_output
            if spec is not None and (error := self._engine.constraint_error(spec)) is not None:
                message = f"structured_output.{spec.kind} does not compile: {error}"
                out.append(Refusal(ErrorCode.INVALID_REQUEST, message))
                continue
            try:
                if request.messages is not None:
                    out.append(self._encode_turn(request, request.messages, stored))
                elif request.prompt_token_ids is not None:
                    out.append((list(request.prompt_token_ids), None))
                else:
                    out.append((self._engine.encode(request.prompt or ""), None))
            except Exception as exc:  # one bad prompt (or stored session) must not fail its batch
                log.exception("could not render or encode a prompt", extra={"request_id": request.request_id})
                out.append(Refusal(ErrorCode.INTERNAL, f"could not tokenize the prompt: {exc!r}"))
        return out

    def _encode_turn(
        self, request: InferenceRequest, messages: Sequence[ChatMessage], stored: str | None
    ) -> tuple[list[int], TurnPlan]:
        """Stored conversation + this turn, trimmed to leave room for ``max_new_tokens``, tokenized."""
        ids_by_length: dict[int, list[int]] = {}  # each candidate drops a different number of messages

        def count(conversation: list[ChatMessage]) -> int:
            ids = self._engine.encode(
                self._engine.render_chat(conversation, request.tools, request.chat_template_kwargs)
            )
            ids_by_length[len(conversation)] = ids
            return len(ids)

        budget = min(self._engine.max_context - room_needed(request), self._settings.max_prompt_tokens)
        if request.trim_history is False:  # one count; a conversation over the budget is _length_check's error
            budget = sys.maxsize
        turn, _fit = plan_turn(
            SessionDoc.from_json(stored),
            messages,
            budget=budget,
            count=count,
            session_id=request.session_id,
            model=self._engine.model_name,
            ttl_s=self._settings.session_ttl_s,
            headroom=self._settings.trim_headroom,
        )
        return ids_by_length[len(turn.messages)], turn


def _cache_key(request: InferenceRequest) -> str | None:
    """A chat turn's session, whose next turn will start with this one's tokens, or the prompt_cache_key of a
    request that carries its whole context (its record key too, so the next request with it comes here). Not
    a request that carries its whole context without one (the OpenAI endpoint's fresh session per call): it
    has no next turn here, and its cache would only push out the caches of those that do."""
    if request.prompt_cache_key is not None:
        return CACHE_KEY_PREFIX + request.prompt_cache_key  # never a session's: no Identifier has a "/"
    if request.messages is None or request.trim_history is False:
        return None
    return request.session_id


def room_needed(request: InferenceRequest) -> int:
    """New tokens the prompt must leave room for: all it asks for, or one where max_new_tokens is null."""
    return 1 if request.max_new_tokens is None else request.max_new_tokens


def replayable_sampling(request: InferenceRequest) -> SamplingParams:
    """Sampling with a seed derived from the request id when the caller gave none.

    A request regenerated after a crash then samples the same tokens as its cut-off attempt, so a
    streaming reader that already showed part of the answer sees no seam where the new attempt resumes.
    """
    sampling = request.sampling()
    if sampling.seed is not None or sampling.temperature == 0:
        return sampling
    seed = int.from_bytes(hashlib.blake2b(request.request_id.encode(), digest_size=8).digest(), "big") >> 1
    return sampling.model_copy(update={"seed": seed})


def error_event(item: PendingItem, attempt: int, code: ErrorCode, message: str) -> ErrorEvent:
    rid, trace = item.request.request_id, item.traceparent
    return ErrorEvent(request_id=rid, seq=0, attempt=attempt, code=code, message=message, traceparent=trace)


def cancelled_event(item: PendingItem, attempt: int, scheduled_at_ms: int, model: str) -> DoneEvent:
    """The final of a request cancelled before it ran: nothing generated, no prompt tokenized; ``model``: the one
    that would have answered, as every done names it."""
    return DoneEvent(
        request_id=item.request.request_id,
        seq=0,
        attempt=attempt,
        finish_reason=FinishReason.CANCELLED,
        prompt_tokens=0,
        completion_tokens=0,
        traceparent=item.traceparent,
        model=model,
        published_at_ms=item.published_at_ms,
        fetched_at_ms=item.fetched_at_ms,
        scheduled_at_ms=scheduled_at_ms,
    )
