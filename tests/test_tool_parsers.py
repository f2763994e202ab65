"""tool_choice "auto" with BRIGADE_TOOL_CALL_PARSER: the calls a model wrote in its family's format (Hermes/Qwen,
Mistral, Llama 3 JSON), read whole and streamed (unit), and through the chat endpoint with a scripted worker (the
formats cannot come out of builtin:tiny's random weights)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import openai
import pytest
import redis.asyncio as aioredis
from openai.types.chat import ChatCompletion, ChatCompletionMessage, ChatCompletionMessageFunctionToolCall
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice

from brigade.inprocess import fleet
from producer.openai_stream import chunks
from producer.openai_tools import ToolCalling
from producer.stream_reader import AnyEvent, Verdict
from producer.tool_parsers import FORMATS, CallStream, parse_hermes, parse_llama3_json, parse_mistral, parse_pythonic
from schemas.events import DoneEvent
from schemas.requests import InferenceRequest
from schemas.settings import Settings
from tests.test_ingress import Script, play_worker, say
from tests.test_tool_calls import assembled

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
TOOLS: Any = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


def test_blocks_become_calls_and_the_rest_content() -> None:
    content, calls = parse_hermes(f"Let me look.\n{CALL}\n{CALL.replace('Oslo', 'Lima')}")
    assert content == "Let me look." and calls is not None and len(calls) == 2
    assert [c["function"]["name"] for c in calls] == ["get_weather"] * 2
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"city": "Oslo"}, {"city": "Lima"}]
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in calls)
    assert parse_hermes(CALL)[0] is None, "no text around the call: content is null"
    assert parse_hermes("plain answer") == ("plain answer", None)
    broken = "<tool_call>{not json}</tool_call>"
    assert parse_hermes(broken) == (broken, None), "a block that does not parse stays what the model wrote"


def fed(stream: CallStream, text: str, cut: int) -> tuple[str, list[tuple[str, Any]]]:
    """``text`` fed ``cut`` characters at a time: the content sent, and each streamed call (name, arguments) put
    back together from its deltas (the first names it, with an id; the rest carry arguments only)."""
    sent, calls = "", {}
    for i in range(0, len(text), cut):
        content, deltas = stream.feed(text[i : i + cut])
        sent += content
        for d in deltas:
            if d["index"] not in calls:
                assert d["id"].startswith("call_") and d["function"]["name"], d
                calls[d["index"]] = [d["function"]["name"], ""]
            else:
                assert "id" not in d and "name" not in d["function"], d
            calls[d["index"]][1] += d["function"]["arguments"]
    return sent, [(name, json.loads(args)) for name, args in calls.values()]


@pytest.mark.parametrize("cut", [1, 3, 7, 11, 20])
def test_streamed_content_goes_out_until_a_call_starts_then_calls_as_written(cut: int) -> None:
    text = "Checking <tomato> first. " + CALL + "\n" + CALL.replace("Oslo", "Lima") + "\nDone."
    stream = CallStream(FORMATS["hermes"])
    sent, calls = fed(stream, text, cut)
    assert sent == "Checking <tomato> first. ", "only what could begin <tool_call> is held back, and released"
    assert calls == [("get_weather", {"city": "Oslo"}), ("get_weather", {"city": "Lima"})]
    content, parsed = stream.end()
    assert stream.sent and content == "Done." and len(parsed or []) == 2, "the end: the text after the calls"
    plain = CallStream(FORMATS["hermes"])
    assert plain.feed("ends with <tool_") == ("ends with ", []) and plain.end() == ("<tool_", None)


def arguments(calls: list[dict[str, Any]] | None) -> list[tuple[str, Any]]:
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls or []]


def test_mistral_calls_in_both_tokenizer_generations() -> None:
    oslo, lima = ("get_weather", {"city": "Oslo"}), ("get_weather", {"city": "Lima"})
    listed = '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Oslo"}}, ' + (
        '{"name": "get_weather", "arguments": "{\\"city\\": \\"Lima\\"}"}]'
    )
    content, calls = parse_mistral("Let me check. " + listed)
    assert content == "Let me check." and arguments(calls) == [oslo, lima], "v3: a JSON list (arguments as text too)"
    v11 = '[TOOL_CALLS]get_weather[ARGS]{"city": "Oslo"}[TOOL_CALLS]get_weather[CALL_ID]a1b2c3d4e[ARGS]{"city": "Lima"}'
    content, calls = parse_mistral(v11)
    assert content is None and arguments(calls) == [oslo, lima], "v11: name[ARGS]{…} per call, call ids dropped"
    assert parse_mistral("no calls here") == ("no calls here", None)
    for broken in ("[TOOL_CALLS]get_weather{", '[TOOL_CALLS][{"city": 1}]', "[TOOL_CALLS]", "[TOOL_CALLS]x[ARGS][1]"):
        assert parse_mistral(broken) == (broken, None), broken


def test_llama3_json_calls_are_the_whole_answer() -> None:
    one = '{"name": "get_weather", "parameters": {"city": "Oslo"}}'
    assert arguments(parse_llama3_json(one)[1]) == [("get_weather", {"city": "Oslo"})]
    assert parse_llama3_json(one)[0] is None
    two = f"<|python_tag|>{one}; {one.replace('Oslo', 'Lima')}"
    assert [a["city"] for _, a in arguments(parse_llama3_json(two)[1])] == ["Oslo", "Lima"]
    for content in ("The weather is fine.", f"Sure: {one}", '{"answer": 42}', one + " and more"):
        assert parse_llama3_json(content) == (content, None), content


def test_pythonic_calls_are_one_python_list_of_keyword_calls() -> None:
    two = "[get_weather(city=\"Oslo\", days=3, units=None), get_time(zone='CET', exact=true, at=[1, -2.5])]"
    content, calls = parse_pythonic(two)
    assert content is None
    assert arguments(calls) == [
        ("get_weather", {"city": "Oslo", "days": 3, "units": None}),
        ("get_time", {"zone": "CET", "exact": True, "at": [1, -2.5]}),
    ]
    llama4 = '<|python_start|>[get_weather(city="Oslo", where={"lat": 59.9, "ok": false})]<|python_end|>'
    assert arguments(parse_pythonic(llama4)[1]) == [
        ("get_weather", {"city": "Oslo", "where": {"lat": 59.9, "ok": False}})
    ]
    assert arguments(parse_pythonic("[now()]")[1]) == [("now", {})]
    not_calls = (
        "The weather is fine.", "[1] A citation", "[]", '[get_weather("Oslo")]', "[os.system(cmd='ls')]",
        "[f(x=__import__('os'))]", "[f(**kw)]", "[f(x=1)] and more", "[f(x={1, 2})]", "[f(x=1",
    )  # fmt: skip
    for content in not_calls:
        assert parse_pythonic(content) == (content, None), content


@pytest.mark.parametrize("cut", [1, 2, 5, 13])
def test_each_format_streams_content_until_its_calls(cut: int) -> None:
    oslo = [("get_weather", {"city": "Oslo"})]
    v11 = CallStream(FORMATS["mistral"])
    two = '[TOOL_CALLS]get_weather[ARGS]{"city": "Oslo"}[TOOL_CALLS]get_weather[CALL_ID]a1b2c3d4e[ARGS]{"city": "Lima"}'
    assert fed(v11, "Checking [TOOLS] first. " + two, cut) == (
        "Checking [TOOLS] first. ",
        [*oslo, ("get_weather", {"city": "Lima"})],
    ), "Mistral's v11 calls, name[ARGS]{…}: the name before [ARGS], the arguments to their object's end"
    content, calls = v11.end()
    assert v11.sent and content is None and len(calls or []) == 2
    v3 = CallStream(FORMATS["mistral"])
    assert fed(v3, 'So: [TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Oslo"}}]', cut) == ("So: ", oslo)
    llama = CallStream(FORMATS["llama3_json"])
    assert fed(llama, ' {"name": "get_weather", "parameters": {"city": "Oslo"}}', cut) == ("", oslo)
    assert llama.sent and llama.end()[0] is None
    undecided = CallStream(FORMATS["llama3_json"])
    assert fed(undecided, "<|python_ta", cut) == ("", []) and undecided.end() == ("<|python_ta", None)
    plain = CallStream(FORMATS["llama3_json"])
    assert fed(plain, "  It is sunny in {Oslo}.", cut) == ("  It is sunny in {Oslo}.", []), "streamed as it comes"
    assert plain.end() == (None, None)
    python = CallStream(FORMATS["pythonic"])
    assert fed(python, '[get_weather(city="Oslo")]', cut) == ("", []), "a Python list is known only when whole"
    content, calls = python.end()
    assert not python.sent and content is None and arguments(calls) == oslo
    prose = CallStream(FORMATS["pythonic"])
    assert fed(prose, "Sunny [as usual].", cut) == ("Sunny [as usual].", [])


@dataclass
class Scripted:
    """Three chat calls answered by one scripted worker: ``whole`` and ``deltas`` (streamed) with TOOLS, then
    the caller's ``other``; ``requests``: what the worker read, in that order."""

    requests: list[InferenceRequest]
    whole: ChatCompletion
    deltas: list[ChunkChoice]
    other: Any


