"""Carrying out batches: engine steps, events to Redis, completions.

The model never runs on the event loop: ``start`` and every ``step`` go to the executor thread.
While step N+1 computes there, step N's events are written to Redis (one pipeline per step), and
step N+1's write starts only after step N's finished, so each request's events stay in order.

Static batching runs one planned batch to its end. Continuous batching (``joins`` given) also fills
the places finished ones left with queued requests: at each step boundary, and again whenever a request
arrives while the step computes. They are admitted (Redis, tokenizer) while the step runs and join the
engine's batch before the next one, so a short answer never waits for a long one, a freed slot never
idles until the batch ends, and a request that arrives mid-step gets its prefill in the very next step.

A request its caller cancels (``producer/cancel.py``) is learnt of from a step's write, which reports the marks
of the requests it wrote tokens for; at the next boundary it gets its ``cancelled`` final and leaves the
engine's batch (``BatchRun.drop``), so its place goes to a joiner.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from consumer.batcher import Batch, PendingItem
from consumer.engine.interface import BatchRun, GenerationInput, InferenceEngine, OutOfMemory, TokenDelta
from consumer.intake import Intake, Running
from consumer.metrics import WorkerMetrics
from consumer.sink import Outgoing, RedisSink, RequestRef, SessionWrite, Written
from schemas.events import DoneEvent, ErrorCode, ErrorEvent, FinishReason, TokenEvent
from schemas.settings import Settings

log = logging.getLogger(__name__)

Done = Callable[[PendingItem], None]
# continuous batching: (sequences still running, sessions still open) -> requests to join now, or None
More = Callable[[int, Collection[str]], Batch | None]
# out of memory: (requests to queue again, the new batch limit)
Shrink = Callable[[Sequence[PendingItem], int], None]


@dataclass(frozen=True, slots=True)
class Joins:
    """Continuous batching's source of joiners, and the signal that one may have arrived."""

    take: More
    arrived: asyncio.Event  # set when a request enters the queue; cleared here before each look


