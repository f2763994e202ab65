"""The OpenAI-compatible endpoints against a real broker and Redis, read with the real ``openai`` SDK.

The test plays the worker (``play_worker``): it consumes the published request and XADDs the events.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
import redis.asyncio as aioredis
from openai.types.chat import ChatCompletionMessageParam

from brigade.inprocess import fleet
from brigade.models.registry import load_tokenizer
from schemas.events import DoneEvent, ErrorEvent, PromptLogprob, TokenEvent, TokenLogprob, TopLogprob
from schemas.naming import CANCEL_FIELD
from schemas.requests import InferenceRequest
from schemas.settings import Settings
from tests.test_ingress import AnyEvent, crash_then, play_worker, say


@pytest.fixture
async def ingress(settings: Settings, topics: list[str]) -> AsyncIterator[str]:
    async with fleet(settings, classes=[]) as f:
        yield f.url


@pytest.fixture
async def oai(ingress: str) -> AsyncIterator[openai.AsyncOpenAI]:
    # No SDK retries: a retried call would publish a second request the test worker never answers.
    client = openai.AsyncOpenAI(base_url=f"{ingress}/v1", api_key="unused", max_retries=0)
    yield client
    await client.close()


USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("body", "needle", "param"),
    [
        ({"max_tokens": 5000}, "max_tokens=5000 is over the limit 1024 (BRIGADE_MAX_NEW_TOKENS_LIMIT)", "max_tokens"),
        ({"max_completion_tokens": 5000}, "max_completion_tokens=5000", "max_completion_tokens"),
        ({"n": 17}, "n: Input should be less than or equal to 16", "n"),
        ({"seed": -1}, "seed: Input should be greater than or equal to 0", "seed"),
        ({"stop": [f"s{i}" for i in range(9)]}, "stop: List should have at most 8 items", "stop"),
        ({"temperature": 3}, "temperature", "temperature"),
        ({"messages": []}, "messages", "messages"),
        ({"messages": [{"role": "function", "content": "x"}]}, "messages.0.role", "messages.0.role"),
        ({"tools": [{"type": "web_search"}]}, "tools.0.type: Input should be 'function'", "tools.0.type"),
        ({"functions": [{"name": "f"}]}, "functions: brigade does not implement", "functions"),
        (
            {"response_format": {"type": "structural_tag"}},
            "response_format.type: Input should be",
            "response_format.type",
        ),
        ({"response_format": {"type": "json_schema"}}, 'type "json_schema" needs', "response_format.json_schema"),
        ({"guided_regex": "a(b"}, "guided_regex does not compile: at 1(8): invalid regex", "guided_regex"),
        ({"guided_json": "{nope"}, "guided_json: not JSON", "guided_json"),
        (
            {"response_format": {"type": "json_object"}, "guided_choice": ["a"]},
            "response_format, guided_choice: each asks for structured output; send one of them",
            "guided_choice",
        ),
        (
            {"structured_outputs": {"regex": "a", "choice": ["b"]}},
            "give exactly one of json_schema",
            "structured_outputs.regex",
        ),
        ({"guided_choice": []}, "guided_choice: List should have at least 1 item", "guided_choice"),
        ({"top_logprobs": 3}, "top_logprobs: send logprobs: true with it", "top_logprobs"),
        (
            {"logprobs": True, "top_logprobs": 21},
            "top_logprobs: Input should be less than or equal to 20",
            "top_logprobs",
        ),
        ({"logit_bias": {"7": 500}}, "logit_bias.7: Input should be less than or equal to 100", "logit_bias.7"),
        ({"max_tokens": 4, "min_tokens": 9}, "min_tokens=9 is over max_tokens=4", "min_tokens"),
        ({"presence_penalty": 2.5}, "presence_penalty: Input should be less than or equal to 2", "presence_penalty"),
        ({"top_k": -2}, "top_k: Input should be greater than or equal to -1", "top_k"),
    ],
)
async def test_chat_errors_name_the_openai_field(
    settings: Settings, ingress: str, body: dict[str, object], needle: str, param: str
) -> None:
    payload = {"model": settings.model, "messages": USER, **body}
    async with httpx.AsyncClient(base_url=ingress) as http:
        resp = await http.post("/v1/chat/completions", json=payload)
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert needle in error["message"] and error["param"] == param, error


async def test_sdk_surfaces_our_error_messages(oai: openai.AsyncOpenAI, settings: Settings, ingress: str) -> None:
    with pytest.raises(openai.UnprocessableEntityError, match="BRIGADE_MAX_NEW_TOKENS_LIMIT"):
        await oai.completions.create(model=settings.model, prompt="x", max_tokens=5000)
    with pytest.raises(openai.NotFoundError, match="not served here"):
        await oai.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.NotFoundError, match="not served here"):
        await oai.models.retrieve("gpt-9")
    assert (await oai.models.retrieve(settings.model)).id == settings.model
    async with httpx.AsyncClient(base_url=ingress) as http:
        wrong = await http.get("/v1/chat/completions")
        bad = await http.post("/v1/completions", content=b"{", headers={"content-type": "application/json"})
    assert wrong.status_code == 405 and wrong.json()["error"]["type"] == "invalid_request_error"
    assert bad.status_code == 422 and "not valid JSON" in bad.json()["error"]["message"]


async def test_developer_role_and_content_parts_map_onto_the_contract(
    oai: openai.AsyncOpenAI, settings: Settings, redis_client: aioredis.Redis
) -> None:
    worker = asyncio.create_task(play_worker(settings, redis_client, count=1))
    chat = await oai.chat.completions.create(
        model=settings.model,
        messages=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Say "}, {"type": "text", "text": "hi"}]},
        ],
        max_completion_tokens=7,
        stop="\n",
        seed=3,
        user="ignored",
        # what frameworks send for "off" is accepted; ignore_eos is vLLM's, and honoured
        tools=[],
        presence_penalty=0,
        response_format={"type": "text"},
        frequency_penalty=0.5,
        logit_bias={"7": 5, "11": -100},
        extra_body={
            "min_tokens": 2,
            "ignore_eos": True,
            "top_k": 40,
            "min_p": 0.05,
            "repetition_penalty": 1.1,
            "best_of": 1,
            "priority": -5,
        },
    )
    (req,) = await worker
    assert chat.choices[0].message.content == "Hello world"
    assert chat.usage is not None and chat.usage.prompt_tokens == 3 and chat.usage.total_tokens == 5
    assert req.messages is not None
    assert [(m.role, m.content) for m in req.messages] == [("system", "Be brief."), ("user", "Say hi")]
    assert req.max_new_tokens == 7 and req.stop == ["\n"] and req.seed == 3 and req.model == settings.model
    assert req.ignore_eos and (req.top_k, req.min_p, req.repetition_penalty) == (40, 0.05, 1.1)
    assert (req.presence_penalty, req.frequency_penalty, req.priority) == (0, 0.5, -5)
    assert req.logit_bias == {7: 5.0, 11: -100.0} and req.min_tokens == 2


async def test_partial_attempt_is_dropped_streamed_and_whole(
    oai: openai.AsyncOpenAI, settings: Settings, redis_client: aioredis.Redis
) -> None:
    # A worker died after "Hello wo"; the redelivered attempt replays the same tokens (seeded) to the end.
    script = crash_then(["Hello", " wo"], ["Hello", " world", "!"])
    worker = asyncio.create_task(play_worker(settings, redis_client, count=2, script=script))

    whole = await oai.completions.create(model=settings.model, prompt="x", max_tokens=5)
    assert whole.choices[0].text == "Hello world!"
    assert whole.usage is not None and whole.usage.completion_tokens == 3

    stream = await oai.chat.completions.create(
        model=settings.model, messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    await worker
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello world!"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")


def expired(req: InferenceRequest) -> list[AnyEvent]:
    return [ErrorEvent(request_id=req.request_id, seq=0, code="expired", message="deadline passed before compute")]


async def test_error_events_become_sdk_errors(
    oai: openai.AsyncOpenAI, settings: Settings, redis_client: aioredis.Redis
) -> None:
    worker = asyncio.create_task(play_worker(settings, redis_client, count=2, script=expired))
    with pytest.raises(openai.APIStatusError, match="deadline passed") as err:
        await oai.completions.create(model=settings.model, prompt="x")
    assert err.value.status_code == 408
    with pytest.raises(openai.APIError, match="deadline passed"):
        _ = [c async for c in await oai.completions.create(model=settings.model, prompt="x", stream=True)]
    await worker


async def _readers(redis: aioredis.Redis) -> int:
    """Connections whose last command was XREAD. Cancelling a blocked XREAD closes its connection, so
    this drops to 0 only when nobody reads any more (a between-blocks gap does not count as stopped)."""
    return sum(1 for c in await redis.client_list() if c["cmd"] == "xread")


async def test_whole_answer_stops_reading_when_the_client_leaves(
    settings: Settings, ingress: str, redis_client: aioredis.Redis
) -> None:
    body = {"model": settings.model, "prompt": "nobody answers this"}
    async with httpx.AsyncClient(base_url=ingress) as http:
        call = asyncio.create_task(http.post("/v1/completions", json=body))
        async with asyncio.timeout(10):
            while await _readers(redis_client) == 0:  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # the ingress's XREAD is only visible from Redis's side
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    async with asyncio.timeout(10):
        while await _readers(redis_client) > 0:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    await _cancel_marked(redis_client, settings, count=1)


async def _cancel_marked(redis: aioredis.Redis, settings: Settings, *, count: int) -> None:
    """Wait until ``count`` request keys carry the cancel mark: nobody plays the worker here, so the mark made
    the keys."""
    pattern = settings.names.request_key("*", "*")
    async with asyncio.timeout(10):
        while True:
            keys = [k async for k in redis.scan_iter(match=pattern)]
            marks = [await redis.hget(k, CANCEL_FIELD) for k in keys]
            if marks.count("1") >= count:
                assert len(keys) == count, keys
                return
            await asyncio.sleep(0.05)


async def test_a_stream_whose_client_hangs_up_cancels_its_requests(
    settings: Settings, ingress: str, redis_client: aioredis.Redis
) -> None:
    """As vLLM aborts a request whose client left: the worker stops generating what nobody reads (n=2: both)."""
    body = {"model": settings.model, "messages": USER, "stream": True, "n": 2}
    async with httpx.AsyncClient(base_url=ingress) as http, http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200  # published, and the stream's headers are out; nobody answers
    await _cancel_marked(redis_client, settings, count=2)
    async with httpx.AsyncClient(base_url=ingress) as http:
        assert 'brigade_ingress_cancels_total{reason="hung_up"} 2.0' in (await http.get("/metrics")).text


async def test_max_tokens_left_out_asks_for_what_the_context_leaves(
    oai: openai.AsyncOpenAI, settings: Settings, ingress: str, redis_client: aioredis.Redis
) -> None:
    worker = asyncio.create_task(play_worker(settings, redis_client, count=3))
    await oai.chat.completions.create(model=settings.model, messages=USER)
    await oai.completions.create(model=settings.model, prompt="x")  # legacy completions: 16, as OpenAI's and vLLM's
    async with httpx.AsyncClient(base_url=ingress) as http:
        explicit = await http.post("/v1/completions", json={"model": settings.model, "prompt": "y", "max_tokens": None})
    assert explicit.status_code == 200, explicit.text
    chat, legacy, unbounded = sorted(await worker, key=lambda r: (r.messages is None, r.prompt))
    assert (chat.max_new_tokens, legacy.max_new_tokens, unbounded.max_new_tokens) == (None, 16, None)
    # routed as if it asked for the limit: a few prompt tokens plus 1024 is over the small class's 512
    assert settings.max_new_tokens_limit == 1024 and settings.class_max_cost[0] == 512
    assert (chat.cost_class, legacy.cost_class, unbounded.cost_class) == ("medium", "small", "medium")


def _entry(token: str, req: InferenceRequest) -> TokenLogprob:
    """A token's entry with as many alternatives as the request asked for."""
    top = [TopLogprob(token=f"alt{i}", id=100 + i, logprob=-1.0 - i) for i in range(req.logprobs or 0)]
    return TokenLogprob(token=token, id=len(token), logprob=-0.5, top=top)


