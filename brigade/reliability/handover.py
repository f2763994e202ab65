"""Work handed from one worker to another: a SIGTERM in the middle of a batch, and a conversation whose
worker is SIGKILLed between turns.

SIGTERM: the worker drains (``consumer/worker.py``): its running batch finishes and writes its finals
within ``drain_timeout_s``, or is abandoned past it; what was still queued was never committed. Either
way a second worker must end every request with one final: the drained batch's requests skipped as
finished (attempt 1 stays the answer), an abandoned batch's regenerated as attempt 2.

Conversation: session state lives only in Redis, so after the worker that answered turn *n* is killed,
turn *n + 1* must be answered by another worker with the whole history in its prompt.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from typing import Any, cast

import httpx
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from brigade.devtools.process import Service
from brigade.kafka_config import kafka_client_options
from brigade.reliability.fleet import ProcessFleet, finished_requests
from brigade.reliability.load import Submission, post_request
from brigade.reliability.outcome import log_ends, read_streams, tally, wait_committed, wait_finals
from brigade.reliability.scenarios import COST_CLASS, FINALS_TIMEOUT_S, Progress, Report, Stack
from brigade.streams import xread
from producer.stream_reader import Answer, AttemptFilter
from schemas.events import parse_event
from schemas.requests import InferenceRequest

# GPT-2 small's compute (random weights, generated on first use): a batch of 4 x 48 tokens takes seconds on a
# CPU, so a SIGTERM at its first token always lands mid-batch. builtin:tiny finishes 400 tokens in a quarter
# of a second, inside the drain's own bookkeeping, and "abandoned" could not be told from "finished".
SLOW_MODEL = "builtin:gpt2-small-shape"
TURN_TIMEOUT_S = 120.0  # one conversation turn, a dead member's session expiry and a rebalance included


async def publish(stack: Stack, requests: list[InferenceRequest]) -> list[Submission]:
    """Straight to the class topic, as any Kafka client may; acknowledged by the broker (acks=all)."""
    producer = AIOKafkaProducer(**kafka_client_options(stack.settings), acks="all")
    await producer.start()
    try:
        topic = stack.settings.names.request_topic(COST_CLASS)
        out = []
        for r in requests:
            meta = await producer.send_and_wait(topic, r.to_bytes(), key=r.record_key)
            out.append(Submission(r.request_id, r.session_id, 202, meta.partition, meta.offset))
        return out
    finally:
        await producer.stop()


async def first_token(redis: aioredis.Redis, keys: list[str], *, timeout_s: float) -> None:
    """Return once any of these streams has an event: a batch is running."""
    async with asyncio.timeout(timeout_s):
        while not await xread(redis, dict.fromkeys(keys, "0-0"), block_ms=1000):
            pass


async def sigterm_mid_batch(
    stack: Stack,
    *,
    requests: int = 8,
    max_batch_size: int = 4,
    max_new_tokens: int = 48,
    drain_timeout_s: float = 30.0,
    model: str = SLOW_MODEL,
    progress: Progress | None = None,
) -> Report:
    """SIGTERM the only worker once its first batch streams tokens; a second worker then takes over."""
    progress = progress or Progress()
    name = "sigterm-drain" if drain_timeout_s > 0 else "sigterm-abandon"
    update = {
        "drain_timeout_s": drain_timeout_s,
        "max_batch_size": max_batch_size,
        "max_batch_wait_ms": 50.0,
        "model": model,
    }
    settings = stack.settings.model_copy(update=update)
    fleet = ProcessFleet(settings=settings, log_dir=stack.log_dir / name)
    redis = aioredis.from_url(settings.redis_url, decode_responses=True)
    try:
        progress.phase(f"{name}: one worker, {requests} requests")
        (first,) = await fleet.start_workers(1, cost_class=COST_CLASS)
        await fleet.wait_owned(settings.cost_class(COST_CLASS).partitions)
        batch = [
            InferenceRequest(
                request_id=f"{name}-{i}",
                session_id=f"{name}-s{i}",
                prompt="Fire table two and send it to the pass.",
                max_new_tokens=max_new_tokens,
                temperature=0,
                ignore_eos=True,
            )
            for i in range(requests)
        ]
        started = time.monotonic()
        submissions = await publish(stack, batch)
        keys = [settings.names.stream_key(r.session_id) for r in batch]
        await first_token(redis, keys, timeout_s=60)
        running = {rid for rid in (await read_streams(redis, settings, (r.session_id for r in batch)))}
        progress.phase(f"{name}: SIGTERM mid-batch ({len(running)} requests streaming)")
        fleet.signal_worker(first, signal.SIGTERM)
        exit_code = await fleet.wait_exit(first, timeout_s=drain_timeout_s + 30)
        progress.phase(f"{name}: a second worker takes over")
        (second,) = await fleet.start_workers(1, cost_class=COST_CLASS)
        await wait_finals(redis, settings, submissions, timeout_s=FINALS_TIMEOUT_S)
        wall_s = time.monotonic() - started
        committed = await wait_committed(settings, COST_CLASS, log_ends(submissions), timeout_s=60)
        async with httpx.AsyncClient(timeout=1.0) as http:
            answered_by_second = await finished_requests(http, second)
        verdicts = await read_streams(redis, settings, (r.session_id for r in batch))
        fault = {
            "exit_code": exit_code,
            "streaming_at_sigterm": len(running),
            "their_answer_attempts": sorted({verdicts[rid].attempts for rid in running}),
            "answered_by_second": answered_by_second,
            "drain_timeout_s": drain_timeout_s,
        }
        return Report(name, tally(submissions, verdicts, wall_s=wall_s), fault, committed)
    finally:
        await redis.aclose()
        await fleet.close()


async def served_by(
    http: httpx.AsyncClient, workers: list[Service], before: dict[str, int], *, timeout_s: float = 10.0
) -> Service | None:
    """The worker whose answered-request count grew since ``before`` (updated in place); None if none did in time.

    Waited for: a worker counts a request just after its final event is in Redis, where the reader saw it.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        grew = []
        for w in workers:
            now = await finished_requests(http, w)
            if now > before.get(w.name, 0):
                grew.append(w)
            before[w.name] = now
        if grew or loop.time() > deadline:
            return grew[0] if grew else None
        await asyncio.sleep(0.05)  # polling /metrics: HTTP offers nothing to wait on