async def scripted_chat(
    settings: Settings,
    redis_client: aioredis.Redis,
    script: Script,
    other: Callable[[openai.AsyncOpenAI], Awaitable[Any]] | None = None,
    *,
    other_calls: int = 1,
) -> Scripted:
    """``other`` defaults to the same question without tools."""
    ask: Any = [{"role": "user", "content": "Weather in Oslo?"}]
    if other is None:

        def other(client: openai.AsyncOpenAI) -> Awaitable[Any]:
            return client.chat.completions.create(model=settings.model, messages=ask, max_tokens=4)

    async with fleet(settings, classes=[]) as f:
        client = openai.AsyncOpenAI(base_url=f"{f.url}/v1", api_key="unused", max_retries=0)
        worker = asyncio.create_task(play_worker(settings, redis_client, count=2 + other_calls, script=script))
        whole = await client.chat.completions.create(model=settings.model, messages=ask, tools=TOOLS)
        stream = await client.chat.completions.create(model=settings.model, messages=ask, tools=TOOLS, stream=True)
        deltas = [c.choices[0] async for c in stream if c.choices]
        answered = await other(client)
        requests = await worker
        await client.close()
    return Scripted(requests, whole, deltas, answered)


def only_call(message: ChatCompletionMessage) -> tuple[str, Any]:
    (call,) = message.tool_calls or []
    assert isinstance(call, ChatCompletionMessageFunctionToolCall)
    return call.function.name, json.loads(call.function.arguments)


