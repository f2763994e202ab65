"""tool_choice "auto" with BRIGADE_TOOL_CALL_PARSER=hermes: the calls a model wrote in Qwen's and Hermes's format,
read whole and streamed (unit), and through the chat endpoint with a scripted worker (the format cannot come out
of builtin:tiny's random weights)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import openai
import pytest
import redis.asyncio as aioredis
from openai.types.chat import ChatCompletionMessageFunctionToolCall

from brigade.inprocess import fleet
from producer.tool_parsers import HermesStream, parse_hermes
from schemas.settings import Settings
from tests.test_ingress import play_worker, say

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


@pytest.mark.parametrize("cut", [1, 3, 7, 11, 20])
def test_streamed_content_goes_out_until_a_call_starts(cut: int) -> None:
    text = "Checking <tomato> first. " + CALL
    stream = HermesStream()
    sent = "".join(stream.feed(text[i : i + cut]) for i in range(0, len(text), cut))
    assert sent == "Checking <tomato> first. ", "only what could begin <tool_call> is held back, and released"
    content, calls = stream.end()
    assert content is None and calls is not None and json.loads(calls[0]["function"]["arguments"]) == {"city": "Oslo"}
    plain = HermesStream()
    assert plain.feed("ends with <tool_") == "ends with " and plain.end() == ("<tool_", None)


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
    async with fleet(parsing, classes=[]) as f:
        client = openai.AsyncOpenAI(base_url=f"{f.url}/v1", api_key="unused", max_retries=0)
        worker = asyncio.create_task(play_worker(parsing, redis_client, count=3, script=script))
        ask: Any = [{"role": "user", "content": "Weather in Oslo?"}]
        whole = await client.chat.completions.create(model=settings.model, messages=ask, tools=TOOLS)
        stream = await client.chat.completions.create(model=settings.model, messages=ask, tools=TOOLS, stream=True)
        deltas = [c.choices[0] async for c in stream if c.choices]
        explicit = await client.chat.completions.create(
            model=settings.model, messages=ask, tools=TOOLS, tool_choice="auto", max_tokens=8
        )
        requests = await worker
        await client.close()
    assert all(r.structured_output is None for r in requests), "auto does not constrain the answer"
    message = whole.choices[0].message
    assert message.content == "I will check." and whole.choices[0].finish_reason == "tool_calls"
    (call,) = message.tool_calls or []
    assert isinstance(call, ChatCompletionMessageFunctionToolCall) and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Oslo"}
    assert "".join(d.delta.content or "" for d in deltas) == "I will check. "
    streamed = [t for d in deltas for t in d.delta.tool_calls or ()]
    assert len(streamed) == 1 and streamed[0].function and streamed[0].function.name == "get_weather"
    assert deltas[-1].finish_reason == "tool_calls"
    assert explicit.choices[0].message.tool_calls, "the same script: auto given explicitly reads it too"
