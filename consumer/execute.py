"""Carrying out one planned batch: admission checks, engine steps, events to Redis, completions.

The model never runs on the event loop: ``start`` and every ``step`` go to the executor thread.
While step N+1 computes there, step N's events are written to Redis (one pipeline per step), and
step N+1's write starts only after step N's finished, so each request's events stay in order.

Requests that must not cost compute are answered first with a single final event:
- already finished (a redelivery): nothing is written at all;
- past their deadline: ``expired``;
- asking for another model, or for more new tokens than this deployment allows: ``invalid_request``;
- prompt plus ``max_new_tokens`` beyond the model's context: ``context_length_exceeded``.

A chat request (``messages``) is a turn of its session's conversation: its stored history is loaded
with the batch's admission, merged with the request's messages and trimmed oldest-first to fit
(``consumer/session.py``), and its ``done`` carries the session append to the sink, which writes both
in one script. A ``prompt`` request is a stateless completion and never touches the session.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime

from consumer.batcher import Batch, PendingItem
from consumer.engine.interface import BatchRun, GenerationInput, InferenceEngine, TokenDelta
from consumer.metrics import WorkerMetrics
from consumer.session import SessionDoc, TurnPlan, plan_turn
from consumer.sink import Outgoing, RedisSink, SessionWrite
from schemas.events import DoneEvent, ErrorCode, ErrorEvent, TokenEvent
from schemas.requests import ChatMessage, InferenceRequest, SamplingParams
from schemas.settings import Settings

log = logging.getLogger(__name__)

Done = Callable[[PendingItem], None]


@dataclass(slots=True)
class _Running:
    """One request's progress in this run."""

    item: PendingItem
    attempt: int
    prompt_tokens: int
    seq: int = 0  # next event's seq within this attempt
    completion_tokens: int = 0
    last_token_at: float | None = None  # monotonic time of the previous delta (TPOT)
    finished: bool = False
    turn: TurnPlan | None = None  # a chat turn: its session append, and the reply collected so far

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq - 1


@dataclass(slots=True)
class _Admission:
    """The outcome of the checks: requests to run, and finals to write without compute."""

    runnable: list[tuple[_Running, GenerationInput]] = field(default_factory=list)
    rejected: list[tuple[PendingItem, ErrorEvent]] = field(default_factory=list)
    skipped: list[PendingItem] = field(default_factory=list)