def with_logprobs(req: InferenceRequest) -> list[AnyEvent]:
    """ "Hello world" in two token events (the second held a token back a step), then the end-of-sequence
    token's entry on done, as the worker writes them for a request that asked."""
    asked = req.logprobs is not None
    lp = (lambda *tokens: [_entry(t, req) for t in tokens]) if asked else (lambda *tokens: None)
    rid = req.request_id
    return [
        TokenEvent(request_id=rid, seq=0, text="Hello", logprobs=lp("Hello")),
        TokenEvent(request_id=rid, seq=1, text=" world", logprobs=lp(" wor", "ld")),
        DoneEvent(
            request_id=rid,
            seq=2,
            finish_reason="stop",
            prompt_tokens=3,
            completion_tokens=4,
            logprobs=lp("</s>"),
        ),
    ]


TOKENS = ["Hello", " wor", "ld", "</s>"]


async def test_chat_logprobs_whole_and_streamed(
    oai: openai.AsyncOpenAI, settings: Settings, redis_client: aioredis.Redis
) -> None:
    worker = asyncio.create_task(play_worker(settings, redis_client, count=3, script=with_logprobs))
    whole = await oai.chat.completions.create(model=settings.model, messages=USER, logprobs=True, top_logprobs=2)
    stream = await oai.chat.completions.create(model=settings.model, messages=USER, logprobs=True, stream=True)
    chunks = [c async for c in stream]
    # what frameworks send for "off" stays off the wire
    plain = await oai.chat.completions.create(
        model=settings.model,
        messages=USER,
        logprobs=False,
        logit_bias={},
        extra_body={"min_tokens": 0, "stop_token_ids": []},
    )
    requests = await worker
    asked = sorted(r.logprobs for r in requests if r.logprobs is not None)
    assert asked == [0, 2], "top_logprobs is the contract's logprobs; logprobs alone asks for 0 alternatives"
    (off,) = [r for r in requests if r.logprobs is None]
    assert (off.logit_bias, off.min_tokens, off.stop_token_ids) == (None, None, None)

    lp = whole.choices[0].logprobs
    assert lp is not None and lp.content is not None
    assert [t.token for t in lp.content] == TOKENS and whole.choices[0].message.content == "Hello world"
    assert lp.content[1].bytes == list(b" wor") and lp.content[1].logprob == -0.5
    assert [[a.token for a in t.top_logprobs] for t in lp.content] == [["alt0", "alt1"]] * 4
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content or []]
    assert [t.token for t in streamed] == TOKENS and all(t.top_logprobs == [] for t in streamed)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello world"
    assert plain.choices[0].logprobs is None


