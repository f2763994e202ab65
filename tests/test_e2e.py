"""The core path end to end: HTTP or raw Kafka in, real workers with the ONNX engine, Redis streams out."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from brigade.inprocess import finals, fleet, read_until_final
from brigade.models.registry import load_tokenizer
from brigade.redis_config import RedisClient
from producer.client import BrigadeClient, Completion, GenerationFailed
from schemas.events import DoneEvent
from schemas.settings import Settings
from tests.kafka_reader import read_records

PROMPTS = {
    "small": "The pass is where plates go out.",
    "medium": "A brigade kitchen has stations for sauces, fish, roasts and pastry, each with its chef.",
    "large": "Tickets arrive on the rail; the expediter calls them; chefs fire dishes; the pass checks them.",
}


async def test_hundred_requests_across_three_classes_each_end_with_one_done(
    any_redis: Settings, topics: list[str], any_redis_client: RedisClient
) -> None:
    """On a plain Redis, then on a three-node Redis Cluster (where the 40 sessions spread over the nodes)."""
    settings, redis_client = any_redis, any_redis_client
    async with fleet(settings) as f, httpx.AsyncClient(base_url=f.url, timeout=30) as http:
        submitted: dict[str, set[str]] = {}
        classes = list(settings.classes)

        async def submit(i: int) -> None:
            cls = classes[i % 3]
            session = f"sess-{i % 40}"
            body = {
                "session_id": session,
                "prompt": PROMPTS[cls],
                "max_new_tokens": 4 + i % 7,
                "cost_class": cls,
                "temperature": 0,
            }
            resp = await http.post("/v1/requests", json=body)
            assert resp.status_code == 202, resp.text
            ack = resp.json()
            assert ack["cost_class"] == cls and ack["session_id"] == session
            assert ack["stream"] == settings.names.stream_key(session)
            submitted.setdefault(session, set()).add(ack["request_id"])

        await asyncio.gather(*(submit(i) for i in range(100)))
        assert sum(len(v) for v in submitted.values()) == 100
        if isinstance(redis_client, aioredis.RedisCluster):  # the sessions live on every node
            nodes = {redis_client.get_node_from_key(settings.names.stream_key(s)) for s in submitted}
            assert len(nodes) == 3, nodes

        results = await asyncio.gather(
            *(read_until_final(redis_client, settings.names.stream_key(s), rids) for s, rids in submitted.items())
        )
    for events_by_request in results:
        for rid, events in events_by_request.items():
            assert len(finals(events)) == 1, (rid, events)
            done = finals(events)[0]
            assert isinstance(done, DoneEvent), done
            tokens = [e for e in events if e.type == "token"]
            assert done.completion_tokens >= 1
            assert [e.seq for e in events] == list(range(len(events)))
            assert all(e.text for e in tokens)


async def test_raw_json_published_with_a_plain_kafka_client_completes(
    settings: Settings, topics: list[str], redis_client: aioredis.Redis
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        async with fleet(settings, classes=["small"], ingress=False):
            raw = {"request_id": "raw-1", "session_id": "raw-session", "prompt": "hello", "max_new_tokens": 5}
            await producer.send_and_wait(
                settings.names.request_topic("small"), json.dumps(raw).encode(), key=b"raw-session"
            )
            events = await read_until_final(redis_client, settings.names.stream_key("raw-session"), {"raw-1"})
    finally:
        await producer.stop()
    (done,) = finals(events["raw-1"])
    assert isinstance(done, DoneEvent)
    assert done.completion_tokens == 5 or done.finish_reason == "stop"


async def test_poison_messages_go_to_the_dlq_and_the_next_request_completes(
    settings: Settings, topics: list[str], redis_client: aioredis.Redis
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    topic = settings.names.request_topic("small")
    try:
        async with fleet(settings, classes=["small"], ingress=False):
            await producer.send_and_wait(topic, b"{not json", key=b"p")
            await producer.send_and_wait(topic, b'{"request_id": "x", "prompt": "no session"}', key=b"p")
            good = {"request_id": "good-1", "session_id": "p", "prompt": "still alive?", "max_new_tokens": 3}
            await producer.send_and_wait(topic, json.dumps(good).encode(), key=b"p")
            events = await read_until_final(redis_client, settings.names.stream_key("p"), {"good-1"})
    finally:
        await producer.stop()
    assert len(finals(events["good-1"])) == 1

    got = await read_records(settings.kafka_bootstrap, settings.names.dlq_topic, count=2)
    assert [m.value for m in got] == [b"{not json", b'{"request_id": "x", "prompt": "no session"}']
    reasons = [dict(m.headers).get("error", b"").decode() for m in got]  # pydantic text names the field
    assert "session_id" in reasons[1], reasons


async def test_logprobs_through_the_whole_path(settings: Settings, topics: list[str]) -> None:
    """A real worker's entries, read back through the ingress's SSE by the Python client: one per generated
    token, in order, including the tokens whose text a stop string held back or cut."""
    async with fleet(settings, classes=["small"]) as f, BrigadeClient(f.url) as client:

        def greedy(logprobs: int | None = None, stop: str | None = None) -> Awaitable[Completion]:
            prompt, small = "The pass is where plates go out.", "small"
            return client.generate(
                prompt, max_new_tokens=8, temperature=0, ignore_eos=True, cost_class=small, logprobs=logprobs, stop=stop
            )

        full = await greedy(logprobs=2)
        assert full.logprobs is not None and len(full.logprobs) == full.completion_tokens == 8
        tokens = [e.token for e in full.logprobs]
        assert "".join(tokens) == full.text
        assert all(len(e.top) == 2 and e.top[0].logprob >= e.logprob for e in full.logprobs)  # greedy: top 1
        assert all(e.top[0].id == e.id for e in full.logprobs)

        # Stop on two tokens' text: the same greedy tokens, cut where the stop string first completes; the
        # first of the two is held back as a possible start of it, and its entry comes with the done event.
        stop = "".join(tokens[-3:-1])
        ends = [len("".join(tokens[: i + 1])) for i in range(len(tokens))]
        completes = next(i for i, end in enumerate(ends) if end >= full.text.index(stop) + len(stop))
        cut = await greedy(logprobs=0, stop=stop)
        plain = await greedy()
    assert cut.text == full.text[: full.text.index(stop)] and cut.finish_reason == "stop"
    assert cut.logprobs is not None and [e.id for e in cut.logprobs] == [e.id for e in full.logprobs][: completes + 1]
    assert cut.completion_tokens == completes + 1 and all(e.top == [] for e in cut.logprobs)
    assert plain.logprobs is None and plain.text == full.text


async def test_token_id_prompts_through_the_whole_path(settings: Settings, topics: list[str]) -> None:
    """A prompt sent as the model's own ids gets the answer its text gets; an id outside the vocabulary is
    refused by the worker with a final error naming it."""
    prompt = PROMPTS["small"]
    ids = load_tokenizer(settings.model, cache_dir=settings.model_cache_dir).encode(prompt).ids
    async with fleet(settings, classes=["small"]) as f, BrigadeClient(f.url) as client:

        def greedy(**inputs: Any) -> Awaitable[Completion]:
            return client.generate(max_new_tokens=8, temperature=0, ignore_eos=True, cost_class="small", **inputs)

        as_text = await greedy(prompt=prompt)
        as_ids = await greedy(prompt_token_ids=ids)
        with pytest.raises(GenerationFailed, match=r"prompt_token_ids names token id 999999, outside") as err:
            await greedy(prompt_token_ids=[*ids, 999_999])
    assert as_ids.text == as_text.text and as_ids.prompt_tokens == as_text.prompt_tokens == len(ids)
    assert err.value.code == "invalid_request"


async def test_echoed_prompt_scores_through_the_whole_path(settings: Settings, topics: list[str]) -> None:
    """An evaluation harness's loglikelihood call against a real worker: the prompt's tokens come back with
    their values (the first null), then the one generated token's, and the text is the prompt's then the
    answer's."""
    prompt = PROMPTS["small"]
    scoring = {
        "model": settings.model,
        "prompt": prompt,
        "max_tokens": 1,
        "temperature": 0,
        "logprobs": 2,
        "echo": True,
    }
    async with fleet(settings, classes=["small"]) as f, httpx.AsyncClient(base_url=f.url, timeout=30) as http:
        resp = await http.post("/v1/completions", json=scoring)
        plain = await http.post("/v1/completions", json=scoring | {"echo": False})
        async with BrigadeClient(f.url) as client:
            scored = await client.generate(prompt, max_new_tokens=1, temperature=0, prompt_logprobs=0)
    assert resp.status_code == 200, resp.text
    (choice,), usage = resp.json()["choices"], resp.json()["usage"]
    (plain_choice,) = plain.json()["choices"]
    lp = choice["logprobs"]
    assert choice["text"] == prompt + plain_choice["text"]
    assert len(lp["tokens"]) == usage["prompt_tokens"] + 1 and "".join(lp["tokens"][:-1]) == prompt
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert all(v < 0 for v in lp["token_logprobs"][1:])
    assert all(2 <= len(top) <= 3 for top in lp["top_logprobs"][1:]), "two alternatives, and the token itself"
    assert lp["token_logprobs"][-1] == plain_choice["logprobs"]["token_logprobs"][0], "the same generated token"
    assert lp["text_offset"][-1] == len(prompt)
    assert scored.prompt_logprobs is not None and len(scored.prompt_logprobs) == scored.prompt_tokens
    assert [e.logprob for e in scored.prompt_logprobs] == lp["token_logprobs"][:-1], "the same values, by the client"
