"""The load behind the snapshot: closed-loop clients per cost class, mixed lengths, and one burst.

Every panel needs something to show: TTFT and time per token need finished requests of every class,
tokens/s needs steady decoding, lag and queue time need a backlog, batch size needs several requests at
once. So clients join one by one over the first quarter (a ramp), each sends its next request when the
last one's answer is in (closed loop, through the ingress and the Python client like any user), and
halfway through a burst is published all at once (open loop) so lag and queue wait rise and drain. One
request in ten is given up on after 50 ms, as impatient callers do (the client then cancels it), so the outcome
panels show cancels beside answers. Every other client is a conversation (chat turns on one session, each
sending only its new message), so the prefix-cache panel has turns that reuse their session's cache; and every
request opens as an application's would, with one instruction (the conversations' system message, the stateless
prompts' preamble), which the workers keep once as a shared prefix.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from producer.client import BrigadeClient, BrigadeError, Overloaded, Submitted
from schemas.events import DoneEvent, ErrorEvent

CANCEL_SHARE = 0.1  # of the closed-loop requests, those whose caller gives up after CANCEL_AFTER_S
CANCEL_AFTER_S = 0.05
_WORDS = ("the", "kitchen", "order", "rail", "chef", "station", "plate", "pass", "ticket", "soup", "bread", "sauce")
INSTRUCTION = (
    "You are the expediter of a busy restaurant kitchen. Read each ticket as it prints, call it to the stations "
    "that cook it, and time the courses so that every plate of a table reaches the pass together, hot and checked."
)


@dataclass(frozen=True)
class ClassLoad:
    """One cost class's share of the load."""

    cost_class: str
    clients: int  # closed-loop clients, each with one request in flight
    new_tokens: tuple[int, int]  # max_new_tokens drawn uniformly from this range (ignore_eos: exactly that many)
    prompt_words: tuple[int, int]
    burst: int  # requests published at once halfway through


@dataclass(frozen=True)
class LoadPlan:
    duration_s: float
    classes: tuple[ClassLoad, ...]
    seed: int = 0

    @property
    def ramp_s(self) -> float:
        return self.duration_s / 4

    @property
    def burst_at_s(self) -> float:
        return self.duration_s / 2


def default_plan(classes: Sequence[str], *, duration_s: float, clients: int, seed: int = 0) -> LoadPlan:
    """``clients`` spread cheapest-first (half, a third, the rest…), answers growing with the class."""
    shares = [max(1, round(clients / (2 + i))) for i in range(len(classes))]
    loads = []
    for i, (name, n) in enumerate(zip(classes, shares, strict=True)):
        low = 8 * 4**i
        loads.append(
            ClassLoad(
                cost_class=name,
                clients=n,
                new_tokens=(low, low * 5 // 2),
                prompt_words=(4 * (i + 1), 16 * (i + 1)),
                burst=max(4, 8 * n),  # past a worker's batch limit for the cheap class: requests wait
            )
        )
    return LoadPlan(duration_s=duration_s, classes=tuple(loads), seed=seed)


@dataclass
class LoadResult:
    """What the load did, per class: answers read back, errors, 429s."""

    started_at: float  # unix time the first request went out
    ended_at: float = 0.0  # unix time the last answer (burst included) was read
    done: Counter[str] = field(default_factory=Counter)
    tokens: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    throttled: Counter[str] = field(default_factory=Counter)
    given_up: Counter[str] = field(default_factory=Counter)  # requests whose caller stopped waiting (cancelled)


def _prompt(rng: random.Random, words: tuple[int, int]) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(*words)))


def _ticket(text: str) -> str:
    """A stateless prompt as an application sends it: its instruction, then the request's own text."""
    return f"{INSTRUCTION}\n\nTicket: {text}"