async def test_completion_logprobs_whole_and_streamed(
    oai: openai.AsyncOpenAI, settings: Settings, redis_client: aioredis.Redis
) -> None:
    worker = asyncio.create_task(play_worker(settings, redis_client, count=2, script=with_logprobs))
    whole = await oai.completions.create(model=settings.model, prompt="x", logprobs=1)
    stream = await oai.completions.create(model=settings.model, prompt="x", logprobs=1, stream=True)
    chunks = [c async for c in stream]
    assert [r.logprobs for r in await worker] == [1, 1]

    lp = whole.choices[0].logprobs
    assert lp is not None
    assert lp.tokens == TOKENS and lp.token_logprobs == [-0.5] * 4
    assert lp.text_offset == [0, 5, 9, 11], "character offsets in the completion"
    assert lp.top_logprobs == [{"alt0": -1.0, token: -0.5} for token in TOKENS], "the generated token always listed"
    parts = [c.choices[0].logprobs for c in chunks if c.choices and c.choices[0].logprobs]
    assert [t for p in parts for t in p.tokens or []] == TOKENS
    assert [o for p in parts for o in p.text_offset or []] == [0, 5, 9, 11], "offsets run on across chunks"


async def test_legacy_logprobs_is_a_count(settings: Settings, ingress: str) -> None:
    async with httpx.AsyncClient(base_url=ingress) as http:
        resp = await http.post("/v1/completions", json={"model": settings.model, "prompt": "x", "logprobs": True})
    assert resp.status_code == 422 and resp.json()["error"]["param"] == "logprobs", resp.text


