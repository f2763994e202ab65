"""``brigade batch``: an OpenAI Batch API input file run through the fleet, its answers written as OpenAI's output.

The input is what OpenAI's Batch API and vLLM's ``run_batch`` take, one request per line::

    {"custom_id": "q1", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "…", "messages": […]}}

Each line goes to the ingress's own OpenAI endpoint, so what a batch line may ask (tools, structured output,
``n``, logprobs…) and how it is refused are exactly an online call's, and the fleet serves it like any other
traffic: requests queue on their class's Kafka topic, KEDA scales the class's workers on that backlog, and
``--priority`` lets interactive traffic go first. Answers are appended to the output as they come (OpenAI's
output is not in input order either: match on ``custom_id``), and a rerun with the same output file sends only
the lines it has no answer for, so an interrupted job resumes where it stopped.

Pure parts (reading and checking the input, shaping an output line) are apart from the HTTP and the files.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

URLS = ("/v1/chat/completions", "/v1/completions")  # what the ingress answers (no embeddings: no such model)
MAX_CUSTOM_ID = 512


class BatchInputError(ValueError):
    """The input file is not a batch brigade can run; the message names the line and the fix. Nothing is sent."""


@dataclass(frozen=True, slots=True)
class BatchLine:
    custom_id: str
    url: str
    body: dict[str, Any]


def read_batch(lines: Iterable[str]) -> list[BatchLine]:
    """Every request of an input file, checked whole before anything is sent: a batch that would stop halfway
    on its tenth-thousandth line is refused at once, naming the line."""
    out: list[BatchLine] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        where = f"line {number}"
        try:
            item = json.loads(raw)
        except ValueError as exc:
            raise BatchInputError(f"{where}: not JSON ({exc}); each line is one request object") from None
        if not isinstance(item, dict):
            raise BatchInputError(f"{where}: a JSON object is expected, with custom_id, method, url and body")
        custom_id, method, url, body = (item.get(k) for k in ("custom_id", "method", "url", "body"))
        if not isinstance(custom_id, str) or not 0 < len(custom_id) <= MAX_CUSTOM_ID:
            raise BatchInputError(f"{where}: custom_id must be a string of 1 to {MAX_CUSTOM_ID} characters")
        if custom_id in seen:
            raise BatchInputError(
                f"{where}: custom_id {custom_id!r} is also line {seen[custom_id]}'s; each request needs its own"
            )
        if method != "POST":
            raise BatchInputError(f'{where}: method must be "POST", not {method!r}')
        if url not in URLS:
            raise BatchInputError(f"{where}: url must be one of {', '.join(URLS)}, not {url!r}")
        if not isinstance(body, dict):
            raise BatchInputError(f"{where}: body must be the endpoint's JSON object")
        if body.get("stream"):
            raise BatchInputError(f"{where}: body.stream must be false or absent: a batch answer is read whole")
        seen[custom_id] = number
        out.append(BatchLine(custom_id, url, body))
    return out


def answered_ids(lines: Iterable[str]) -> set[str]:
    """The custom_ids an earlier run already wrote to the output (a torn last line, from a kill, is not one)."""
    done = set()
    for raw in lines:
        try:
            item = json.loads(raw)
        except ValueError:
            continue
        if isinstance(item, dict) and isinstance(item.get("custom_id"), str):
            done.add(item["custom_id"])
    return done


def unanswered(lines: Sequence[BatchLine], output: Path) -> list[BatchLine]:
    """The lines ``output`` holds no answer for (all of them when it does not exist yet)."""
    if not output.exists():
        return list(lines)
    with output.open(encoding="utf-8") as answers:
        done = answered_ids(answers)
    return [line for line in lines if line.custom_id not in done]


def output_line(line: BatchLine, *, status: int, body: Any, request_id: str | None) -> dict[str, Any]:
    """OpenAI's batch output object for one answered request: the endpoint's status and body, as a call got
    them (an error answer included: it is the request's own outcome, not the batch's)."""
    return {
        "id": f"batch_req_{uuid.uuid4().hex}",
        "custom_id": line.custom_id,
        "response": {"status_code": status, "request_id": request_id, "body": body},
        "error": None,
    }


def failed_line(line: BatchLine, message: str) -> dict[str, Any]:
    """The output object of a request that got no HTTP answer at all (the ingress unreachable after retries)."""
    return {
        "id": f"batch_req_{uuid.uuid4().hex}",
        "custom_id": line.custom_id,
        "response": None,
        "error": {"code": "ingress_unreachable", "message": message},
    }


@dataclass
class BatchTally:
    sent: int = 0
    ok: int = 0  # answered 200
    refused: int = 0  # answered with an HTTP error (the request's own: 4xx, or a 5xx after the retries)
    failed: int = 0  # no answer at all


RETRIED = (429, 503)  # the fleet's "later, please": over a class's backlog, broker or Redis unreachable
ATTEMPTS = 6


async def _ask(http: httpx.AsyncClient, line: BatchLine, body: dict[str, Any]) -> httpx.Response:
    """One request, retried on 429/503 after the ingress's Retry-After (a batch is in no hurry), and on a
    connection error; the last answer is kept."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            resp = await http.post(line.url, json=body)
        except httpx.TransportError:
            if attempt == ATTEMPTS:
                raise
            await asyncio.sleep(min(30.0, 2.0**attempt))
            continue
        if resp.status_code not in RETRIED or attempt == ATTEMPTS:
            return resp
        await asyncio.sleep(min(60.0, float(resp.headers.get("retry-after") or 2.0**attempt)))
    raise AssertionError("unreachable")


async def run_batch(
    ingress_url: str,
    todo: Sequence[BatchLine],
    output: Path,
    *,
    in_flight: int = 64,
    priority: int | None = None,
    on_answer: Callable[[], None] | None = None,
    timeout_s: float = 3600.0,
) -> BatchTally:
    """Send ``todo`` (``unanswered``'s lines), ``in_flight`` at a time (each one a connection held until its
    answer: the backlog the fleet sees), appending each answer to ``output`` as it comes."""
    tally = BatchTally()
    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
    with output.open("a", encoding="utf-8") as out:

        def write(item: dict[str, Any]) -> None:
            out.write(json.dumps(item, ensure_ascii=False) + "\n")
            out.flush()  # each answer is on disk before the next: a kill loses only what was in flight

        async def one(http: httpx.AsyncClient, line: BatchLine) -> None:
            body = line.body if priority is None or "priority" in line.body else {**line.body, "priority": priority}
            tally.sent += 1
            try:
                resp = await _ask(http, line, body)
            except httpx.TransportError as exc:
                tally.failed += 1
                write(failed_line(line, f"no answer from {ingress_url} after {ATTEMPTS} tries: {exc!r}"))
            else:
                try:
                    answer: Any = resp.json()
                except ValueError:
                    answer = resp.text
                request_id = answer.get("id") if isinstance(answer, dict) else None
                tally.ok += resp.status_code == 200
                tally.refused += resp.status_code != 200
                write(output_line(line, status=resp.status_code, body=answer, request_id=request_id))
            if on_answer is not None:
                on_answer()

        async with httpx.AsyncClient(base_url=ingress_url, timeout=timeout_s, limits=limits) as http:
            pending = iter(todo)  # shared by the senders: each takes the next line when its last is answered

            async def sender() -> None:
                for line in pending:
                    await one(http, line)

            await asyncio.gather(*(sender() for _ in range(min(in_flight, len(todo)))))
    return tally
