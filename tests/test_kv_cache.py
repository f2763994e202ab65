"""A finished chat turn's KV cache reused by its session's next turn, and prompt prefixes shared between requests:
the caches' rules, then the engine on builtin:tiny checked against a plain full recomputation, then a worker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from brigade.inprocess import finals, fleet, read_until_final
from brigade.models.specs import BUILTIN_MODELS
from brigade.top import parse_metrics
from consumer.engine.interface import GenerationInput, TokenDelta
from consumer.engine.kv_cache import (
    BLOCK_TOKENS,
    MIN_REUSED_TOKENS,
    KvEntry,
    SessionKvCache,
    SharedPrefixes,
    common_prefix,
)
from consumer.engine.onnx_engine import OnnxEngine, load_engine
from schemas.events import DoneEvent
from schemas.settings import Settings
from tests.test_engine import GREEDY, no_cache_greedy


def entry(ids: range | list[int], nbytes: int) -> KvEntry:
    return KvEntry(tuple(ids), (np.zeros(nbytes, dtype=np.uint8),))


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0 and common_prefix([9], [1]) == 0


def test_entries_are_taken_once_and_only_when_worth_it() -> None:
    cache = SessionKvCache(max_bytes=1000)
    ids = list(range(40))
    cache.put("s", entry(ids, 10))
    assert cache.take("s", [*ids, 99]) is not None
    assert cache.take("s", [*ids, 99]) is None, "taken: the turn that reused it leaves the next entry"
    cache.put("s", entry(ids, 10))
    hit = cache.take("s", ids)
    assert hit is not None and hit[1] == len(ids) - 1, "the prompt's last token always runs, for its logits"
    cache.put("s", entry(ids, 10))
    short = ids[: MIN_REUSED_TOKENS - 1] + [-1] * 10
    assert cache.take("s", short) is None and len(cache) == 0, "too little in common: computed, entry gone"


def test_the_byte_bound_evicts_the_oldest() -> None:
    cache = SessionKvCache(max_bytes=100)
    for key in "abc":
        cache.put(key, entry(range(20), 40))
    assert len(cache) == 2 and cache.nbytes == 80 and cache.take("a", list(range(21))) is None
    cache.put("big", entry(range(20), 101))
    assert len(cache) == 2, "an entry over the whole bound is not kept, and evicts nothing"
    off = SessionKvCache(max_bytes=0)
    off.put("a", entry(range(20), 1))
    assert len(off) == 0


def test_a_prefix_is_kept_once_a_second_prompt_starts_with_it_and_then_read_by_every_prompt() -> None:
    shared = SharedPrefixes(SessionKvCache(max_bytes=10_000))
    preamble = list(range(1000, 1040))  # 40 tokens: two whole blocks and some
    assert shared.find([*preamble, 1, 2, 3]) == (None, 0), "the first prompt with it: nobody else started so"
    assert shared.find([*preamble, 4, 5]) == (None, 2 * BLOCK_TOKENS), "the second: keep its two whole blocks"
    assert shared.find(list(range(1000, 1010)) + [7] * 30) == (None, 0), "under two blocks in common: not worth it"
    kept = KvEntry(tuple(preamble[: 2 * BLOCK_TOKENS]), (np.zeros(64, dtype=np.uint8),))
    shared.put(kept)
    for tail in ([6], [8, 9, 10]):
        assert shared.find([*preamble, *tail]) == ((kept, 2 * BLOCK_TOKENS), 0), "read, not taken"
    assert shared.find(preamble[: 2 * BLOCK_TOKENS]) == ((kept, 2 * BLOCK_TOKENS - 1), 0), "the last token runs"
    assert shared.find([0, *preamble]) == (None, 0), "shifted by one token: nothing in common"
    longer = [*preamble, *range(2000, 2030)]  # 70 tokens: four whole blocks
    assert shared.find(longer) == ((kept, 2 * BLOCK_TOKENS), 0), "nobody started with more than the kept blocks"
    assert shared.find([*longer, 1]) == ((kept, 2 * BLOCK_TOKENS), 4 * BLOCK_TOKENS), "now one did: keep four"


def sessions_only(model_cache_dir: Path, *, shared_prefix_cache: bool = False) -> OnnxEngine:
    return load_engine(
        Settings(
            model="builtin:tiny",
            model_cache_dir=model_cache_dir,
            device="cpu",
            kv_cache_mb=64,
            shared_prefix_cache=shared_prefix_cache,
        )
    )


@pytest.fixture(scope="module")
def engine(model_cache_dir: Path) -> Iterator[OnnxEngine]:
    eng = sessions_only(model_cache_dir)
    yield eng
    eng.close()


def steps(
    engine: OnnxEngine, first: list[GenerationInput], joins: dict[int, list[GenerationInput]]
) -> dict[str, list[TokenDelta]]:
    run = engine.start(first)
    out: dict[str, list[TokenDelta]] = {}
    step = 0
    while not run.finished or step in joins:
        if step in joins:
            run.join(joins.pop(step))
        for delta in run.step():
            out.setdefault(delta.request_id, []).append(delta)
        step += 1
    return out


def test_the_next_turn_prefills_only_its_new_tokens_and_generates_what_a_full_prefill_would(
    engine: OnnxEngine,
) -> None:
    """Turn 1 runs beside a longer prompt (its row left-padded, so the cache kept must skip the padding); turn 2
    joins a running batch with turn 1's tokens, its reply and new ones."""
    turn1 = engine.encode("The chef calls the order and the pass sends the plates out to table four, hot.")
    other = engine.encode("Tickets pile up on the rail while the brigade works the fish, the roast and the sauce.")
    assert len(other) > len(turn1) >= MIN_REUSED_TOKENS
    first = steps(
        engine, [GenerationInput("t1", turn1, 6, GREEDY, cache_key="s1"), GenerationInput("x", other, 9, GREEDY)], {}
    )
    reply = no_cache_greedy(engine, turn1, 6)
    assert [d.cached_tokens for d in first["t1"]] == [0] + [None] * 5, "looked once, found nothing"
    assert len(engine.kv) == 1, "only the turn with a session left its cache"

    turn2 = [*turn1, *reply, *engine.encode(" And the dessert for table four?")]
    second = steps(
        engine,
        [GenerationInput("y", other, 8, GREEDY)],
        {2: [GenerationInput("t2", turn2, 8, GREEDY, cache_key="s1")]},
    )
    fed = len(turn1) + len(reply) - 1  # turn 1's last token was sampled, never run
    assert second["t2"][0].cached_tokens == fed and all(d.cached_tokens is None for d in second["t2"][1:])
    run = engine.start([GenerationInput("t2-ref", turn2, 8, GREEDY)])
    while not run.finished:
        run.step()
    expected = no_cache_greedy(engine, turn2, 8)
    assert run.token_ids("t2-ref") == expected
    assert "".join(d.text for d in second["t2"]) == engine.tokenizer.decode(expected)