def echoing(req: InferenceRequest) -> list[AnyEvent]:
    """``with_logprobs``, and the entries of a two-token prompt "x y" on the first event when they were asked."""
    events = with_logprobs(req)
    if req.prompt_logprobs is None:
        return events
    top = [TopLogprob(token=f"alt{i}", id=100 + i, logprob=-1.0 - i) for i in range(req.prompt_logprobs)]
    prompt = [PromptLogprob(token="x", id=1), PromptLogprob(token=" y", id=2, logprob=-2.0, top=top)]
    return [events[0].model_copy(update={"prompt_logprobs": prompt}), *events[1:]]


async def test_completion_echo_puts_the_prompt_and_its_entries_first(
    oai: openai.AsyncOpenAI, settings: Settings, redis_client: aioredis.Redis
) -> None:
    """What an evaluation harness's loglikelihood sends (lm-eval's local-completions: echo, logprobs 1,
    max_tokens 1, temperature 0) and reads: every token's value, prompt first, the first one null."""
    worker = asyncio.create_task(play_worker(settings, redis_client, count=3, script=echoing))

    def scoring(stream: bool) -> Any:
        return oai.completions.create(
            model=settings.model, prompt="x y", logprobs=1, echo=True, max_tokens=1, temperature=0, stream=stream
        )

    whole = await scoring(stream=False)
    stream = await scoring(stream=True)
    chunks = [c async for c in stream]
    text_only = await oai.completions.create(model=settings.model, prompt="x y", echo=True)
    requests = await worker
    assert [(r.logprobs, r.prompt_logprobs) for r in requests] == [(1, 1), (1, 1), (None, None)]

    lp = whole.choices[0].logprobs
    assert whole.choices[0].text == "x yHello world" and lp is not None
    assert lp.tokens == ["x", " y", *TOKENS]
    assert lp.token_logprobs == [None, -2.0, -0.5, -0.5, -0.5, -0.5]
    assert lp.top_logprobs is not None and lp.top_logprobs[:3] == [
        None,
        {"alt0": -1.0, " y": -2.0},
        {"alt0": -1.0, "Hello": -0.5},
    ]
    assert lp.text_offset == [0, 1, 3, 8, 12, 14], "offsets in the echoed text: the answer's start after the prompt"
    ctxlen = 1  # lm-eval's parse: the continuation's tokens are token_logprobs[ctxlen:-1]
    assert sum(lp.token_logprobs[ctxlen:-1]) == pytest.approx(-3.5)

    parts = [c.choices[0] for c in chunks if c.choices]
    assert "".join(p.text for p in parts) == "x yHello world"
    assert parts[0].text.startswith("x y") and parts[0].logprobs is not None
    assert [t for p in parts if p.logprobs for t in p.logprobs.tokens or []] == ["x", " y", *TOKENS]
    assert [o for p in parts if p.logprobs for o in p.logprobs.text_offset or []] == [0, 1, 3, 8, 12, 14]
    assert text_only.choices[0].text == "x yHello world" and text_only.choices[0].logprobs is None


