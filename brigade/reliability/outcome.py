"""What a reader saw after a fault: every request's events judged the way the project's readers judge them.

Delivery is only as good as what a reader ends up with, so the tally reads the response streams with
``AttemptFilter`` (the filter the Python client and the OpenAI endpoints use) rather than trusting the
workers' logs. A request counts as **completed** when the reader's answer ends in ``done`` and the kept
events of that attempt are ``seq`` 0..n, each once; **lost** when it was acknowledged and no final event
came; **duplicated** when the stream holds more than one final event for it (the contract says one).

``judge`` and ``tally`` are pure; ``wait_finals``, ``wait_committed`` and ``read_streams`` do the reading.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition
from redis import exceptions as redis_errors

from brigade.kafka_config import kafka_client_options
from brigade.reliability.load import Submission
from brigade.streams import xread
from producer.stream_reader import AttemptFilter, Verdict
from schemas.events import DoneEvent, ErrorEvent, TokenEvent, is_final, parse_event
from schemas.settings import Settings

log = logging.getLogger(__name__)

AnyEvent = TokenEvent | DoneEvent | ErrorEvent
BLOCK_MS = 1000  # one XREAD's wait; under redis-py's 5 s socket timeout
READ_RETRY_S = 0.5  # pause before reading again while Redis is restarting (part of the fault under test)


@dataclass(frozen=True, slots=True)
class RequestVerdict:
    """One request as a reader ends up seeing it."""

    finals: int  # final events in the stream, whatever their attempt (the contract: exactly one)
    answer: str | None  # "done" or "error": the final the reader kept; None when no final came
    clean: bool  # the kept events of the answered attempt are seq 0..n, each once
    attempts: int  # the highest attempt seen
    repeats: int  # events dropped as a repeated seq (a write retried after a lost reply)


def judge(request_id: str, events: Iterable[AnyEvent]) -> RequestVerdict:
    """Run one request's events (stream order, other requests' events allowed) through ``AttemptFilter``."""
    attempts = AttemptFilter()
    kept: list[int] = []
    finals = top = repeats = 0
    answer: str | None = None
    last: dict[int, int] = {}  # attempt → highest seq seen, to tell a repeat from a stale attempt
    for event in events:
        if event.request_id != request_id:
            continue
        top = max(top, event.attempt)
        finals += is_final(event)
        if event.seq <= last.get(event.attempt, -1):
            repeats += 1
        last[event.attempt] = max(event.seq, last.get(event.attempt, -1))
        verdict = attempts.judge(event)
        if verdict is Verdict.RESTART:
            kept = []
        if verdict is not Verdict.DROP:
            kept.append(event.seq)
            if is_final(event):
                answer = event.type
    return RequestVerdict(
        finals=finals, answer=answer, clean=kept == list(range(len(kept))), attempts=top, repeats=repeats
    )


@dataclass(frozen=True, slots=True)
class Tally:
    """A scenario's figures, as ``brigade reliability`` prints them."""

    sent: int
    acknowledged: int
    completed: int  # acknowledged, answered ``done`` with a clean answer
    lost: int  # acknowledged, no final event
    duplicated: int  # more than one final event in the stream
    failed: int  # acknowledged, answered with an ``error`` event
    garbled: int  # answered, but the kept events are not seq 0..n each once
    retried: int  # generated more than once (attempt > 1) because a run was cut off
    repeated_writes: int  # requests with a token write repeated in the stream (dropped by readers)
    unacknowledged_answered: int  # not acknowledged (503, timeout) yet answered: the broker took it late
    wall_s: float

    @property
    def ok(self) -> bool:
        """Every acknowledged request answered once, cleanly, with ``done``."""
        return self.completed == self.acknowledged and not (self.lost or self.duplicated or self.garbled)