def test_a_prompt_that_differs_early_computes_everything(engine: OnnxEngine) -> None:
    prompt = engine.encode("The pass is where plates go out, and the brigade works in order every night.")
    steps(engine, [GenerationInput("a1", prompt, 3, GREEDY, cache_key="s2")], {})
    other = engine.encode("Nothing in common with the last turn at all, from its very first word onward.")
    out = steps(engine, [GenerationInput("a2", other, 3, GREEDY, cache_key="s2")], {})
    assert out["a2"][0].cached_tokens == 0


def test_prompts_that_start_alike_share_the_prefix_and_generate_what_a_full_prefill_would(
    model_cache_dir: Path,
) -> None:
    """Two prompts with one preamble make it kept (left-padded beside a longer prompt, so the copy must skip the
    padding); a third joins a running batch reusing it at the right positions, a fourth reuses it too."""
    engine = sessions_only(model_cache_dir, shared_prefix_cache=True)
    preamble = engine.encode(
        "You are the expediter of a busy kitchen. Call each order to the stations, check every plate at the pass, "
        "and send nothing out that is cold, late or wrong. Answer in one short line."
    )
    assert len(preamble) >= 3 * BLOCK_TOKENS
    kept = len(preamble) // BLOCK_TOKENS * BLOCK_TOKENS
    asks = [engine.encode(f" Table {n}: {dish}?") for n, dish in ((2, "the fish"), (5, "two roasts"), (7, "soup"))]
    longer = engine.encode(
        "Tickets pile up on the rail while the brigade works the fish, the roast and the sauce. " * 4
    )
    out = steps(engine, [GenerationInput("a", [*preamble, *asks[0]], 4, GREEDY)], {})
    assert out["a"][0].cached_tokens == 0 and len(engine.kv) == 0, "looked, found nothing, kept nothing yet"
    out = steps(
        engine, [GenerationInput("b", [*preamble, *asks[1]], 4, GREEDY), GenerationInput("x", longer, 9, GREEDY)], {}
    )
    assert out["b"][0].cached_tokens == 0 and len(engine.kv) == 1, "the second prompt with it keeps it"

    third = [*preamble, *asks[2]]
    out = steps(engine, [GenerationInput("y", longer, 8, GREEDY)], {2: [GenerationInput("c", third, 8, GREEDY)]})
    assert out["c"][0].cached_tokens == kept
    expected = no_cache_greedy(engine, third, 8)
    assert "".join(d.text for d in out["c"]) == engine.tokenizer.decode(expected)
    entries = len(engine.kv)  # the preamble's, and the longer prompt's, which ran twice now
    out = steps(engine, [GenerationInput("d", [*preamble, *asks[0]], 2, GREEDY)], {})
    assert out["d"][0].cached_tokens == kept and len(engine.kv) == entries == 2, "still there: read, not taken"
    engine.close()