async def conversation_handover(
    stack: Stack, *, turns: int = 5, workers: int = 2, progress: Progress | None = None
) -> Report:
    """A chat of ``turns`` turns through the ingress; the worker that answered each turn is SIGKILLed after it."""
    progress = progress or Progress()
    settings = stack.settings
    fleet = ProcessFleet(settings=settings, log_dir=stack.log_dir / "conversation")
    redis = aioredis.from_url(settings.redis_url, decode_responses=True)
    session = f"conv-{uuid.uuid4().hex[:8]}"
    submissions: list[Submission] = []
    served: list[str] = []
    prompt_tokens: list[int] = []
    replies: list[str] = []
    try:
        progress.phase(f"conversation: ingress and {workers} workers")
        await fleet.start_ingress()
        await fleet.start_workers(workers, cost_class=COST_CLASS)
        await fleet.wait_owned(settings.cost_class(COST_CLASS).partitions)
        started = time.monotonic()
        counts: dict[str, int] = {}
        progress.phase(f"conversation: {turns} turns, the answering worker killed after each", total=turns)
        async with httpx.AsyncClient(base_url=fleet.url, timeout=30) as http:
            for n in range(1, turns + 1):
                body = {
                    "request_id": f"{session}-t{n}",
                    "session_id": session,
                    "messages": [{"role": "user", "content": f"Turn {n}: what goes out to table {n}?"}],
                    "max_new_tokens": 8,
                    "temperature": 0,
                    "ignore_eos": True,
                    "cost_class": COST_CLASS,
                }
                sub = await post_request(http, body)
                submissions.append(sub)
                if not sub.acknowledged or await wait_finals(redis, settings, [sub], timeout_s=TURN_TIMEOUT_S):
                    break  # not acknowledged, or no final: the tally reports it
                answer, done_tokens = await clean_answer(redis, settings.names.stream_key(session), sub.request_id)
                replies.append(answer)
                prompt_tokens.append(done_tokens)
                worker = await served_by(http, fleet.live_workers, counts)
                served.append(worker.name if worker is not None else "?")
                progress.advance()
                if worker is not None and n < turns:
                    fleet.signal_worker(worker, signal.SIGKILL)
                    await fleet.wait_exit(worker, timeout_s=10)
                    fleet.launch_worker(cost_class=COST_CLASS)
            stored = (await http.get(f"/v1/sessions/{session}")).json()
        wall_s = time.monotonic() - started
        verdicts = await read_streams(redis, settings, [session])
        fault = {
            "served_by": served,
            "prompt_tokens": prompt_tokens,
            "replies": replies,
            "stored_turns": stored.get("turns"),
            "stored_messages": stored.get("messages", []),
        }
        return Report("conversation", tally(submissions, verdicts, wall_s=wall_s), fault, committed=True)
    finally:
        await redis.aclose()
        await fleet.close()


async def clean_answer(redis: aioredis.Redis, key: str, request_id: str) -> tuple[str, int]:
    """The reply a reader keeps for ``request_id`` (partial attempts dropped) and its prompt's token count."""
    entries = cast(list[tuple[str, dict[str, str]]], await redis.xrange(key))
    attempts, answer = AttemptFilter(), Answer()
    for _, fields in entries:
        event = parse_event(fields)
        if event.request_id == request_id:
            answer.add(event, attempts.judge(event))
    prompt: Any = getattr(answer.final, "prompt_tokens", -1)
    return "".join(answer.text), int(prompt)