async def test_chat_refuses_echo(oai: openai.AsyncOpenAI, settings: Settings) -> None:
    with pytest.raises(openai.UnprocessableEntityError, match="echo"):
        await oai.chat.completions.create(model=settings.model, messages=USER, extra_body={"echo": True})


def by_prompt(req: InferenceRequest) -> list[AnyEvent]:
    """Answers " <the prompt's length>", and counts the prompt's characters (or ids) as its tokens."""
    length = len(req.prompt_token_ids or req.prompt or "")
    rid = req.request_id
    return [
        TokenEvent(request_id=rid, seq=0, text=f" <{length}>"),
        DoneEvent(request_id=rid, seq=1, finish_reason="length", prompt_tokens=length, completion_tokens=1),
    ]


async def test_many_prompts_and_token_ids_make_one_choice_each(
    oai: openai.AsyncOpenAI, settings: Settings, redis_client: aioredis.Redis
) -> None:
    """A legacy completion's prompt as token ids, or a list of prompts (lm-eval's batches): one request per
    prompt and choice, numbered prompt-major; an echo of ids is their text; usage counts each prompt once."""
    tokenizer = load_tokenizer(settings.model, cache_dir=settings.model_cache_dir)
    ids = tokenizer.encode("x y", add_special_tokens=False).ids
    worker = asyncio.create_task(play_worker(settings, redis_client, count=7, script=by_prompt))
    batch = await oai.completions.create(model=settings.model, prompt=[ids, [5, 6, 7]], n=2, echo=True, max_tokens=1)
    one = await oai.completions.create(model=settings.model, prompt=ids, max_tokens=1)
    stream = await oai.completions.create(
        model=settings.model, prompt=["a", "bcd"], stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    requests = await worker

    assert sorted(tuple(r.prompt_token_ids or ()) for r in requests if r.prompt is None) == sorted(
        [tuple(ids)] * 3 + [(5, 6, 7)] * 2
    )
    assert sorted(r.prompt for r in requests if r.prompt is not None) == ["a", "bcd"]
    echoed = tokenizer.decode([5, 6, 7], skip_special_tokens=False)
    assert [(c.index, c.text) for c in batch.choices] == [
        (0, f"x y <{len(ids)}>"),
        (1, f"x y <{len(ids)}>"),
        (2, f"{echoed} <3>"),
        (3, f"{echoed} <3>"),
    ]
    assert batch.usage is not None and (batch.usage.prompt_tokens, batch.usage.completion_tokens) == (len(ids) + 3, 4)
    assert one.choices[0].text == f" <{len(ids)}>"
    texts: dict[int, str] = {}
    for c in chunks:
        for choice in c.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
    assert texts == {0: " <1>", 1: " <3>"}
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 4, "each prompt once, in any order"


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ([], "this one is empty"),
        (["p"] * 129, "129 prompts × n=2 is over 256 choices"),
        (["a", [1, 2]], "prompt: send a string, a list of strings, token ids (a list of integers) or a list of"),
        ([1.5], "prompt: send a string, a list of strings, token ids"),
    ],
)
async def test_prompt_lists_are_bounded_and_of_one_shape(
    settings: Settings, ingress: str, prompt: list[object], message: str
) -> None:
    async with httpx.AsyncClient(base_url=ingress) as http:
        body = {"model": settings.model, "prompt": prompt, "n": 2}
        resp = await http.post("/v1/completions", json=body)
    assert resp.status_code == 422 and resp.json()["error"]["param"] == "prompt", resp.text
    assert message in resp.json()["error"]["message"]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", {"prompt": [7] * 3000}, "prompt"),  # token ids travel as prompt_token_ids
        ("/v1/completions", {"prompt": "word " * 3000}, "prompt"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "word " * 3000}]}, "messages"),
    ],
)
async def test_a_prompt_over_the_limit_names_the_field_the_caller_sent(
    settings: Settings, ingress: str, path: str, body: dict[str, object], param: str
) -> None:
    async with httpx.AsyncClient(base_url=ingress) as http:
        resp = await http.post(path, json={"model": settings.model, "max_tokens": 4} | body)
    assert resp.status_code == 413, resp.text
    assert resp.json()["error"]["param"] == param and "BRIGADE_MAX_PROMPT_TOKENS" in resp.json()["error"]["message"]