async def _client_loop(
    client: BrigadeClient,
    load: ClassLoad,
    *,
    rng: random.Random,
    start_in: float,
    stop_at: float,
    result: LoadResult,
    session_id: str | None = None,
) -> None:
    """``session_id``: a conversation, each request a chat turn of it; else stateless prompts."""
    await asyncio.sleep(start_in)  # the ramp: this client joins later than the one before
    while time.monotonic() < stop_at:
        impatient = rng.random() < CANCEL_SHARE
        text = _prompt(rng, load.prompt_words)
        asked = (
            {"messages": [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": text}]}
            if session_id is not None
            else {"prompt": _ticket(text)}
        )
        try:
            answer = await client.generate(
                **asked,
                session_id=session_id,
                max_new_tokens=rng.randint(*load.new_tokens),
                cost_class=load.cost_class,
                ignore_eos=True,
                timeout_s=CANCEL_AFTER_S if impatient else None,
            )
        except TimeoutError:
            result.given_up[load.cost_class] += 1
            continue
        except Overloaded as exc:
            result.throttled[load.cost_class] += 1
            await asyncio.sleep(exc.retry_after or 1.0)
            continue
        except BrigadeError:
            result.errors[load.cost_class] += 1
            continue
        result.done[load.cost_class] += 1
        result.tokens[load.cost_class] += answer.completion_tokens


async def _burst(client: BrigadeClient, load: ClassLoad, *, rng: random.Random, result: LoadResult) -> list[Submitted]:
    async def one() -> Submitted | None:
        try:
            return await client.submit(
                _ticket(_prompt(rng, load.prompt_words)),
                max_new_tokens=rng.randint(*load.new_tokens),
                cost_class=load.cost_class,
                ignore_eos=True,
            )
        except Overloaded:
            result.throttled[load.cost_class] += 1
        except BrigadeError:
            result.errors[load.cost_class] += 1
        return None

    subs = await asyncio.gather(*(one() for _ in range(load.burst)))
    return [s for s in subs if s is not None]


async def _read_back(client: BrigadeClient, subs: list[tuple[str, Submitted]], result: LoadResult) -> None:
    """Read the burst's answers (a finished stream replays at once), a few at a time."""
    gate = asyncio.Semaphore(8)

    async def one(cls: str, sub: Submitted) -> None:
        async with gate:
            async for event in client.stream(sub.session_id, request_id=sub.request_id):
                if isinstance(event, DoneEvent):
                    result.done[cls] += 1
                    result.tokens[cls] += event.completion_tokens
                elif isinstance(event, ErrorEvent):
                    result.errors[cls] += 1

    await asyncio.gather(*(one(cls, sub) for cls, sub in subs))


async def run_load(ingress_url: str, plan: LoadPlan, *, drain_timeout_s: float = 300.0) -> LoadResult:
    """Drive ``plan`` against the ingress with a progress bar; returns once every answer is read back."""
    rng = random.Random(plan.seed)
    result = LoadResult(started_at=time.time())
    t0 = time.monotonic()
    stop_at = t0 + plan.duration_s
    loops: list[asyncio.Task[None]] = []
    async with BrigadeClient(ingress_url, timeout=60.0) as client:
        for load in plan.classes:
            for i in range(load.clients):
                start_in = plan.ramp_s * i / load.clients
                child = random.Random(rng.random())
                session = f"conversation-{load.cost_class}-{i}-{plan.seed}" if i % 2 == 0 else None
                loop = _client_loop(
                    client, load, rng=child, start_in=start_in, stop_at=stop_at, result=result, session_id=session
                )
                loops.append(asyncio.create_task(loop))
        burst: list[tuple[str, Submitted]] = []
        with Progress(
            TextColumn("[bold]load[/]"), BarColumn(), TextColumn("{task.description}"), TimeRemainingColumn()
        ) as progress:
            task = progress.add_task("", total=plan.duration_s)
            while (now := time.monotonic()) < stop_at:
                if not burst and now - t0 >= plan.burst_at_s:
                    for load in plan.classes:
                        burst += [(load.cost_class, s) for s in await _burst(client, load, rng=rng, result=result)]
                done = ", ".join(f"{c.cost_class} {result.done[c.cost_class]}" for c in plan.classes)
                progress.update(task, completed=now - t0, description=f"answers: {done}")
                await asyncio.sleep(0.5)
            progress.update(task, completed=plan.duration_s, description="reading the last answers")
            async with asyncio.timeout(drain_timeout_s):
                await asyncio.gather(*loops)
                await _read_back(client, burst, result)
    result.ended_at = time.time()
    return result