async def test_auto_through_the_chat_endpoint(
    settings: Settings, topics: list[str], redis_client: aioredis.Redis
) -> None:
    parsing = settings.model_copy(update={"tool_call_parser": "hermes"})
    script = say(
        "I will check. ",
        "<tool_",
        "call>\n",
        '{"name": "get_weather", ',
        '"arguments": {"city": "Oslo"}}',
        "\n</tool_call>",
    )
    ask: Any = [{"role": "user", "content": "Weather in Oslo?"}]
    got = await scripted_chat(
        parsing,
        redis_client,
        script,
        lambda client: client.chat.completions.create(
            model=settings.model, messages=ask, tools=TOOLS, tool_choice="auto", max_tokens=8
        ),
    )
    assert all(r.structured_output is None for r in got.requests), "auto does not constrain the answer"
    message = got.whole.choices[0].message
    assert message.content == "I will check." and got.whole.choices[0].finish_reason == "tool_calls"
    assert only_call(message) == ("get_weather", {"city": "Oslo"})
    assert "".join(d.delta.content or "" for d in got.deltas) == "I will check. "
    streamed = [t for d in got.deltas for t in d.delta.tool_calls or ()]
    assert [(name, json.loads("".join(p))) for name, p in assembled(streamed)] == [("get_weather", {"city": "Oslo"})]
    assert len(streamed) > 1, "the name went out before the arguments were written"
    assert got.deltas[-1].finish_reason == "tool_calls"
    assert got.other.choices[0].message.tool_calls, "the same script: auto given explicitly reads it too"


