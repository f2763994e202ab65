"""Closed-loop load: senders that each wait for their answer before sending again, in or out of process.

The HTTP side of the ingress figure runs its clients in a child process pinned to another CPU, as a real
load generator would be: a Python client's own per-request work is of the same order as the ingress's, and
on the ingress's core it would be charged to the ingress. The clients are aiohttp's: httpx spent about three
times the ingress's CPU per single POST, so with it the single-request figure measured the load generator
(its core saturated, the ingress's not).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import queue
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiohttp

from brigade.bench.pipeline import Job, make_jobs

Send = Callable[[int, Sequence[Job]], Awaitable[int]]  # (sender index, jobs) -> how many were accepted


@dataclass(frozen=True, slots=True)
class ThroughputResult:
    sent: int
    accepted: int
    seconds: float

    @property
    def accepted_per_s(self) -> float:
        return self.accepted / self.seconds if self.seconds > 0 else 0.0


def chunks_of_work(n: int, workers: int) -> list[int]:
    """Split ``n`` requests over ``workers`` closed-loop clients as evenly as possible (first ones get more)."""
    if workers < 1:
        raise ValueError("workers must be >= 1")
    base, extra = divmod(n, workers)
    return [base + (1 if i < extra else 0) for i in range(min(workers, n))] if n else []


async def closed_loop(jobs: Sequence[Job], workers: int, send: Send, *, per_send: int = 1) -> ThroughputResult:
    """``workers`` senders, each sending ``per_send`` jobs at a time and waiting for the answer."""
    groups = iter([jobs[i : i + per_send] for i in range(0, len(jobs), per_send)])
    accepted = 0

    async def worker(i: int, n: int) -> None:
        nonlocal accepted
        for _ in range(n):
            group = next(groups)
            n_ok = await send(i, group)  # awaited first: ``accepted += await ...`` reads ``accepted`` too early
            accepted += n_ok

    t0 = time.perf_counter()
    n_groups = -(-len(jobs) // per_send)
    await asyncio.gather(*(worker(i, n) for i, n in enumerate(chunks_of_work(n_groups, workers))))
    return ThroughputResult(sent=len(jobs), accepted=accepted, seconds=time.perf_counter() - t0)


@dataclass(frozen=True, slots=True)
class HttpLoad:
    """What the child process sends: ``requests`` (after ``warmup``) in POSTs of ``batch``, ``posters`` at once."""

    url: str
    requests: int
    warmup: int
    posters: int
    batch: int
    prompt_words: int
    tag: str
    cpu: int | None  # pin the child here (None: wherever the OS puts it)


async def _post_all(load: HttpLoad) -> ThroughputResult:
    # One session (one keep-alive connection) per sender: a shared pool spends CPU assigning 32+ concurrent
    # requests to connections, and that is the load generator's cost, not the ingress's.
    timeout = aiohttp.ClientTimeout(total=30)
    headers = {"content-type": "application/json"}
    path = "/v1/requests" if load.batch == 1 else "/v1/requests/batch"
    async with contextlib.AsyncExitStack() as stack:
        sessions = [
            await stack.enter_async_context(
                aiohttp.ClientSession(load.url, connector=aiohttp.TCPConnector(limit=1), timeout=timeout)
            )
            for _ in range(load.posters)
        ]

        def encode(group: Sequence[Job]) -> bytes:
            body = group[0].body if load.batch == 1 else {"requests": [j.body for j in group]}
            return json.dumps(body).encode()

        async def send(i: int, group: Sequence[Job]) -> int:
            async with sessions[i].post(path, data=encode(group), headers=headers) as resp:
                answer = await resp.read()
            if load.batch == 1:
                return 1 if resp.status == 202 else 0
            return int(json.loads(answer).get("accepted", 0)) if resp.status in (202, 207) else 0

        kw = {"prompt_words": load.prompt_words, "new_tokens": 8}
        await closed_loop(make_jobs(load.warmup, tag=f"{load.tag}w", **kw), load.posters, send, per_send=load.batch)
        jobs = make_jobs(load.requests, tag=load.tag, **kw)
        return await closed_loop(jobs, load.posters, send, per_send=load.batch)


def _child(load: HttpLoad, results: multiprocessing.Queue[ThroughputResult | str]) -> None:
    try:
        if load.cpu is not None and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {load.cpu})
        results.put(asyncio.run(_post_all(load)))
    except BaseException as exc:  # the parent must hear about it rather than wait out its deadline
        results.put(f"load generator failed: {exc!r}")


async def http_load(load: HttpLoad, *, timeout_s: float = 600) -> ThroughputResult:
    """Run ``load`` in a child process; the caller's event loop stays free to serve it meanwhile."""
    ctx = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[ThroughputResult | str] = ctx.Queue()
    child = ctx.Process(target=_child, args=(load, results), name="brigade-loadgen", daemon=True)
    child.start()
    deadline = time.monotonic() + timeout_s
    loop = asyncio.get_running_loop()
    try:
        while True:
            try:
                answer = await loop.run_in_executor(None, lambda: results.get(timeout=0.5))
                break
            except queue.Empty:
                if not child.is_alive():
                    raise RuntimeError(f"load generator exited with code {child.exitcode}") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"load generator gave no answer in {timeout_s}s") from None
    finally:
        await loop.run_in_executor(None, child.join, 5)
        if child.is_alive():
            child.kill()
    if isinstance(answer, str):
        raise RuntimeError(answer)
    return answer