def tally(submissions: Sequence[Submission], verdicts: Mapping[str, RequestVerdict], *, wall_s: float) -> Tally:
    acked = [s for s in submissions if s.acknowledged]
    got = [verdicts.get(s.request_id, _NONE) for s in acked]
    others = [verdicts.get(s.request_id, _NONE) for s in submissions if not s.acknowledged]
    return Tally(
        sent=len(submissions),
        acknowledged=len(acked),
        completed=sum(v.answer == "done" and v.clean and v.finals == 1 for v in got),
        lost=sum(v.answer is None for v in got),
        duplicated=sum(v.finals > 1 for v in [*got, *others]),
        failed=sum(v.answer == "error" for v in got),
        garbled=sum(v.answer is not None and not v.clean for v in got),
        retried=sum(v.attempts > 1 for v in [*got, *others]),
        repeated_writes=sum(v.repeats > 0 for v in [*got, *others]),
        unacknowledged_answered=sum(v.answer is not None for v in others),
        wall_s=round(wall_s, 1),
    )


_NONE = RequestVerdict(finals=0, answer=None, clean=False, attempts=0, repeats=0)


async def wait_finals(
    redis: aioredis.Redis, settings: Settings, submissions: Sequence[Submission], *, timeout_s: float
) -> set[str]:
    """XREAD the acknowledged requests' streams until each has a final event; return those still without.

    Redis errors (a restart under test) are waited out until the deadline, as a reader would.
    """
    pending: dict[str, set[str]] = {}
    for s in submissions:
        if s.acknowledged:
            pending.setdefault(settings.names.stream_key(s.session_id), set()).add(s.request_id)
    cursors = dict.fromkeys(pending, "0-0")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while cursors and loop.time() < deadline:
        try:
            reply = await xread(redis, cursors, block_ms=BLOCK_MS)
        except (redis_errors.ConnectionError, redis_errors.TimeoutError):
            await asyncio.sleep(READ_RETRY_S)  # Redis is down: the reader waits, it does not give up
            continue
        for key, entries in reply:
            for entry_id, fields in entries:
                cursors[key] = entry_id
                event = parse_event(fields)
                if is_final(event):
                    pending[key].discard(event.request_id)
            if not pending[key]:
                del cursors[key]
    return {rid for key in cursors for rid in pending[key]}


async def read_streams(
    redis: aioredis.Redis, settings: Settings, session_ids: Iterable[str]
) -> dict[str, RequestVerdict]:
    """Every request on these sessions' streams, judged; read in full (XRANGE) once the fleet is quiet."""
    verdicts: dict[str, RequestVerdict] = {}
    for sid in sorted(set(session_ids)):
        entries = cast(list[tuple[str, dict[str, str]]], await redis.xrange(settings.names.stream_key(sid)))
        events = [parse_event(fields) for _, fields in entries]
        for rid in dict.fromkeys(e.request_id for e in events):
            verdicts[rid] = judge(rid, events)
    return verdicts


def log_ends(submissions: Iterable[Submission]) -> dict[int, int]:
    """Partition → one past the highest acknowledged offset: where the group's commits must reach."""
    ends: dict[int, int] = {}
    for s in submissions:
        if s.partition is not None and s.offset is not None:
            ends[s.partition] = max(ends.get(s.partition, 0), s.offset + 1)
    return ends


async def committed(settings: Settings, cost_class: str, partitions: Iterable[int]) -> dict[int, int]:
    """The class group's committed offset per partition (-1 where none), as any Kafka client reads it."""
    consumer = AIOKafkaConsumer(**kafka_client_options(settings), group_id=settings.names.consumer_group(cost_class))
    await consumer.start()
    try:
        topic = settings.names.request_topic(cost_class)
        out: dict[int, int] = {}
        for p in partitions:
            got = await consumer.committed(TopicPartition(topic, p))
            out[p] = -1 if got is None else int(got)
        return out
    finally:
        await consumer.stop()


async def wait_committed(settings: Settings, cost_class: str, ends: Mapping[int, int], *, timeout_s: float) -> bool:
    """Wait until the group's commits reach ``ends`` (all acknowledged work done and recorded); False on timeout.

    Checked before the final read so that a late redelivery, if one were to write a second final, has
    already happened when the streams are read.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        now = await committed(settings, cost_class, ends)
        if all(now[p] >= end for p, end in ends.items()):
            return True
        if loop.time() > deadline:
            log.warning("commits did not reach the log end", extra={"committed": now, "ends": dict(ends)})
            return False
        await asyncio.sleep(0.2)  # polling the group's offsets: the broker offers nothing to wait on
