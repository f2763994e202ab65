"""A prompt per cost class, sent through the ingress, tokens printed as they stream back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from rich.console import Console
from rich.live import Live
from rich.table import Table

from producer.client import BrigadeClient

console = Console()

PROMPTS = {
    "small": "Tell me a short story about a kitchen.",
    "medium": "Explain, step by step, how a busy restaurant kitchen keeps orders moving.",
    "large": "Write a long essay about brigades, stations, tickets and the pass in a restaurant kitchen.",
}
COLOURS = ("cyan", "magenta", "yellow", "green", "blue")


@dataclass
class DemoResult:
    cost_class: str
    request_id: str = ""
    text: list[str] = field(default_factory=list)
    first_token_s: float | None = None
    total_s: float = 0.0
    outcome: str = "pending"
    tokens: int = 0


def _live_view(live: dict[str, DemoResult]) -> Table:
    table = Table(title="tokens as they stream back", expand=True)
    table.add_column("class", width=8)
    table.add_column("text")
    for name, r in live.items():
        table.add_row(name, "".join(r.text) + ("" if r.outcome != "pending" else "▌"))
    return table


async def _one(
    client: BrigadeClient, cost_class: str, colour: str, max_new_tokens: int, live: dict[str, DemoResult]
) -> DemoResult:
    result = live[cost_class] = DemoResult(cost_class=cost_class)
    t0 = time.monotonic()
    prompt = PROMPTS.get(cost_class, PROMPTS["small"])
    sub = await client.submit(prompt, cost_class=cost_class, max_new_tokens=max_new_tokens, temperature=0.8, seed=7)
    result.request_id = sub.request_id
    async for event in client.stream(sub.session_id, request_id=sub.request_id):
        if event.type == "token":
            if result.first_token_s is None:
                result.first_token_s = time.monotonic() - t0
            result.text.append(event.text)
            if not console.is_terminal:  # a terminal watches the live table instead
                console.print(f"[{colour}]{cost_class:>6}[/] │ {event.text!r}", highlight=False)
        elif event.type == "done":
            result.outcome = f"done ({event.finish_reason})"
            result.tokens = event.completion_tokens
        else:
            result.outcome = f"error {event.code}: {event.message}"
    result.total_s = time.monotonic() - t0
    return result


async def run_demo(url: str, *, classes: Sequence[str], max_new_tokens: int) -> bool:
    """True when every class answered with a ``done``."""
    console.print(f"[bold]demo[/]: one prompt per class {', '.join(classes)} → {url}")
    live: dict[str, DemoResult] = {}
    async with BrigadeClient(url) as client:
        jobs = [
            asyncio.create_task(_one(client, c, COLOURS[i % len(COLOURS)], max_new_tokens, live))
            for i, c in enumerate(classes)
        ]
        if console.is_terminal:
            with Live(_live_view(live), console=console, refresh_per_second=12) as view:
                while not all(j.done() for j in jobs):
                    await asyncio.wait(jobs, timeout=0.08)
                    view.update(_live_view(live))
        results = await asyncio.gather(*jobs)
    table = Table(title="demo results")
    for col in ("class", "outcome", "tokens", "first token", "total", "text"):
        table.add_column(col)
    for r in results:
        ttft = f"{r.first_token_s * 1000:.0f} ms" if r.first_token_s is not None else "-"
        text = "".join(r.text)
        table.add_row(
            r.cost_class,
            r.outcome,
            str(r.tokens),
            ttft,
            f"{r.total_s * 1000:.0f} ms",
            text[:60] + "…" * (len(text) > 60),
        )
    console.print(table)
    return all(r.outcome.startswith("done") for r in results)
