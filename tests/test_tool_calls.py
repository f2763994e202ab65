"""Forced tool calls on the chat endpoint (a named function, or "required") through a real worker on
builtin:tiny, read with the openai SDK; and the tool turns of an agent loop reaching the chat template."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from openai.types.chat import ChatCompletionMessageFunctionToolCall
from openai.types.chat.chat_completion_chunk import ChoiceDeltaToolCall

from brigade.inprocess import fleet
from brigade.models.chat_template import ChatRenderer
from consumer.engine.interface import GenerationInput
from consumer.engine.onnx_engine import load_engine
from producer.call_scanner import JsonCallScanner
from producer.openai_bodies import ChatBody
from producer.openai_tools import OpenAITool, ToolCalling, plan_tools
from schemas.requests import ChatMessage, FunctionCall, InferenceRequest, SamplingParams, ToolCall
from schemas.settings import Settings
from tests.test_engine import run_all

WEATHER = {
    "type": "object",
    "properties": {"city": {"enum": ["Oslo", "Lima", "Pune"]}, "days": {"type": "integer", "minimum": 1, "maximum": 9}},
    "required": ["city", "days"],
    "additionalProperties": False,
}
CLOCK = {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"]}
TOOLS: Any = [
    {"type": "function", "function": {"name": "get_weather", "description": "Forecast", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "parameters": CLOCK}},
]
ASK: Any = [{"role": "user", "content": "Weather in Oslo?"}]
PARAMETERS = {"get_weather": WEATHER, "get_time": CLOCK}


@pytest.fixture
async def oai(settings: Settings, topics: list[str]) -> AsyncIterator[openai.AsyncOpenAI]:
    # The tools' JSON is hundreds of builtin:tiny's tokens: the small class takes it all, so one worker answers.
    roomy = settings.model_copy(update={"class_max_cost": (4096, 8192)})
    async with fleet(roomy, classes=["small"]) as f:
        client = openai.AsyncOpenAI(base_url=f"{f.url}/v1", api_key="unused", max_retries=0)
        yield client
        await client.close()


def _valid(name: str, arguments: str) -> None:
    jsonschema.validate(json.loads(arguments), PARAMETERS[name])


def _functions(calls: list[Any] | None) -> list[ChatCompletionMessageFunctionToolCall]:
    assert calls and all(isinstance(c, ChatCompletionMessageFunctionToolCall) for c in calls), calls
    return calls


async def test_a_named_function_is_called_whole_and_streamed(oai: openai.AsyncOpenAI, settings: Settings) -> None:
    named: Any = {"type": "function", "function": {"name": "get_weather"}}
    whole = await oai.chat.completions.create(
        model=settings.model, messages=ASK, tools=TOOLS, tool_choice=named, max_tokens=48
    )
    message = whole.choices[0].message
    assert message.content is None and message.tool_calls is not None and whole.choices[0].finish_reason == "stop"
    (call,) = message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    _valid("get_weather", call.function.arguments)

    stream = await oai.chat.completions.create(
        model=settings.model, messages=ASK, tools=TOOLS, tool_choice=named, max_tokens=48, stream=True
    )
    deltas = [c.choices[0] async for c in stream if c.choices]
    pieces = [t for d in deltas for t in d.delta.tool_calls or ()]
    assert len(pieces) > 1, "the arguments stream as they are generated"
    assert pieces[0].id and pieces[0].function and pieces[0].function.name == "get_weather"
    assert all(p.index == 0 and p.id is None for p in pieces[1:])
    _valid("get_weather", "".join(p.function.arguments or "" for p in pieces if p.function))
    assert not any(d.delta.content for d in deltas) and deltas[-1].finish_reason == "stop"


async def test_required_makes_a_list_of_calls_whole_and_streamed(oai: openai.AsyncOpenAI, settings: Settings) -> None:
    whole = await oai.chat.completions.create(
        model=settings.model, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=200, seed=3
    )
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    calls = _functions(choice.message.tool_calls)
    for call in calls:
        _valid(call.function.name, call.function.arguments)
    stream = await oai.chat.completions.create(
        model=settings.model, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=200, seed=3, stream=True
    )
    deltas = [c.choices[0] async for c in stream if c.choices]
    listed = [t for d in deltas for t in d.delta.tool_calls or ()]
    assert [(name, json.loads("".join(pieces))) for name, pieces in assembled(listed)] == [
        (c.function.name, json.loads(c.function.arguments)) for c in calls
    ], "same seed, same calls: the stream sends each call's name, then its arguments (as written) as they come"
    assert len(listed) > len(calls), "the arguments came in more than one delta"
    assert [t.index for t in listed] == sorted(t.index for t in listed) and deltas[-1].finish_reason == "tool_calls"


def assembled(deltas: Sequence[ChoiceDeltaToolCall]) -> list[tuple[str | None, list[str]]]:
    """A streamed list's calls by index: the name its first delta carries (with an id), its arguments' pieces."""
    calls: dict[int, tuple[str | None, list[str]]] = {}
    for d in deltas:
        assert d.function is not None
        if d.index not in calls:
            assert d.id and d.type == "function" and d.function.name, "a call's first delta names it"
            calls[d.index] = (d.function.name, [])
        else:
            assert d.id is None and d.function.name is None, "later deltas carry arguments only"
        calls[d.index][1].append(d.function.arguments or "")
    return list(calls.values())


@pytest.mark.parametrize("cut", [1, 3, 8, 40])
def test_a_listed_calls_name_then_arguments_stream_as_they_come(cut: int) -> None:
    text = json.dumps(
        [
            {"name": "get_weather", "parameters": {"city": 'Os"lo', "days": [1, {"x": "}"}]}},
            {"parameters": {}, "name": "get_time"},  # keys in the other order: the arguments wait for the name
        ],
        separators=(",", ":"),
    )
    reader = JsonCallScanner()
    fed = [d for i in range(0, len(text), cut) for d in reader.feed(text[i : i + cut])]
    assert all(d.get("id") or d["function"]["arguments"] for d in fed), "no empty deltas"
    deltas = [ChoiceDeltaToolCall.model_validate(d) for d in fed]
    assert [(name, json.loads("".join(p))) for name, p in assembled(deltas)] == [
        ("get_weather", {"city": 'Os"lo', "days": [1, {"x": "}"}]}),
        ("get_time", {}),
    ]


async def test_an_agent_loops_tool_turns_are_accepted(oai: openai.AsyncOpenAI, settings: Settings) -> None:
    """The second call of an agent loop: the assistant's call and the tool's result go back in, no call forced."""
    turns: Any = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "-3 C, snow"},
    ]
    answer = await oai.chat.completions.create(
        model=settings.model, messages=turns, tools=TOOLS, tool_choice="none", max_tokens=4
    )
    assert answer.choices[0].message.content and answer.choices[0].message.tool_calls is None


@pytest.mark.parametrize(
    ("body", "needle", "param"),
    [
        ({"tools": TOOLS}, 'tool_choice: "auto" (the default when tools are given) needs a parser', "tool_choice"),
        ({"tools": TOOLS, "tool_choice": "auto"}, 'send "required", a named function', "tool_choice"),
        ({"tool_choice": "required"}, "there are no tools to call", "tools"),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "'nope' is not one of the tools (get_weather, get_time)",
            "tool_choice.function.name",
        ),
        (
            {"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}},
            "a forced tool call constrains the answer itself",
            "tool_choice",
        ),
        (
            {"messages": [{"role": "tool", "content": "x"}]},
            "messages.0: a tool turn names the call it answers in tool_call_id",
            "messages.0",
        ),
    ],
)
async def test_tool_requests_that_cannot_be_served_name_the_field(
    settings: Settings, topics: list[str], body: dict[str, Any], needle: str, param: str
) -> None:
    async with fleet(settings, classes=[]) as f, httpx.AsyncClient(base_url=f.url) as http:
        resp = await http.post("/v1/chat/completions", json={"model": settings.model, "messages": ASK} | body)
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert needle in error["message"] and error["param"] == param, error


def test_the_chat_template_gets_the_tools_and_each_calls_arguments_as_an_object() -> None:
    template = (
        "{% for t in tools %}[{{ t.function.name }}]{% endfor %}"
        "{% for m in messages %}{{ m.role }}:{{ m.content }}"
        "{% for c in m.tool_calls or [] %}{{ c.function.name }}({{ c.function.arguments.city }}){% endfor %}"
        "{% if m.tool_call_id %}#{{ m.tool_call_id }}{% endif %};{% endfor %}"
    )
    call = ToolCall(id="call_1", function=FunctionCall(name="get_weather", arguments='{"city": "Oslo"}'))
    messages = [
        ChatMessage(role="user", content="Weather?"),
        ChatMessage(role="assistant", content="", tool_calls=[call]),
        ChatMessage(role="tool", content="-3 C", tool_call_id="call_1"),
    ]
    rendered = ChatRenderer(template)(messages, TOOLS)
    assert rendered == "[get_weather][get_time]user:Weather?;assistant:get_weather(Oslo);tool:-3 C#call_1;"
    plain = ChatRenderer(None)(messages, TOOLS)
    assert 'assistant: get_weather({"city": "Oslo"})' in plain


def test_parallel_tool_calls_false_makes_required_one_call(model_cache_dir: Path) -> None:
    body = {"model": "m", "messages": ASK, "tools": TOOLS, "tool_choice": "required"}
    for parallel in (True, False):
        asked = ChatBody.model_validate(body | {"parallel_tool_calls": parallel}).output().structured
        assert asked is not None and asked[1] == "tool_choice" and asked[0].json_schema is not None
        assert asked[0].json_schema.get("maxItems") == (None if parallel else 1)
    engine = load_engine(Settings(model="builtin:tiny", model_cache_dir=model_cache_dir, device="cpu"))
    tools = [OpenAITool.model_validate(t) for t in TOOLS]
    counts = {}
    for parallel in (True, False):
        spec, calling = plan_tools(tools, "required", structured=False, parallel=parallel)
        prompt = engine.encode("Weather in Oslo?")
        inputs = [
            GenerationInput(f"s{i}", prompt, 200, SamplingParams(seed=i, structured_output=spec)) for i in range(12)
        ]
        out = run_all(engine.start(inputs))
        assert calling is not None
        counts[parallel] = [len(calling.split("".join(d.text for d in out[i.request_id]))[1] or ()) for i in inputs]
    engine.close()
    assert max(counts[True]) > 1 and set(counts[False]) == {1}, counts


def test_tools_go_with_messages_on_the_contract() -> None:
    with pytest.raises(ValueError, match="tools: allowed only with messages"):
        InferenceRequest(request_id="r", session_id="s", prompt="x", tools=TOOLS)
    with pytest.raises(ValueError, match="tool_calls belong to an assistant turn"):
        ChatMessage(
            role="user", content="x", tool_calls=[ToolCall(id="c", function=FunctionCall(name="f", arguments="{}"))]
        )


def test_a_required_calls_list_becomes_tool_calls_and_a_cut_one_stays_content() -> None:
    """``tool_choice: "required"``'s answer is a JSON list of calls; one cut short (max_tokens, a stop string), or
    not a list of calls, is returned as the answer's content."""
    required = ToolCalling(named=None)
    content, calls = required.split(
        '[{"name": "fire", "parameters": {"table": 4}}, {"name": "plate", "parameters": {}}]'
    )
    assert content is None and calls is not None
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("fire", {"table": 4}),
        ("plate", {}),
    ]
    for cut in ('[{"name": "fire", "param', '{"name": "fire", "parameters": {}}', '["fire"]'):
        assert required.split(cut) == (cut, None)
