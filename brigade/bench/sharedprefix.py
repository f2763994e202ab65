"""A system prompt shared by new conversations: its KV cache kept once for all of them, against computed by each.

``requests`` new conversations, each its own session, go through the ingress one at a time; each opens with the
same system message (``system_words`` long) and its own user message (``message_words``), and gets ``new_tokens``
greedy tokens. Sent twice, to a worker with ``BRIGADE_SHARED_PREFIX_CACHE`` on and to one with it off (each its
own fleet and engine, so neither finds the other's cache). With it on, the first conversation leaves nothing, the
second sees that the first started the same way and keeps the shared blocks, and every later one reads them: the
figure is each conversation's time to first token (submit → the step that made it), in arrival order.
"""

from __future__ import annotations

import statistics
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from itertools import cycle, islice
from typing import Any

import httpx
import redis.asyncio as aioredis

from brigade.bench.engine_loop import bench_prompt
from brigade.bench.multiturn import prefill_fleet_settings, timed_turn
from brigade.inprocess import fleet
from schemas.settings import Settings

KITCHEN_RULES = (
    "You are the expediter of a busy restaurant kitchen. You read every ticket as it prints, call it to the "
    "stations that cook it, and time the courses so that every plate of a table reaches the pass together. "
)


@dataclass(frozen=True, slots=True)
class SharedPrefixConfig:
    requests: int = 8
    system_words: int = 300
    message_words: int = 20
    new_tokens: int = 8
    ort_allow_spinning: bool = False  # as in the multi-turn figure: the worker shares two cores

    @classmethod
    def quick(cls) -> SharedPrefixConfig:
        return cls(requests=4, system_words=120, message_words=12, new_tokens=4, ort_allow_spinning=True)


@dataclass(frozen=True, slots=True)
class SharedPrefixResult:
    model: str
    config: SharedPrefixConfig
    shared_ttft_ms: list[float]  # per conversation, in arrival order: the system prompt's cache kept
    computed_ttft_ms: list[float]  # the same, with the shared-prefix cache off
    prompt_tokens: list[int]
    cached_tokens: list[int]  # per conversation, on the shared side (its done event's)

    @property
    def speedup(self) -> float:
        """Median time to first token of the conversations after the second (those that can read the kept
        prefix), computed over shared."""
        after = slice(2, None)
        return statistics.median(self.computed_ttft_ms[after]) / statistics.median(self.shared_ttft_ms[after])


async def _side(
    base: Settings, config: SharedPrefixConfig, *, shared: bool, on_request: Callable[[], None] | None
) -> tuple[list[float], list[int], list[int]]:
    tag = uuid.uuid4().hex[:8]
    settings = await prefill_fleet_settings(
        base, namespace=f"prefix{tag}", ort_allow_spinning=config.ort_allow_spinning, shared_prefix_cache=shared
    )
    system = {"role": "system", "content": " ".join(islice(cycle(KITCHEN_RULES.split()), config.system_words))}
    common = {"max_new_tokens": config.new_tokens, "temperature": 0, "ignore_eos": True, "cost_class": "small"}
    ttft: list[float] = []
    prompts: list[int] = []
    cached: list[int] = []
    redis = aioredis.from_url(settings.redis_url, decode_responses=True)
    try:
        async with (
            fleet(settings, classes=["small"]) as f,
            httpx.AsyncClient(base_url=f.url, timeout=600) as http,
        ):
            await timed_turn(http, redis, settings, {"prompt": "warm up", **common})  # joined and warm before timing
            for i in range(config.requests):
                ask = {"role": "user", "content": f"Ticket {i}: " + bench_prompt(i, words=config.message_words)}
                body = {"session_id": f"{tag}-c{i}", "messages": [system, ask], **common}
                ms, done, _ = await timed_turn(http, redis, settings, body)
                ttft.append(ms)
                prompts.append(done.prompt_tokens)
                cached.append(done.cached_tokens or 0)
                if on_request is not None:
                    on_request()
    finally:
        await redis.aclose()
    return ttft, prompts, cached


async def run_shared_prefix(
    base: Settings, config: SharedPrefixConfig, *, on_request: Callable[[], None] | None = None
) -> SharedPrefixResult:
    shared, prompts, cached = await _side(base, config, shared=True, on_request=on_request)
    computed, prompts_off, _ = await _side(base, config, shared=False, on_request=on_request)
    if prompts != prompts_off:
        raise RuntimeError(f"the two sides rendered different prompts: {prompts} and {prompts_off} tokens")
    return SharedPrefixResult(
        model=base.model,
        config=config,
        shared_ttft_ms=shared,
        computed_ttft_ms=computed,
        prompt_tokens=prompts,
        cached_tokens=cached,
    )


def shared_prefix_json(result: SharedPrefixResult) -> dict[str, Any]:
    return {**asdict(result), "speedup": result.speedup}


def shared_prefix_line(result: SharedPrefixResult) -> str:
    cfg = result.config
    after = slice(2, None)
    return (
        f"shared system prompt on {result.model}: new conversations after the second had their first token in "
        f"{statistics.median(result.shared_ttft_ms[after]):.0f} ms with its KV cache kept against "
        f"{statistics.median(result.computed_ttft_ms[after]):.0f} ms computed by each: [bold]{result.speedup:.1f}×[/]; "
        f"{statistics.median(result.cached_tokens[after]):.0f} of {statistics.median(result.prompt_tokens):.0f} "
        f"prompt tokens from the cache ({cfg.requests} conversations, a {cfg.system_words}-word system prompt, "
        f"{cfg.message_words}-word messages)"
    )