class BatchExecutor:
    """Runs batches one at a time against one engine, one sink and one executor thread."""

    def __init__(
        self,
        *,
        settings: Settings,
        engine: InferenceEngine,
        sink: RedisSink,
        metrics: WorkerMetrics,
        executor: Executor,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._sink = sink
        self._metrics = metrics
        self._executor = executor
        self._clock = clock
        self._wall_clock = wall_clock

    async def run(self, batch: Batch, *, done: Done) -> None:
        """Answer every request of ``batch`` with exactly one final (or skip it), calling ``done`` per request."""
        self._metrics.observe_batch(batch.size)
        for item in batch.items:
            self._metrics.observe_queue(max(0.0, batch.planned_at - item.enqueued_at))
        attempts = await self._sink.begin([item.request.request_id for item in batch.items])
        admission = await self._admit(batch.items, attempts)
        for item in admission.skipped:
            log.info("skipping a finished request (redelivery)", extra={"request_id": item.request.request_id})
            done(item)
        if admission.rejected:
            await self._sink.write([Outgoing(item.session_id, event) for item, event in admission.rejected])
            for item, _ in admission.rejected:
                self._finish_metrics(item)
                done(item)
        if admission.runnable:
            await self._generate(admission.runnable, done=done)

    async def _admit(self, items: Sequence[PendingItem], attempts: Sequence[int]) -> _Admission:
        out = _Admission()
        now = self._wall_clock()
        to_encode: list[tuple[PendingItem, int]] = []
        for item, attempt in zip(items, attempts, strict=True):
            if attempt == 0:
                out.skipped.append(item)
                continue
            problem = self._static_check(item.request, now)
            if problem is not None:
                out.rejected.append((item, _error(item, attempt, *problem)))
            else:
                to_encode.append((item, attempt))
        stored = await self._sink.load_sessions(
            [item.session_id for item, _ in to_encode if item.request.messages is not None],
            ttl_s=self._settings.session_ttl_s,
        )
        encoded = await asyncio.get_running_loop().run_in_executor(
            self._executor, self._encode_all, [(item.request, stored.get(item.session_id)) for item, _ in to_encode]
        )
        for (item, attempt), result in zip(to_encode, encoded, strict=True):
            request = item.request
            if isinstance(result, str):
                out.rejected.append((item, _error(item, attempt, ErrorCode.INTERNAL, result)))
                continue
            ids, turn = result
            problem = self._length_check(request, len(ids))
            if problem is not None:
                out.rejected.append((item, _error(item, attempt, *problem)))
                continue
            run = _Running(item=item, attempt=attempt, prompt_tokens=len(ids), turn=turn)
            gen = GenerationInput(
                request_id=request.request_id,
                prompt_ids=ids,
                max_new_tokens=request.max_new_tokens,
                sampling=replayable_sampling(request),
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
        if request.max_new_tokens > self._settings.max_new_tokens_limit:
            return ErrorCode.INVALID_REQUEST, (
                f"max_new_tokens={request.max_new_tokens} exceeds the limit {self._settings.max_new_tokens_limit}"
            )
        return None

    def _length_check(self, request: InferenceRequest, prompt_tokens: int) -> tuple[ErrorCode, str] | None:
        limit = self._engine.max_context
        if prompt_tokens > self._settings.max_prompt_tokens or prompt_tokens + request.max_new_tokens > limit:
            return ErrorCode.CONTEXT_LENGTH_EXCEEDED, (
                f"prompt has {prompt_tokens} tokens and max_new_tokens is {request.max_new_tokens}; "
                f"their sum may not exceed the model's context of {limit} "
                f"(and the prompt may not exceed {self._settings.max_prompt_tokens} tokens)"
            )
        return None

    def _encode_all(
        self, requests: Sequence[tuple[InferenceRequest, str | None]]
    ) -> list[tuple[list[int], TurnPlan | None] | str]:
        """Render chats and tokenize (executor thread). A string result is the error for that request."""
        out: list[tuple[list[int], TurnPlan | None] | str] = []
        for request, stored in requests:
            try:
                if request.messages is None:
                    out.append((self._engine.encode(request.prompt or ""), None))
                else:
                    out.append(self._encode_turn(request, request.messages, stored))
            except Exception as exc:  # one bad prompt (or stored session) must not fail its batch
                log.exception("could not render or encode a prompt", extra={"request_id": request.request_id})
                out.append(f"could not tokenize the prompt: {exc!r}")
        return out

    def _encode_turn(
        self, request: InferenceRequest, messages: Sequence[ChatMessage], stored: str | None
    ) -> tuple[list[int], TurnPlan]:
        """Stored conversation + this turn, trimmed to leave room for ``max_new_tokens``, tokenized."""
        ids_by_length: dict[int, list[int]] = {}  # each candidate drops a different number of messages

        def count(conversation: list[ChatMessage]) -> int:
            ids = self._engine.encode(self._engine.render_chat(conversation))
            ids_by_length[len(conversation)] = ids
            return len(ids)

        budget = min(self._engine.max_context - request.max_new_tokens, self._settings.max_prompt_tokens)
        turn, _fit = plan_turn(
            SessionDoc.from_json(stored),
            messages,
            budget=budget,
            count=count,
            session_id=request.session_id,
            model=self._engine.model_name,
            ttl_s=self._settings.session_ttl_s,
        )
        return ids_by_length[len(turn.messages)], turn

    async def _generate(self, runnable: list[tuple[_Running, GenerationInput]], *, done: Done) -> None:
        """Step the engine to the end, writing step N while step N+1 computes.

        An engine failure answers the batch's unfinished requests with ``internal`` errors and the
        worker goes on; a Redis failure propagates, so the worker fails loudly instead of committing.
        """
        loop = asyncio.get_running_loop()
        running = {r.item.request.request_id: r for r, _ in runnable}
        self._metrics.set_running(len(running))
        writing: asyncio.Task[None] | None = None
        failure: BaseException | None = None
        try:
            engine_run: BatchRun = await loop.run_in_executor(
                self._executor, self._engine.start, [g for _, g in runnable]
            )
        except Exception as exc:
            failure = exc
        else:
            while not engine_run.finished:
                step = loop.run_in_executor(self._executor, engine_run.step)
                if writing is not None:
                    await _settle(writing, step)
                try:
                    deltas = await step
                except Exception as exc:
                    failure = exc
                    break
                writing = asyncio.create_task(self._write_step(running, deltas, done))
        if writing is not None:
            await writing
        if failure is not None:
            log.error("engine failed mid-batch; answering its requests with errors", exc_info=failure)
            await self._fail_unfinished(running, f"engine failed: {failure!r}", done)
        await self._fail_unfinished(running, "engine finished without a finish reason", done)
        self._metrics.set_running(0)

    async def _write_step(self, running: dict[str, _Running], deltas: Sequence[TokenDelta], done: Done) -> None:
        now = self._clock()
        events: list[Outgoing] = []
        finished: list[_Running] = []
        for delta in deltas:
            r = running.get(delta.request_id)
            if r is None or r.finished:
                continue
            self._token_metrics(r, delta, now)
            request = r.item.request
            if delta.text:
                token = TokenEvent(request_id=request.request_id, seq=r.next_seq(), attempt=r.attempt, text=delta.text)
                events.append(Outgoing(request.session_id, token))
                if r.turn is not None:
                    r.turn.reply.append(delta.text)
            if delta.finish_reason is not None:
                r.finished = True
                final = DoneEvent(
                    request_id=request.request_id,
                    seq=r.next_seq(),
                    attempt=r.attempt,
                    finish_reason=delta.finish_reason,
                    prompt_tokens=r.prompt_tokens,
                    completion_tokens=delta.completion_tokens,
                    traceparent=r.item.traceparent,
                )
                events.append(Outgoing(request.session_id, final, session=self._session_write(r, final)))
                finished.append(r)
        lost = await self._sink.write(events)
        for rid in lost:
            log.warning("another attempt wrote this request's final first", extra={"request_id": rid})
        for r in finished:
            self._finish_metrics(r.item)
            done(r.item)

    def _session_write(self, r: _Running, final: DoneEvent) -> SessionWrite | None:
        """A chat turn's session append: its new turns and the reply (stripped, as templates render it)."""
        if r.turn is None:
            return None
        patch = r.turn.append.patch_json(
            reply="".join(r.turn.reply).strip(),
            completion_tokens=final.completion_tokens,
            request_id=final.request_id,
            now=self._wall_clock(),
        )
        return SessionWrite(ttl_s=self._settings.session_ttl_s, patch=patch)

    async def _fail_unfinished(self, running: dict[str, _Running], message: str, done: Done) -> None:
        left = [r for r in running.values() if not r.finished]
        if not left:
            return
        events = []
        for r in left:
            r.finished = True
            error = ErrorEvent(
                request_id=r.item.request.request_id,
                seq=r.next_seq(),
                attempt=r.attempt,
                code=ErrorCode.INTERNAL,
                message=message,
                traceparent=r.item.traceparent,
            )
            events.append(Outgoing(r.item.session_id, error))
        await self._sink.write(events)
        for r in left:
            self._finish_metrics(r.item)
            done(r.item)

    def _token_metrics(self, r: _Running, delta: TokenDelta, now: float) -> None:
        new_tokens = max(0, delta.completion_tokens - r.completion_tokens)
        r.completion_tokens = max(r.completion_tokens, delta.completion_tokens)
        self._metrics.add_tokens(new_tokens)
        if new_tokens == 0:
            return
        if r.last_token_at is None:
            self._metrics.observe_first_token(now - r.item.enqueued_at)
        else:
            self._metrics.observe_token_gap(now - r.last_token_at)
        r.last_token_at = now

    def _finish_metrics(self, item: PendingItem) -> None:
        self._metrics.observe_e2e(self._clock() - item.enqueued_at)


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


def _error(item: PendingItem, attempt: int, code: ErrorCode, message: str) -> ErrorEvent:
    rid, trace = item.request.request_id, item.traceparent
    return ErrorEvent(request_id=rid, seq=0, attempt=attempt, code=code, message=message, traceparent=trace)


async def _settle(writing: asyncio.Task[None], step: asyncio.Future[list[TokenDelta]]) -> None:
    """Wait for the previous step's write; if it failed, let the running step end before raising.

    The engine step cannot be interrupted, so leaving it behind would let the next batch start
    while the executor thread is still busy with this one.
    """
    try:
        await writing
    except BaseException:
        await asyncio.wait([step])
        raise
