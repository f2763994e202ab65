"""Multi-turn chat: a session's turns reusing the last turn's KV cache, against the same conversation sent whole.

``sessions`` conversations of ``turns`` turns each go through the ingress one turn at a time (each user message
``message_words`` long, each reply ``new_tokens`` greedy tokens), first as brigade sessions (each turn sends only
its new message; the worker keeps the finished turn's KV cache for the next), then as a client of a stateless
API sends them: the whole conversation so far, the first side's replies included, with ``trim_history: false``
and a fresh session per call, which keeps no cache; then the same with a ``prompt_cache_key`` per conversation,
as an OpenAI caller who sets one sends them (the worker keeps each call's cache for the next). All sides render
the same prompts, so what differs is the prefill: the figure is each turn's time to first token (submit → the
step that made it), per turn number.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import redis.asyncio as aioredis

from brigade.bench.engine_loop import bench_prompt
from brigade.bench.pipeline import isolated_settings
from brigade.inprocess import fleet, read_until_final
from brigade.top import ClassSample, parse_metrics
from consumer.worker import EngineFactory
from producer.topics import ensure_topics
from schemas.events import DoneEvent, TokenEvent
from schemas.settings import Settings


@dataclass(frozen=True, slots=True)
class MultiturnConfig:
    sessions: int = 2
    turns: int = 6
    message_words: int = 40
    new_tokens: int = 24
    # off, as in the latency figure: the worker shares two cores with the ingress, the broker and Redis. The quick
    # run keeps the other figures' engine (spinning on) rather than load and warm another
    ort_allow_spinning: bool = False

    @classmethod
    def quick(cls) -> MultiturnConfig:
        return cls(sessions=1, turns=3, message_words=24, new_tokens=8, ort_allow_spinning=True)


@dataclass(frozen=True, slots=True)
class MultiturnResult:
    model: str
    config: MultiturnConfig
    session_ttft_ms: list[list[float]]  # [turn][session]: brigade sessions, the cache kept
    whole_ttft_ms: list[list[float]]  # [turn][session]: the conversation sent whole each time
    keyed_ttft_ms: list[list[float]]  # [turn][session]: sent whole with a prompt_cache_key per conversation
    prompt_tokens: list[float]  # per turn, median over sessions
    cache_hit_share: float  # the worker's prefix cache hits / queries over the session side
    keyed_hit_share: float  # likewise over the prompt_cache_key side

    def medians(self, side: list[list[float]]) -> list[float]:
        return [statistics.median(turn) for turn in side]

    @property
    def last_turn_speedup(self) -> float:
        return self.medians(self.whole_ttft_ms)[-1] / self.medians(self.session_ttft_ms)[-1]

    @property
    def keyed_last_turn_speedup(self) -> float:
        return self.medians(self.whole_ttft_ms)[-1] / self.medians(self.keyed_ttft_ms)[-1]


async def timed_turn(
    http: httpx.AsyncClient, redis: aioredis.Redis, settings: Settings, body: dict[str, Any]
) -> tuple[float, DoneEvent, str]:
    """Submit one chat turn; its time to first token (ms), its ``done``, and the reply's text."""
    sent_ms = time.time() * 1000
    ack = await http.post("/v1/requests", json=body)
    ack.raise_for_status()
    rid, session = ack.json()["request_id"], ack.json()["session_id"]
    events = (await read_until_final(redis, settings.names.stream_key(session), {rid}, timeout_s=600))[rid]
    done = events[-1]
    if not isinstance(done, DoneEvent) or done.first_token_at_ms is None:
        raise RuntimeError(f"turn {rid} ended without an answer: {done!r}")
    reply = "".join(e.text for e in events if isinstance(e, TokenEvent)) + done.text
    return done.first_token_at_ms - sent_ms, done, reply


async def prefill_fleet_settings(
    base: Settings, *, namespace: str, ort_allow_spinning: bool, shared_prefix_cache: bool
) -> Settings:
    """Settings for a figure about the time to first token of requests sent one at a time: every request to the
    one worker whatever its length, and fetches that do not wait out the dev broker's hold on them (the latency
    figure's reason), so that the time to first token is the prefill's, which is what such a figure compares.
    Its topics are created."""
    settings = isolated_settings(base, namespace=namespace, batch_size=1, queue_size=4)
    update = {
        "class_max_cost": (10**9,) * (len(base.classes) - 1),
        "fetch_max_wait_ms": 5,
        "ort_allow_spinning": ort_allow_spinning,
        "shared_prefix_cache": shared_prefix_cache,
    }
    settings = settings.model_copy(update=update)
    await ensure_topics(settings)
    return settings


