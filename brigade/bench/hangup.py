"""Abandoned streams: what a client that hangs up mid-answer still costs the fleet.

``clients`` streamed ``/v1/chat/completions`` calls at once, each asking for ``max_tokens`` (``ignore_eos``, so
none ends early) and hanging up after ``chunks`` SSE chunks; then the worker's ``/metrics`` is polled until it
runs nothing. The figure is the share of the asked-for tokens the worker generated anyway: 1.0 is a worker that
finishes every abandoned answer (brigade before it cancelled them; vLLM aborts them), and what remains is the
tokens the clients read plus the steps decoded while the hang-up travelled (client → ingress → Redis mark →
the next step's write).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from brigade.bench.pipeline import isolated_settings
from brigade.inprocess import fleet
from consumer.worker import EngineFactory
from producer.topics import ensure_topics
from schemas.events import FinishReason
from schemas.settings import Settings

POLL_S = 0.01


@dataclass(frozen=True, slots=True)
class HangupConfig:
    model: str = "builtin:tiny"
    clients: int = 16
    max_tokens: int = 400
    chunks: int = 10  # SSE chunks each client reads (the first carries only the role) before it hangs up

    @classmethod
    def quick(cls) -> HangupConfig:
        return cls(clients=8, max_tokens=200, chunks=5)


@dataclass(frozen=True, slots=True)
class HangupResult:
    config: HangupConfig
    generated: int  # tokens the worker generated for the abandoned calls
    cancelled: int  # of the calls, those the worker ended as cancelled
    busy_after_s: float  # from the last client leaving to the worker running nothing

    @property
    def asked(self) -> int:
        return self.config.clients * self.config.max_tokens

    @property
    def share(self) -> float:
        return self.generated / self.asked


CANCELLED = FinishReason.CANCELLED.value


def _worker_totals(text: str) -> dict[str, float]:
    """The worker's figures this one reads, summed over their labels; ``cancelled``: requests ended so."""
    wanted = {
        "brigade_generation_tokens_total",
        "brigade_e2e_request_latency_seconds_count",
        "brigade_num_requests_running",
    }
    out = dict.fromkeys([*wanted, CANCELLED], 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted:
                out[sample.name] += sample.value
            elif sample.name == "brigade_request_success_total" and sample.labels["finished_reason"] == CANCELLED:
                out[CANCELLED] += sample.value
    return out


async def run_hangup(
    base: Settings,
    config: HangupConfig,
    *,
    on_client: Callable[[], None] | None = None,
    engines: EngineFactory | None = None,
) -> HangupResult:
    tag = uuid.uuid4().hex[:8]
    settings = isolated_settings(base, namespace=f"hangup{tag}", batch_size=config.clients, queue_size=config.clients)
    settings = settings.model_copy(update={"model": config.model})
    await ensure_topics(settings)
    ask = [{"role": "user", "content": "Tell the pass everything on the rail."}]
    async with (
        fleet(settings, classes=["small"], engines=engines) as f,
        httpx.AsyncClient(base_url=f.url, timeout=120) as http,
    ):
        metrics_url = f"http://127.0.0.1:{f.worker_ports[0]}/metrics"
        # One answer read whole first: the worker has joined its group and warmed up before the timed calls.
        warm = await http.post("/v1/chat/completions", json={"model": config.model, "messages": ask, "max_tokens": 4})
        warm.raise_for_status()
        before = _worker_totals((await http.get(metrics_url)).text)
        body = {"model": config.model, "messages": ask, "max_tokens": config.max_tokens, "ignore_eos": True,
                "temperature": 0, "stream": True}  # fmt: skip

        async def hang_up_early() -> None:
            read = 0
            async with http.stream("POST", "/v1/chat/completions", json=body) as resp:
                resp.raise_for_status()
                async for line in resp.aiter_lines():
                    read += line.startswith("data:")
                    if read >= config.chunks:
                        break
            if on_client is not None:
                on_client()

        await asyncio.gather(*(hang_up_early() for _ in range(config.clients)))
        left = time.perf_counter()
        finished = before["brigade_e2e_request_latency_seconds_count"] + config.clients
        while True:
            now = _worker_totals((await http.get(metrics_url)).text)
            if (
                now["brigade_num_requests_running"] == 0
                and now["brigade_e2e_request_latency_seconds_count"] >= finished
            ):
                break
            await asyncio.sleep(POLL_S)
        busy = time.perf_counter() - left
    return HangupResult(
        config=config,
        generated=int(now["brigade_generation_tokens_total"] - before["brigade_generation_tokens_total"]),
        cancelled=int(now[CANCELLED] - before[CANCELLED]),
        busy_after_s=busy,
    )


def hangup_json(result: HangupResult) -> dict[str, Any]:
    return {**asdict(result), "asked": result.asked, "share": result.share}


def hangup_line(result: HangupResult) -> str:
    cfg = result.config
    return (
        f"abandoned streams on {cfg.model}: the worker generated [bold]{result.share:.2f}[/] of the tokens "
        f"{cfg.clients} hung-up calls asked for ({result.generated} of {result.asked}; each client read {cfg.chunks} "
        f"chunks of {cfg.max_tokens} tokens; {result.cancelled} ended cancelled; the worker ran "
        f"{result.busy_after_s:.2f} s after the last client left)"
    )
