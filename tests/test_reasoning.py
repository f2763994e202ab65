"""BRIGADE_REASONING_PARSER: a reasoning model's <think>…</think> comes back as the message's ``reasoning`` (and
``reasoning_content``), the rest as content, from which tool calls are then read; whole (unit) and streamed,
and through the chat endpoint with a scripted worker (the format cannot come out of builtin:tiny's weights)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
import redis.asyncio as aioredis
from llguidance import LLMatcher, LLTokenizer

from brigade.models.registry import load_tokenizer
from brigade.structured import to_grammar
from producer.reasoning import FORMATS, ThinkStream, split_reasoning, think_then
from schemas.requests import StructuredOutput
from schemas.settings import Settings
from tests.test_ingress import say
from tests.test_tool_parsers import only_call, scripted_chat

R1, QWEN3 = FORMATS["deepseek_r1"], FORMATS["qwen3"]


def test_whole_answers_split_as_each_family_writes_them() -> None:
    assert split_reasoning(R1, "Nine is odd.\n</think>\n\nOdd.") == ("Nine is odd.\n", "Odd.")
    assert split_reasoning(R1, "<think>Nine is odd.</think>Odd.") == ("Nine is odd.", "Odd."), "its own tag dropped"
    assert split_reasoning(R1, "Still thinking when max_tokens") == ("Still thinking when max_tokens", "")
    assert split_reasoning(QWEN3, "<think>\nNine is odd.\n</think>\n\nOdd.") == ("\nNine is odd.\n", "Odd.")
    assert split_reasoning(QWEN3, "Odd.") == (None, "Odd."), "thinking turned off: no reasoning at all"
    assert split_reasoning(QWEN3, "<think>\n\n</think>\n\nOdd.") == ("\n\n", "Odd.")
    assert split_reasoning(QWEN3, "<think>cut off") == ("cut off", ""), "cut before </think>: all reasoning"
    assert split_reasoning(QWEN3, "<b>Odd</b> </think>") == (None, "<b>Odd</b> </think>")


@pytest.mark.parametrize("cut", [1, 2, 5, 9])
@pytest.mark.parametrize(
    "fmt, text",
    [
        (QWEN3, "  <think>Is 9 odd? Yes.</think>\n\nOdd. </thin"),
        (R1, "<thi"),
        (R1, "Is 9 odd?</think> Odd."),
        (QWEN3, "<"),
        (QWEN3, "<think>a</think>"),
    ],
)
def test_streamed_as_it_comes_and_the_same_as_whole(fmt: Any, text: str, cut: int) -> None:
    stream = ThinkStream(fmt)
    pieces = [stream.feed(text[i : i + cut]) for i in range(0, len(text), cut)] + [stream.end()]
    reasoning, content = "".join(r for r, _ in pieces), "".join(c for _, c in pieces)
    whole = split_reasoning(fmt, text)
    assert ((reasoning if stream.thought else None), content) == whole
    if whole[0] and len(whole[0]) > 2 * cut + len("</think>"):
        assert sum(1 for r, _ in pieces if r) > 1, "thinking went out before it ended"


@pytest.fixture(scope="module")
def matcher_for(model_cache_dir: Path) -> Callable[[StructuredOutput], Callable[[str], str]]:
    """A spec's verdict on a text, token by token on builtin:tiny's vocabulary: rejected, open or accepting."""
    tokenizer = load_tokenizer("builtin:tiny", cache_dir=model_cache_dir)
    vocabulary = LLTokenizer(tokenizer.to_str(), eos_token=0)

    def verdict(spec: StructuredOutput) -> Callable[[str], str]:
        def on(text: str) -> str:
            matcher = LLMatcher(vocabulary, to_grammar(spec), log_level=0)
            for token in tokenizer.encode(text, add_special_tokens=False).ids:
                if not matcher.consume_token(token):
                    return "rejected"
            return "accepting" if matcher.is_accepting() else "open"

        return on

    return verdict


def test_a_grammar_applies_after_the_thinking(matcher_for: Callable[[StructuredOutput], Callable[[str], str]]) -> None:
    """vLLM constrains a reasoning model's answer after its thinking; composed here as one Lark grammar."""
    schema = StructuredOutput(json_schema={"type": "object", "properties": {"a": {"type": "integer"}}})
    qwen3, r1 = (think_then(schema, f) for f in (QWEN3, R1))
    assert qwen3 is not None and r1 is not None
    on_qwen3, on_r1 = matcher_for(qwen3), matcher_for(r1)
    thought = '<think>is {"a": x} right?</think>\n\n{"a":1}'
    assert on_qwen3(thought) == on_qwen3('{"a":1}') == "accepting", "thinking is optional for qwen3"
    assert on_r1(thought) == on_r1('it is</think>{"a":1}') == "accepting" and on_r1('{"a":1}') == "open"
    assert on_qwen3('<think>x</think>{"b":1}') == on_qwen3("<think>x</think>prose") == "rejected"
    for spec, answer in ((StructuredOutput(regex="a/b+"), "a/bb"), (StructuredOutput(choice=["yes", "no"]), "no")):
        composed = think_then(spec, QWEN3)
        assert composed is not None and matcher_for(composed)("<think>hm</think>" + answer) == "accepting"
    assert think_then(StructuredOutput(grammar='start: "x"'), QWEN3) is None, "a caller's own grammar stays whole"
    assert think_then(StructuredOutput(regex="a("), QWEN3) is None, "one that does not compile is left to the check"


async def test_through_the_chat_endpoint_with_tool_calls(
    settings: Settings, topics: list[str], redis_client: aioredis.Redis
) -> None:
    parsing = settings.model_copy(update={"reasoning_parser": "qwen3", "tool_call_parser": "hermes"})
    script = say(
        "<think>\nThe user wants",
        " the weather; call the tool.\n</",
        "think>\n\n",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>',
    )

    ask: Any = [{"role": "user", "content": "JSON, please"}]

    async def legacy_and_shaped(client: openai.AsyncOpenAI) -> tuple[Any, Any]:
        legacy = await client.completions.create(model=settings.model, prompt="x")
        shaped = await client.chat.completions.create(
            model=settings.model, messages=ask, response_format={"type": "json_object"}
        )
        return legacy, shaped

    got = await scripted_chat(parsing, redis_client, script, legacy_and_shaped, other_calls=2)
    thought = "\nThe user wants the weather; call the tool.\n"
    message = got.whole.choices[0].message
    extra = message.model_extra or {}
    assert extra["reasoning"] == extra["reasoning_content"] == thought
    assert message.content is None and got.whole.choices[0].finish_reason == "tool_calls"
    assert only_call(message) == ("get_weather", {"city": "Oslo"})
    streamed = [(d.delta.model_extra or {}).get("reasoning") for d in got.deltas]
    assert "".join(r for r in streamed if r) == thought and sum(1 for r in streamed if r) > 1
    assert not any(d.delta.content for d in got.deltas), "nothing of the thinking leaks into content"
    assert [t.function.name for d in got.deltas for t in d.delta.tool_calls or () if t.function] == ["get_weather"]
    legacy, shaped = got.other
    assert legacy.choices[0].text.startswith("<think>"), "legacy completions are not split, as in vLLM"
    grammar = got.requests[-1].structured_output.grammar  # type: ignore[union-attr]
    assert grammar is not None and '("<think>" thought WS)? body' in grammar and "%json" in grammar
    assert (shaped.choices[0].message.model_extra or {})["reasoning"] == thought, "thinking, then the JSON"