class BatchExecutor:
    """Runs batches one at a time against one engine, one sink and one executor thread (``executor``); requests
    are checked and tokenized on another (``intake_executor``, see ``consumer/intake.py``)."""

    def __init__(
        self,
        *,
        settings: Settings,
        engine: InferenceEngine,
        sink: RedisSink,
        metrics: WorkerMetrics,
        executor: Executor,
        intake_executor: Executor,
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
        self._intake = Intake(settings=settings, engine=engine, sink=sink, executor=intake_executor)
        self._open: dict[str, int] = {}  # session -> requests admitted whose final is not yet written

    def _wall_ms(self) -> int:
        """The wall clock in epoch milliseconds, as the final event's stage times carry it."""
        return int(self._wall_clock().timestamp() * 1000)

    @property
    def open_sessions(self) -> Collection[str]:
        """Sessions with a request between admission and its final write: their next turn must wait."""
        return self._open.keys()

    async def run(self, batch: Batch, *, done: Done, joins: Joins | None = None, shrink: Shrink | None = None) -> None:
        """Answer every request of ``batch`` (and of whatever ``joins`` adds) with exactly one final, or skip it.

        ``done`` is called per request once its final is written (or it was skipped). When the device
        runs out of memory, ``shrink`` gets the unfinished requests back (no final written, so they run
        again with a new attempt number) with a halved batch limit; without it they get ``internal`` errors.
        """

        def finished(item: PendingItem) -> None:
            self._close(item)
            done(item)

        runnable = await self._admit(batch, finished)
        if runnable:
            await self._generate(runnable, done=finished, joins=joins, shrink=shrink)

    async def answer_unreadable(self, session_id: str, request_id: str, message: str) -> None:
        """The one final of a record that names its request but is no valid request (it was dead-lettered).

        It is written at once, ahead of any earlier turn of its session still queued: it never runs.
        """
        (attempt,) = await self._sink.begin([RequestRef(session_id, request_id)])
        if attempt == 0:
            return  # a redelivery of one answered already
        error = ErrorEvent(  # cancelled or not (a negative attempt), it could never have run
            request_id=request_id, seq=0, attempt=abs(attempt), code=ErrorCode.INVALID_REQUEST, message=message
        )
        await self._write([Outgoing(session_id, error)])

    def _close(self, item: PendingItem) -> None:
        left = self._open.pop(item.session_id, 1) - 1
        if left > 0:
            self._open[item.session_id] = left

    async def _admit(self, batch: Batch, done: Done) -> list[tuple[Running, GenerationInput]]:
        """Admit a batch: skipped and rejected requests are answered here; the rest is returned to run."""
        self._metrics.observe_batch(batch.size)
        for item in batch.items:
            self._metrics.observe_queue(max(0.0, batch.planned_at - item.enqueued_at))
            self._open[item.session_id] = self._open.get(item.session_id, 0) + 1
        scheduled_at_ms = self._wall_ms()  # before ``begin``: its round trip is admission
        admission = await self._intake.admit(batch.items, now=self._wall_clock(), scheduled_at_ms=scheduled_at_ms)
        for item in admission.skipped:
            log.info("skipping a finished request (redelivery)", extra={"request_id": item.request.request_id})
            done(item)
        answered: list[tuple[PendingItem, DoneEvent | ErrorEvent]] = [*admission.rejected, *admission.cancelled]
        if answered:
            await self._write([Outgoing(item.session_id, event) for item, event in answered])
            for item, _ in answered:
                self._finish_metrics(item)
                done(item)
        return admission.runnable

    async def _generate(
        self,
        runnable: list[tuple[Running, GenerationInput]],
        *,
        done: Done,
        joins: Joins | None,
        shrink: Shrink | None,
    ) -> None:
        """Step the engine to the end, writing step N while step N+1 computes.

        An engine failure answers every unfinished request of the run with an ``internal`` error and the
        worker goes on (out of memory: see ``_shrink``); a Redis failure that outlasts the sink's retries
        (BRIGADE_DEPENDENCY_RETRY_S) propagates, so the worker fails loudly instead of committing.
        """
        loop = asyncio.get_running_loop()
        running = {r.item.request.request_id: r for r, _ in runnable}
        self._metrics.set_running(len(running))
        writing: asyncio.Task[list[str]] | None = None
        cancelled: list[str] = []  # running requests a caller cancelled, as the last write found
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
                    cancelled = await _settle(writing, step)
                joining = await self._join_during(step, joins, running, done) if joins is not None else []
                # Joiners count as running from here: an engine failure answers (or hands back) them too.
                running.update((r.item.request.request_id, r) for r, _ in joining)
                try:
                    deltas = await step
                except Exception as exc:
                    failure = exc
                    break
                writing = asyncio.create_task(self._write_step(running, deltas, done, cancelled))
                if cancelled:
                    engine_run.drop(cancelled)
                if joining:
                    engine_run.join([g for _, g in joining])
                self._metrics.set_running(len(_unfinished(running)))
        if writing is not None:
            await writing
        if isinstance(failure, OutOfMemory) and shrink is not None and self._shrink(running, failure, shrink):
            failure = None
        if failure is not None:
            log.error("engine failed mid-batch; answering its requests with errors", exc_info=failure)
            await self._fail_unfinished(running, f"engine failed: {failure!r}", done)
        await self._fail_unfinished(running, "engine finished without a finish reason", done)
        self._metrics.set_running(0)

    def _shrink(self, running: dict[str, Running], failure: OutOfMemory, shrink: Shrink) -> bool:
        """Out of memory: hand the unfinished requests back with half the batch limit (False at one request).

        No final was written for them, so they are not done: they run again, with the next attempt number
        (readers drop the cut-off attempt's tokens), and their offsets stay uncommitted until then.
        """
        left = _unfinished(running)
        if len(left) <= 1:
            return False
        limit = len(left) // 2
        self._metrics.add_out_of_memory()
        log.warning(
            "out of memory; halving the batch limit and running the batch again",
            extra={"batch": len(left), "limit": limit, "error": str(failure)},
        )
        for r in left:
            r.finished = True
            self._close(r.item)
        shrink(sorted((r.item for r in left), key=lambda item: item.enqueued_at), limit)
        return True

    async def _join_during(
        self, step: asyncio.Future[list[TokenDelta]], joins: Joins, running: dict[str, Running], done: Done
    ) -> list[tuple[Running, GenerationInput]]:
        """Continuous batching: admit queued requests for the free slots until ``step`` ends.

        One look at the boundary, then one more per arrival while the step computes: a request that
        arrives mid-step is ready to join when it ends instead of being admitted during the next step and
        joining only after that one. Running sequences are counted from the writes seen so far, so a
        sequence ending in the running step frees its slot one step later; an admission failure lets the
        step end before it propagates.
        """
        joining: list[tuple[Running, GenerationInput]] = []
        while True:
            joins.arrived.clear()
            slots_taken = len(_unfinished(running)) + len(joining)
            batch = joins.take(slots_taken, self.open_sessions)
            if batch is not None:
                try:
                    joining += await self._admit(batch, done)
                except BaseException:
                    await asyncio.wait([step])
                    raise
                continue  # more may have arrived during the admission
            if step.done():
                return joining
            arrival = asyncio.ensure_future(joins.arrived.wait())
            waiters: list[asyncio.Future[Any]] = [step, arrival]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                arrival.cancel()
            if step.done():
                return joining

    async def _write_step(
        self, running: dict[str, Running], deltas: Sequence[TokenDelta], done: Done, cancelled: Sequence[str] = ()
    ) -> list[str]:
        """One step's events (then a ``cancelled`` final for each of ``cancelled`` the step did not end); returns
        the running requests whose cancel mark this write found."""
        now = self._clock()
        now_ms = self._wall_ms()
        events: list[Outgoing] = []
        finished: list[Running] = []
        for delta in deltas:
            r = running.get(delta.request_id)
            if r is None or r.finished:
                continue
            self._token_metrics(r, delta, now)
            if delta.error is not None:  # the engine gave up on this request alone: the cause is the request's
                r.finished = True
                code = ErrorCode.INVALID_REQUEST
                failed = ErrorEvent(request_id=r.item.request.request_id, seq=r.next_seq(), attempt=r.attempt,
                                    code=code, message=delta.error, traceparent=r.item.traceparent)  # fmt: skip
                events.append(Outgoing(r.item.session_id, failed))
                finished.append(r)
                continue
            if r.first_token_at_ms is None and delta.completion_tokens > 0:
                r.first_token_at_ms = now_ms
            request = r.item.request
            if delta.logprob is not None:
                r.logprobs.append(delta.logprob)
            if delta.prompt_logprobs is not None:
                r.prompt_logprobs = delta.prompt_logprobs
            if delta.text:
                token = TokenEvent(
                    request_id=request.request_id,
                    seq=r.next_seq(),
                    attempt=r.attempt,
                    text=delta.text,
                    logprobs=r.take_logprobs(),
                    prompt_logprobs=r.take_prompt_logprobs(),
                )
                events.append(Outgoing(request.session_id, token))
                if r.turn is not None:
                    r.turn.reply.append(delta.text)
            if delta.finish_reason is not None:
                r.finished = True
                final = self._done(r, delta.finish_reason, delta.completion_tokens)
                events.append(Outgoing(request.session_id, final, session=self._session_write(r, final)))
                finished.append(r)
        stopped = self._stop(running, cancelled)
        events += [
            Outgoing(r.item.session_id, self._done(r, FinishReason.CANCELLED, r.completion_tokens)) for r in stopped
        ]
        finished += stopped
        written = await self._write(events)
        for r in finished:
            self._finish_metrics(r.item)
            done(r.item)
        return [rid for rid in written.cancelled if rid in running and not running[rid].finished]

    async def _write(self, events: Sequence[Outgoing]) -> Written:
        """Write events, counting the requests their finals ended (a final lost to another attempt is that
        attempt's to count)."""
        written = await self._sink.write(events)
        for rid in written.lost:
            log.warning("another attempt wrote this request's final first", extra={"request_id": rid})
        lost = set(written.lost)
        self._metrics.count_finals(
            o.event for o in events if not isinstance(o.event, TokenEvent) and o.event.request_id not in lost
        )
        return written

    def _stop(self, running: dict[str, Running], cancelled: Sequence[str]) -> list[Running]:
        """The cancelled requests still running, now finished: each gets a ``cancelled`` done (what it streamed
        stands, and no session append: its caller abandoned the turn)."""
        stopped = [running[rid] for rid in cancelled if rid in running and not running[rid].finished]
        for r in stopped:
            r.finished = True
        if stopped:
            log.info("cancelled by the caller", extra={"request_ids": [r.item.request.request_id for r in stopped]})
        return stopped

    def _done(self, r: Running, finish_reason: FinishReason, completion_tokens: int) -> DoneEvent:
        """A running request's ``done``: with the entries and stage times it carries."""
        return DoneEvent(
            request_id=r.item.request.request_id,
            seq=r.next_seq(),
            attempt=r.attempt,
            finish_reason=finish_reason,
            prompt_tokens=r.prompt_tokens,
            completion_tokens=completion_tokens,
            cached_tokens=r.cached_tokens or None,
            logprobs=r.take_logprobs(),
            prompt_logprobs=r.take_prompt_logprobs(),
            traceparent=r.item.traceparent,
            model=self._engine.model_name,
            published_at_ms=r.item.published_at_ms,
            fetched_at_ms=r.item.fetched_at_ms,
            scheduled_at_ms=r.scheduled_at_ms,
            first_token_at_ms=r.first_token_at_ms,
        )

    def _session_write(self, r: Running, final: DoneEvent) -> SessionWrite | None:
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

    async def _fail_unfinished(self, running: dict[str, Running], message: str, done: Done) -> None:
        left = _unfinished(running)
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
        await self._write(events)
        for r in left:
            self._finish_metrics(r.item)
            done(r.item)

    def _token_metrics(self, r: Running, delta: TokenDelta, now: float) -> None:
        new_tokens = max(0, delta.completion_tokens - r.completion_tokens)
        r.completion_tokens = max(r.completion_tokens, delta.completion_tokens)
        self._metrics.add_tokens(new_tokens)
        if new_tokens == 0:
            return
        if r.last_token_at is None:
            self._metrics.observe_first_token(now - r.item.enqueued_at)
            self._metrics.add_prompt_tokens(r.prompt_tokens)
            if delta.cached_tokens is not None:
                r.cached_tokens = delta.cached_tokens
                self._metrics.observe_prefix_cache(queried=r.prompt_tokens, hit=delta.cached_tokens)
        else:
            self._metrics.observe_token_gap(now - r.last_token_at)
        r.last_token_at = now

    def _finish_metrics(self, item: PendingItem) -> None:
        self._metrics.observe_e2e(self._clock() - item.enqueued_at)


def _unfinished(running: dict[str, Running]) -> list[Running]:
    return [r for r in running.values() if not r.finished]


async def _settle(writing: asyncio.Task[list[str]], step: asyncio.Future[list[TokenDelta]]) -> list[str]:
    """Wait for the previous step's write; if it failed, let the running step end before raising.

    The engine step cannot be interrupted, so leaving it behind would let the next batch start
    while the executor thread is still busy with this one.
    """
    try:
        return await writing
    except BaseException:
        await asyncio.wait([step])
        raise