async def test_pythonic_auto_through_the_chat_endpoint(
    settings: Settings, topics: list[str], redis_client: aioredis.Redis
) -> None:
    """Llama 3.2/4's pythonic calls: nothing streams until the list is whole, then the calls go out at once."""
    parsing = settings.model_copy(update={"tool_call_parser": "pythonic"})
    script = say("[get_weather(", 'city="Oslo"), ', "get_time(zone='CET')]")
    got = await scripted_chat(parsing, redis_client, script)
    message = got.whole.choices[0].message
    assert message.content is None and got.whole.choices[0].finish_reason == "tool_calls"
    expected = [("get_weather", {"city": "Oslo"}), ("get_time", {"zone": "CET"})]
    assert [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []
            if isinstance(c, ChatCompletionMessageFunctionToolCall)] == expected  # fmt: skip
    assert "".join(d.delta.content or "" for d in got.deltas) == ""
    streamed = [t for d in got.deltas for t in d.delta.tool_calls or ()]
    assert [(name, json.loads("".join(p))) for name, p in assembled(streamed)] == expected
    assert got.deltas[-1].finish_reason == "tool_calls"
    assert got.other.choices[0].message.content.startswith("[get_weather("), "without tools it is text"


async def test_mistral_auto_keeps_special_tokens_on_the_wire(
    settings: Settings, topics: list[str], redis_client: aioredis.Redis
) -> None:
    """Mistral's calls start with a special token, which workers drop from the text by default: the requests of
    an auto call ask for it to be kept (vLLM does the same); the others stay off that wire field."""
    parsing = settings.model_copy(update={"tool_call_parser": "mistral"})
    script = say("Checking. ", "[TOOL_", 'CALLS]get_weather[ARGS]{"city": ', '"Oslo"}')
    got = await scripted_chat(parsing, redis_client, script)
    assert [r.skip_special_tokens for r in got.requests] == [False, False, None]
    message = got.whole.choices[0].message
    assert message.content == "Checking." and got.whole.choices[0].finish_reason == "tool_calls"
    assert only_call(message) == ("get_weather", {"city": "Oslo"})
    assert "".join(d.delta.content or "" for d in got.deltas) == "Checking. "
    streamed = [t for d in got.deltas for t in d.delta.tool_calls or ()]
    assert [(name, json.loads("".join(p))) for name, p in assembled(streamed)] == [("get_weather", {"city": "Oslo"})]


async def test_calls_streamed_then_cut_short_stand_and_their_text_is_not_sent_again() -> None:
    """A call that went out as it was written stays the answer when max_tokens cuts the rest (the whole no longer
    parses): the stream does not send the same text again as content, and finishes with ``length``."""
    request = InferenceRequest(request_id="r", session_id="s", prompt="x")
    words = ["Sure. ", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Os']
    events = [*say(*words)(request)[:-1]]
    events.append(DoneEvent(request_id="r", seq=2, finish_reason="length", prompt_tokens=3, completion_tokens=2))

    async def judged() -> AsyncIterator[tuple[AnyEvent, Verdict]]:
        for event in events:
            yield event, Verdict.KEEP

    payloads = [
        json.loads(p)
        async for p in chunks(
            "chat",
            [judged()],
            request_id="r",
            model="m",
            created=0,
            asked_logprobs=False,
            include_usage=False,
            tools=ToolCalling(None, auto=FORMATS["hermes"]),
        )
        if p != "[DONE]"
    ]
    deltas = [p["choices"][0]["delta"] for p in payloads]
    assert "".join(d.get("content") or "" for d in deltas) == "Sure. ", "the call's text is not content"
    calls = [c for d in deltas for c in d.get("tool_calls", [])]
    assert calls[0]["function"]["name"] == "get_weather" and calls[-1]["function"]["arguments"].endswith('"Os')
    assert payloads[-1]["choices"][0]["finish_reason"] == "length"
