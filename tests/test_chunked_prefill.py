"""Chunked prefill on builtin:tiny: a long prompt that joins while others decode runs a chunk per step, with a
decode step of the others between chunks, and generates what a whole prefill would."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from brigade.inprocess import AnyEvent, finals, fleet, read_until_final
from brigade.streams import xread
from consumer.engine.interface import GenerationInput, TokenDelta
from consumer.engine.kv_cache import MIN_REUSED_TOKENS
from consumer.engine.onnx_engine import OnnxBatchRun, OnnxEngine, load_engine
from schemas.events import DoneEvent, TokenEvent, parse_event
from schemas.requests import SamplingParams
from schemas.settings import Settings
from tests.test_engine import GREEDY, no_cache_greedy

CHUNK = 16
SCORED = SamplingParams(temperature=0.0, ignore_eos=True, logprobs=0)  # the chosen token's log-probability
KITCHEN = (
    "The chef calls the order and the pass sends the plates out to table four while the brigade works the fish, "
    "the roast and the sauce, and tickets pile up on the rail before the second seating of the night begins."
)


@pytest.fixture(scope="module")
def engine(model_cache_dir: Path) -> Iterator[OnnxEngine]:
    eng = load_engine(  # no KV caches: every prompt here is computed, none is found kept
        Settings(
            model="builtin:tiny",
            model_cache_dir=model_cache_dir,
            device="cpu",
            prefill_chunk_tokens=CHUNK,
            kv_cache_mb=0,
        )
    )
    yield eng
    eng.close()


def long_prompt(engine: OnnxEngine) -> list[int]:
    ids = engine.encode(KITCHEN)
    assert len(ids) > 3 * CHUNK and len(ids) % CHUNK  # several chunks, the last a short one
    return ids


def who_stepped(run: OnnxBatchRun, steps: int) -> list[list[TokenDelta]]:
    return [run.step() for _ in range(steps)]


def first_delta(steps: list[list[TokenDelta]], request_id: str) -> int:
    return next(i for i, deltas in enumerate(steps) if any(d.request_id == request_id for d in deltas))


def test_a_long_joiner_is_prefilled_a_chunk_a_step_with_a_decode_step_of_the_others_between(
    engine: OnnxEngine,
) -> None:
    prompt = long_prompt(engine)
    chunks = -(-len(prompt) // CHUNK)
    run = engine.start([GenerationInput("short", engine.encode("Oui chef"), 40, GREEDY)])
    who_stepped(run, 2)  # its prefill and a decode step: it is running
    run.join([GenerationInput("long", prompt, 6, SCORED)])
    steps = who_stepped(run, 2 * chunks)
    # chunk, decode, chunk, decode, ..., last chunk (the long prompt's first token): the short one never waits
    # for more than one chunk, and the long one's first token comes after every chunk ran once
    assert first_delta(steps, "long") == 2 * chunks - 2
    for i, deltas in enumerate(steps[: 2 * chunks - 2]):
        assert [d.request_id for d in deltas] == ([] if i % 2 == 0 else ["short"])
    assert run.running == 2
    while not run.finished:
        run.step()
    assert run.token_ids("long") == no_cache_greedy(engine, prompt, 6)

    # the log-probabilities of a whole prefill too: a chunk one position off can still pick the same tokens
    alone = engine.start([GenerationInput("long", prompt, 6, SCORED)])  # nothing else running: no chunks
    whole = [d for d in alone.step() if d.request_id == "long"]
    assert whole and whole[0].logprob is not None
    chunked = steps[2 * chunks - 2][-1]
    assert chunked.request_id == "long" and chunked.logprob is not None
    assert chunked.logprob.logprob == pytest.approx(whole[0].logprob.logprob, abs=1e-4)


def test_with_nothing_else_running_a_long_prompt_is_prefilled_at_once(engine: OnnxEngine) -> None:
    prompt = long_prompt(engine)
    run = engine.start([GenerationInput("long", prompt, 3, GREEDY)])
    assert [d.request_id for d in run.step()] == ["long"]
    while not run.finished:
        run.step()
    assert run.token_ids("long") == no_cache_greedy(engine, prompt, 3)


def test_a_prompt_dropped_between_its_chunks_leaves_the_run(engine: OnnxEngine) -> None:
    run = engine.start([GenerationInput("short", engine.encode("Oui chef"), 8, GREEDY)])
    who_stepped(run, 2)
    run.join([GenerationInput("long", long_prompt(engine), 6, GREEDY)])
    assert run.step() == []  # its first chunk
    run.drop(["long"])
    assert run.running == 1
    rest: list[TokenDelta] = []
    while not run.finished:
        rest += run.step()
    assert {d.request_id for d in rest} == {"short"}
    assert len(run.token_ids("short")) == 8


def test_a_sessions_next_turn_runs_its_long_new_part_in_chunks_from_the_cache(model_cache_dir: Path) -> None:
    engine = load_engine(
        Settings(
            model="builtin:tiny",
            model_cache_dir=model_cache_dir,
            device="cpu",
            prefill_chunk_tokens=CHUNK,
            kv_cache_mb=64,
            shared_prefix_cache=False,
        )
    )
    try:
        turn1 = engine.encode("The pass sends the plates out to table four, hot and on time.")
        assert len(turn1) >= MIN_REUSED_TOKENS
        first = engine.start([GenerationInput("t1", turn1, 4, GREEDY, cache_key="s1")])
        while not first.finished:
            first.step()
        fed = [*turn1, *first.token_ids("t1")[:-1]]
        turn2 = [*turn1, *first.token_ids("t1"), *long_prompt(engine)]
        run = engine.start([GenerationInput("short", engine.encode("Oui chef"), 40, GREEDY)])
        who_stepped(run, 2)
        run.join([GenerationInput("t2", turn2, 5, GREEDY, cache_key="s1")])
        steps = who_stepped(run, 2 * (-(-(len(turn2) - len(fed)) // CHUNK)))
        (delta,) = [d for d in steps[-2] if d.request_id == "t2"]
        assert delta.cached_tokens == len(fed)  # the cache's tokens, not the chunks'
        while not run.finished:
            run.step()
        assert run.token_ids("t2") == no_cache_greedy(engine, turn2, 5)
    finally:
        engine.close()


async def test_through_the_worker_a_long_prompt_joins_in_chunks_and_answers_as_if_alone(
    settings: Settings, topics: list[str], redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Continuous batching: the long prompt arrives while another request decodes; its chunk steps answer no
    token (the worker writes nothing for them) and its text is what it gets sent alone, prefilled at once."""
    chunk_steps = 0
    next_chunk = OnnxBatchRun._next_chunk

    def counted(run: OnnxBatchRun) -> list[TokenDelta]:
        nonlocal chunk_steps
        chunk_steps += 1
        return next_chunk(run)

    monkeypatch.setattr(OnnxBatchRun, "_next_chunk", counted)
    update = {"batching": "continuous", "min_join": 1, "prefill_chunk_tokens": CHUNK, "kv_cache_mb": 0}
    settings = settings.model_copy(update=update)
    async with fleet(settings, classes=["small"]) as f, httpx.AsyncClient(base_url=f.url, timeout=30) as http:

        async def submit(session: str, prompt: str, tokens: int) -> str:
            body = {"session_id": session, "prompt": prompt, "max_new_tokens": tokens, "cost_class": "small"}
            ack = await http.post("/v1/requests", json=body | {"temperature": 0, "ignore_eos": True})
            return str(ack.json()["request_id"])

        async def answer(session: str, rid: str) -> list[AnyEvent]:
            return (await read_until_final(redis_client, settings.names.stream_key(session), {rid}))[rid]

        running = await submit("running", "Oui chef", 400)
        assert isinstance(await first_event(redis_client, settings.names.stream_key("running")), TokenEvent)
        joined = await answer("long", await submit("long", KITCHEN, 6))
        assert chunk_steps >= 3
        await answer("running", running)
        chunk_steps = 0
        alone = await answer("alone", await submit("alone", KITCHEN, 6))
        assert chunk_steps == 0  # nothing else running: prefilled at once
    (done,) = finals(joined)
    assert isinstance(done, DoneEvent) and done.completion_tokens == 6
    assert text(joined) == text(alone) and text(joined)


async def first_event(redis: aioredis.Redis, key: str, *, timeout_s: float = 30) -> AnyEvent:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        for _stream, entries in await xread(redis, {key: "0-0"}, block_ms=1000):
            return parse_event(entries[0][1])
    raise TimeoutError(f"nothing on {key} after {timeout_s}s")


def text(events: list[AnyEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TokenEvent))