def by_seed(req: InferenceRequest) -> list[AnyEvent]:
    """Answers "seed <its seed>", so a choice shows which request it came from; seed 99 is refused."""
    if req.seed == 99:
        return expired(req)
    return list(say("seed", f" {req.seed}")(req))


async def test_n_choices_are_requests_of_their_own_whole_and_streamed(
    oai: openai.AsyncOpenAI, settings: Settings, redis_client: aioredis.Redis
) -> None:
    worker = asyncio.create_task(play_worker(settings, redis_client, count=5, script=by_seed))
    whole = await oai.chat.completions.create(model=settings.model, messages=USER, n=3, seed=5)
    stream = await oai.completions.create(
        model=settings.model, prompt="x", n=2, seed=20, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    requests = await worker

    assert sorted(r.seed or 0 for r in requests) == [5, 6, 7, 20, 21], "seed + index per choice"
    assert len({r.request_id for r in requests}) == len({r.session_id for r in requests}) == 5
    assert [(c.index, c.message.content) for c in whole.choices] == [(0, "seed 5"), (1, "seed 6"), (2, "seed 7")]
    assert whole.usage is not None and (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (3, 6)

    texts: dict[int, str] = {}
    finished: list[int] = []
    for c in chunks:
        for choice in c.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
            if choice.finish_reason is not None:
                finished.append(choice.index)
    assert texts == {0: "seed 20", 1: "seed 21"} and sorted(finished) == [0, 1]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert len({c.id for c in chunks}) == 1


async def test_a_streamed_choices_error_cancels_the_choices_still_running(
    settings: Settings, ingress: str, redis_client: aioredis.Redis
) -> None:
    """n=2, streamed: the seed-99 choice is refused, which ends the answer; its sibling (left unanswered here, as
    if still generating) is cancelled, not left running for nobody."""

    def refuse_one_hold_other(req: InferenceRequest) -> list[AnyEvent]:
        return expired(req) if req.seed == 99 else []

    worker = asyncio.create_task(play_worker(settings, redis_client, count=2, script=refuse_one_hold_other))
    body = {"model": settings.model, "prompt": "x", "n": 2, "seed": 98, "stream": True}
    async with httpx.AsyncClient(base_url=ingress, timeout=30) as http:
        async with http.stream("POST", "/v1/completions", json=body) as resp:
            text = (await resp.aread()).decode()
        requests = await worker
        metrics = (await http.get("/metrics")).text
    assert "deadline passed" in text and text.rstrip().endswith("data: [DONE]")
    held = next(r for r in requests if r.seed == 98)
    assert await redis_client.hget(settings.names.request_key(held.request_id, held.session_id), CANCEL_FIELD) == "1"
    assert 'brigade_ingress_cancels_total{reason="call_failed"}' in metrics


async def test_one_failed_choice_fails_the_call(
    oai: openai.AsyncOpenAI, settings: Settings, redis_client: aioredis.Redis
) -> None:
    worker = asyncio.create_task(play_worker(settings, redis_client, count=2, script=by_seed))
    with pytest.raises(openai.APIStatusError, match="deadline passed") as err:
        await oai.completions.create(model=settings.model, prompt="x", n=2, seed=98)
    assert err.value.status_code == 408
    await worker