async def run_multiturn(
    base: Settings,
    config: MultiturnConfig,
    *,
    on_turn: Callable[[], None] | None = None,
    engines: EngineFactory | None = None,
) -> MultiturnResult:
    tag = uuid.uuid4().hex[:8]
    # the side sent whole is the one with no cache: no prefix shared between requests either
    settings = await prefill_fleet_settings(
        base, namespace=f"turns{tag}", ort_allow_spinning=config.ort_allow_spinning, shared_prefix_cache=False
    )
    common = {"max_new_tokens": config.new_tokens, "temperature": 0, "ignore_eos": True, "cost_class": "small"}
    messages = [
        [
            {"role": "user", "content": f"Turn {t}: " + bench_prompt(100 * s + t, words=config.message_words)}
            for t in range(config.turns)
        ]
        for s in range(config.sessions)
    ]
    session_ttft, prompts = _per_turn(config), _per_turn(config)
    redis = aioredis.from_url(settings.redis_url, decode_responses=True)
    try:
        async with (
            fleet(settings, classes=["small"], engines=engines) as f,
            httpx.AsyncClient(base_url=f.url, timeout=600) as http,
        ):
            metrics_url = f"http://127.0.0.1:{f.worker_ports[0]}/metrics"
            await timed_turn(http, redis, settings, {"prompt": "warm up", **common})  # joined and warm before timing
            before = parse_metrics((await http.get(metrics_url)).text)["small"]
            replies: list[list[str]] = []
            for s, conversation in enumerate(messages):
                said: list[str] = []
                for t, message in enumerate(conversation):
                    body = {"session_id": f"{tag}-s{s}", "messages": [message], **common}
                    session_ttft[t][s], done, reply = await timed_turn(http, redis, settings, body)
                    prompts[t][s] = done.prompt_tokens
                    said.append(reply)
                    if on_turn is not None:
                        on_turn()
                replies.append(said)
            after = parse_metrics((await http.get(metrics_url)).text)["small"]

            async def whole(key: str | None) -> list[list[float]]:
                """Each conversation sent whole every turn, with the session side's replies, as a stateless API's
                client sends it; ``key``: the prompt_cache_key's prefix, none for a fresh session per call."""
                ttft = _per_turn(config)
                for s, conversation in enumerate(messages):
                    history: list[dict[str, str]] = []
                    keyed = {} if key is None else {"prompt_cache_key": f"{key}-{s}"}
                    for t, message in enumerate(conversation):
                        history.append(message)
                        body = {"messages": list(history), "trim_history": False, **keyed, **common}
                        ttft[t][s], done, _ = await timed_turn(http, redis, settings, body)
                        if done.prompt_tokens != prompts[t][s]:
                            raise RuntimeError(
                                f"turn {t} rendered {done.prompt_tokens} tokens whole, {prompts[t][s]} in its session"
                            )
                        # stripped, as the session stores a reply: both sides then render the same prompt
                        history.append({"role": "assistant", "content": replies[s][t].strip()})
                        if on_turn is not None:
                            on_turn()
                return ttft

            whole_ttft = await whole(None)
            keyed_ttft = await whole(f"{tag}-conversation")
            keyed = parse_metrics((await http.get(metrics_url)).text)["small"]
    finally:
        await redis.aclose()
    return MultiturnResult(
        model=settings.model,
        config=config,
        session_ttft_ms=session_ttft,
        whole_ttft_ms=whole_ttft,
        keyed_ttft_ms=keyed_ttft,
        prompt_tokens=[statistics.median(p) for p in prompts],
        cache_hit_share=_hit_share(before, after),
        keyed_hit_share=_hit_share(after, keyed),
    )


def _per_turn(config: MultiturnConfig) -> list[list[float]]:
    return [[0.0] * config.sessions for _ in range(config.turns)]


def _hit_share(before: ClassSample, after: ClassSample) -> float:
    queried, hits = after.cache_queries - before.cache_queries, after.cache_hits - before.cache_hits
    return hits / queried if queried else 0.0


def multiturn_json(result: MultiturnResult) -> dict[str, Any]:
    return {
        "model": result.model,
        "config": asdict(result.config),
        "prompt_tokens_per_turn": result.prompt_tokens,
        "session_ttft_ms_per_turn": result.medians(result.session_ttft_ms),
        "whole_ttft_ms_per_turn": result.medians(result.whole_ttft_ms),
        "keyed_ttft_ms_per_turn": result.medians(result.keyed_ttft_ms),
        "session_ttft_ms": result.session_ttft_ms,
        "whole_ttft_ms": result.whole_ttft_ms,
        "keyed_ttft_ms": result.keyed_ttft_ms,
        "cache_hit_share": result.cache_hit_share,
        "keyed_hit_share": result.keyed_hit_share,
        "last_turn_speedup": result.last_turn_speedup,
        "keyed_last_turn_speedup": result.keyed_last_turn_speedup,
    }


def multiturn_line(result: MultiturnResult) -> str:
    session, whole = result.medians(result.session_ttft_ms), result.medians(result.whole_ttft_ms)
    keyed = result.medians(result.keyed_ttft_ms)
    cfg = result.config
    return (
        f"multi-turn chat on {result.model}: turn {cfg.turns} ({result.prompt_tokens[-1]:.0f} prompt tokens) had its "
        f"first token in {session[-1]:.0f} ms as a session turn (its last turn's KV cache kept) against "
        f"{whole[-1]:.0f} ms sent whole: [bold]{result.last_turn_speedup:.1f}×[/]; sent whole with a "
        f"prompt_cache_key, {keyed[-1]:.0f} ms: [bold]{result.keyed_last_turn_speedup:.1f}×[/]; "
        f"{result.cache_hit_share:.0%} and {result.keyed_hit_share:.0%} of their prompt tokens came from the cache "
        f"({cfg.sessions} conversation(s) of {cfg.turns} turns, {cfg.message_words}-word messages, "
        f"{cfg.new_tokens}-token replies)"
    )