def test_a_conversation_resent_whole_each_call_keeps_a_longer_prefix_each_call(
    model_cache_dir: Path, engine: OnnxEngine
) -> None:
    """A stateless client without a prompt_cache_key: each call's prompt is the last one's and more. A call that
    reads a kept prefix keeps the longer one it shares with the last call (from its own run), so the next call
    reads that, and still generates what a full prefill would."""
    reference, engine = engine, sessions_only(model_cache_dir, shared_prefix_cache=True)
    calls = [engine.encode("The pass calls table two: the fish, the roast, the pastry, and the wine with them. " * 2)]
    for more in (" The fish is up first, then the roast.", " Pastry waits.", " Table two is served."):
        calls.append([*calls[-1], *engine.encode(more * 3)])
    blocks = [len(c) // BLOCK_TOKENS * BLOCK_TOKENS for c in calls]
    assert blocks[0] >= 2 * BLOCK_TOKENS
    scored = GREEDY.model_copy(update={"logprobs": 0})
    cached = []
    for n, prompt in enumerate(calls):
        out = steps(engine, [GenerationInput(f"call{n}", prompt, 6, scored)], {})
        cached.append(out[f"call{n}"][0].cached_tokens)
    assert cached == [0, 0, blocks[0], blocks[1]], "call 3 reads call 1's blocks and keeps call 2's for call 4"
    # The same tokens with the same log-probabilities as computed whole: a cache off by a position moves them.
    whole = steps(reference, [GenerationInput("whole", calls[3], 6, scored)], {})["whole"]
    assert [d.text for d in out["call3"]] == [d.text for d in whole]
    got = [d.logprob.logprob for d in out["call3"] if d.logprob is not None]
    want = [d.logprob.logprob for d in whole if d.logprob is not None]
    assert len(got) == len(want) == 6 and np.allclose(got, want, atol=1e-4), (got, want)
    engine.close()


def test_joiners_of_one_step_that_share_a_prefix_keep_it_once(
    model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst of new conversations with one system prompt: keeping it is a copy, made once, not per joiner."""
    engine = sessions_only(model_cache_dir, shared_prefix_cache=True)
    assert engine.shared is not None
    preamble = engine.encode("Plates leave the pass only when the whole table is ready, hot, and checked twice. " * 3)
    asks = [engine.encode(f" Table {n}, what is left?") for n in range(4)]
    steps(engine, [GenerationInput("p0", [*preamble, *asks[0]], 2, GREEDY)], {})
    kept: list[int] = []
    put = engine.shared.put

    def counted(entry: KvEntry) -> None:
        kept.append(len(entry.ids))
        put(entry)

    monkeypatch.setattr(engine.shared, "put", counted)
    burst = [GenerationInput(f"p{n}", [*preamble, *asks[n]], 2, GREEDY) for n in range(1, 4)]
    out = steps(engine, burst, {})
    assert kept == [len(preamble) // BLOCK_TOKENS * BLOCK_TOKENS], "one copy for the three"
    assert [out[f"p{n}"][0].cached_tokens for n in range(1, 4)] == [0, 0, 0]
    engine.close()


def prefix_cache_totals(metrics: str) -> tuple[float, float]:
    small = parse_metrics(metrics)["small"]
    return small.cache_queries, small.cache_hits


async def test_a_sessions_second_turn_reuses_the_first_through_the_worker(
    settings: Settings, topics: list[str], redis_client: aioredis.Redis
) -> None:
    """The native API's chat turns carry their session as the cache key (the worker counts what was reused);
    an OpenAI call, a fresh session per call, looks for nothing (with no prefix shared between requests)."""
    settings = settings.model_copy(update={"shared_prefix_cache": False})
    first = "Fire table two: the fish, the roast and the pastry, and tell the pass when the plates are up."
    turns = [[{"role": "user", "content": first}], [{"role": "user", "content": "And the fish?"}]]
    dones: list[DoneEvent] = []
    async with fleet(settings, classes=["small"]) as f, httpx.AsyncClient(base_url=f.url, timeout=30) as http:
        for messages in turns:
            body = {"session_id": "kv", "messages": messages, "max_new_tokens": 6, "cost_class": "small"}
            ack = await http.post("/v1/requests", json=body | {"temperature": 0, "ignore_eos": True})
            rid = ack.json()["request_id"]
            events = await read_until_final(redis_client, settings.names.stream_key("kv"), {rid})
            (done,) = finals(events[rid])
            assert isinstance(done, DoneEvent), done
            dones.append(done)
        metrics = f"http://127.0.0.1:{f.worker_ports[0]}/metrics"
        queried, hits = prefix_cache_totals((await http.get(metrics)).text)
        oai = {"model": settings.model, "messages": turns[0], "max_tokens": 2, "cost_class": "small"}
        assert (await http.post("/v1/chat/completions", json=oai)).status_code == 200
        assert prefix_cache_totals((await http.get(metrics)).text) == (queried, hits), "OpenAI calls look for nothing"
    assert queried == dones[0].prompt_tokens + dones[1].prompt_tokens
    # Turn 2 renders turn 1's prompt and reply first: at least turn 1's prompt is reused.
    assert dones[0].prompt_tokens <= hits < dones[1].prompt_tokens
    assert dones[0].cached_tokens is None and dones[1].cached_tokens == hits, "each done says what it reused"


def worker_sample(metrics: str, name: str) -> float:
    return sum(s.value for family in text_string_to_metric_families(metrics) for s in family.samples if s.name == name)


async def test_the_worker_exports_its_prompt_tokens_and_how_full_its_kv_caches_are(
    settings: Settings, topics: list[str], redis_client: aioredis.Redis
) -> None:
    """vLLM's prompt_tokens_total, and the kept caches' share of BRIGADE_KV_CACHE_MB: one finished chat turn holds
    its prompt's and reply's keys and values (the last token never ran)."""
    budget_mb = 4
    settings = settings.model_copy(update={"kv_cache_mb": budget_mb, "shared_prefix_cache": False})
    spec = BUILTIN_MODELS["tiny"]
    per_token = spec.n_layer * 2 * spec.n_embd * 4  # a key and a value per layer, fp32
    async with fleet(settings, classes=["small"]) as f, httpx.AsyncClient(base_url=f.url, timeout=30) as http:
        metrics = f"http://127.0.0.1:{f.worker_ports[0]}/metrics"
        assert worker_sample((await http.get(metrics)).text, "brigade_kv_cache_usage_ratio") == 0
        body = {"session_id": "kv-gauge", "messages": [{"role": "user", "content": "Fire table two, oui chef."}]}
        ack = await http.post("/v1/requests", json=body | {"max_new_tokens": 5, "temperature": 0, "ignore_eos": True})
        rid = ack.json()["request_id"]
        (done,) = finals((await read_until_final(redis_client, settings.names.stream_key("kv-gauge"), {rid}))[rid])
        assert isinstance(done, DoneEvent)
        page = (await http.get(metrics)).text
    assert worker_sample(page, "brigade_prompt_tokens_total") == done.prompt_tokens
    held = (done.prompt_tokens + done.completion_tokens - 1) * per_token
    assert worker_sample(page, "brigade_kv_cache_usage_ratio") == pytest.approx(held / (budget_mb * 2**20))


async def test_openai_calls_with_a_prompt_cache_key_reuse_the_last_calls_cache(
    settings: Settings, topics: list[str]
) -> None:
    """OpenAI callers send the whole conversation every call: with OpenAI's prompt_cache_key the worker keeps
    each call's cache for the next, and usage.prompt_tokens_details says what was reused; without one, nothing
    (with no prefix shared between requests)."""
    settings = settings.model_copy(update={"shared_prefix_cache": False})
    first = [{"role": "user", "content": "Fire table two: the fish, the roast and the pastry, then tell the pass."}]
    greedy = {"model": settings.model, "max_tokens": 6, "temperature": 0, "ignore_eos": True, "cost_class": "small"}
    async with fleet(settings, classes=["small"]) as f, httpx.AsyncClient(base_url=f.url, timeout=30) as http:

        async def chat(messages: list[dict[str, str]], **extra: str) -> dict[str, Any]:
            resp = await http.post("/v1/chat/completions", json=greedy | {"messages": messages} | extra)
            assert resp.status_code == 200, resp.text
            return dict(resp.json())

        one = await chat(first, prompt_cache_key="table-2")
        reply = {"role": "assistant", "content": one["choices"][0]["message"]["content"]}
        conversation = [*first, reply, {"role": "user", "content": "And the fish?"}]
        unkeyed = await chat(conversation)
        two = await chat(conversation, prompt_cache_key="table-2")
        again = await chat(conversation, prompt_cache_key="table-3")  # another key: another cache

        text = {"model": settings.model, "max_tokens": 6, "temperature": 0, "ignore_eos": True}
        prompt = "The pass calls the orders out and every station answers with the time its plates need. "
        p1 = (await http.post("/v1/completions", json=text | {"prompt": prompt, "prompt_cache_key": "p"})).json()
        longer = prompt + p1["choices"][0]["text"] + " Then the runners take them."
        p2 = (await http.post("/v1/completions", json=text | {"prompt": longer, "prompt_cache_key": "p"})).json()

    def cached(answer: dict[str, Any]) -> int:
        return int(answer["usage"]["prompt_tokens_details"]["cached_tokens"])

    assert cached(one) == 0 and cached(unkeyed) == 0 and cached(again) == 0
    # The second call renders the first one's prompt and reply first: at least the first prompt is reused.
    assert one["usage"]["prompt_tokens"] <= cached(two) < two["usage"]["prompt_tokens"]
    assert two["choices"][0]["message"]["content"] == unkeyed["choices"][0]["message"]["content"]
    assert cached(p1) == 0 and p1["usage"]["prompt_tokens"] <= cached(p2) < p2["usage"]["prompt_tokens"]


async def test_requests_with_one_system_prompt_share_its_cache_through_the_worker(
    settings: Settings, topics: list[str], redis_client: aioredis.Redis
) -> None:
    """Each conversation its own session: from the third on, the system prompt comes from the cache, and the
    done event and the worker's counters say so; with BRIGADE_SHARED_PREFIX_CACHE off, nothing does."""
    system = {
        "role": "system",
        "content": "You are the expediter of a busy kitchen. Call each order to the stations, check every plate "
        "at the pass, and send nothing out that is cold, late or wrong. Answer in one short line.",
    }
    asks = ["Table two: the fish?", "Table five: two roasts?", "Table seven: the soup?"]

    async def cached(shared: bool) -> list[int | None]:
        config = settings.model_copy(update={"shared_prefix_cache": shared})
        out: list[int | None] = []
        async with fleet(config, classes=["small"]) as f, httpx.AsyncClient(base_url=f.url, timeout=30) as http:
            for n, ask in enumerate(asks):
                session = f"table-{shared}-{n}"
                body = {"session_id": session, "messages": [system, {"role": "user", "content": ask}]}
                ack = await http.post("/v1/requests", json=body | {"max_new_tokens": 3, "cost_class": "small"})
                rid = ack.json()["request_id"]
                events = await read_until_final(redis_client, settings.names.stream_key(session), {rid})
                (done,) = finals(events[rid])
                assert isinstance(done, DoneEvent), done
                out.append(done.cached_tokens)
            metrics = f"http://127.0.0.1:{f.worker_ports[0]}/metrics"
            hits = prefix_cache_totals((await http.get(metrics)).text)[1]
        assert hits == sum(c or 0 for c in out)
        return out

    shared = await cached(True)
    assert shared[:2] == [None, None] and (shared[2] or 0) >= 2 * BLOCK_TOKENS
    assert await cached(False) == [None, None, None]
