"""A reasoning model's thinking, split from its answer as vLLM's ``--reasoning-parser`` does
(``BRIGADE_REASONING_PARSER``): what the model wrote between ``<think>`` and ``</think>`` comes back as the chat
message's ``reasoning`` (and ``reasoning_content``, its older name, which many clients still read), the rest as
``content``, from which tool calls are then read.

- ``deepseek_r1``: DeepSeek-R1 and its distills, QwQ, and Qwen3's thinking-only models, whose templates open
  ``<think>`` in the prompt: the answer starts in thinking (a ``<think>`` the model writes itself is dropped).
- ``qwen3``: Qwen3's hybrid models: thinking only where the answer opens with ``<think>`` (with
  ``chat_template_kwargs`` ``{"enable_thinking": false}`` the template writes an empty block and the answer
  opens without one).

Either way an answer cut off before ``</think>`` (max_tokens) is all reasoning, streamed or not. Streamed,
thinking goes out as it comes, holding back only what could be the start of ``</think>``. Pure text handling,
no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from brigade.structured import grammar_error, lark_rule
from producer.tool_parsers import partial_prefix
from schemas.requests import StructuredOutput

OPEN, CLOSE = "<think>", "</think>"


@dataclass(frozen=True, slots=True)
class ThinkFormat:
    starts_thinking: bool  # the template opened <think> in the prompt


FORMATS: dict[str, ThinkFormat] = {"deepseek_r1": ThinkFormat(True), "qwen3": ThinkFormat(False)}


@dataclass
class ThinkStream:
    """One choice's text, split as it comes into reasoning and content to send now."""

    format: ThinkFormat
    state: Literal["start", "thinking", "answer"] = "start"
    held: str = ""
    thought: bool = False  # the answer had a thinking part (perhaps empty)
    trim: bool = False  # the whitespace a model writes after </think> is not part of the answer

    def feed(self, text: str) -> tuple[str, str]:
        """The reasoning and the content that can go out now."""
        self.held += text
        if self.state == "start" and not self._opened():
            return "", ""
        reasoning = ""
        if self.state == "thinking":
            at = self.held.find(CLOSE)
            if at < 0:
                keep = len(self.held) - partial_prefix(self.held, CLOSE)
                reasoning, self.held = self.held[:keep], self.held[keep:]
                return reasoning, ""
            reasoning, self.held = self.held[:at], self.held[at + len(CLOSE) :]
            self.state, self.trim = "answer", True
        content, self.held = self.held, ""
        if self.trim:
            content = content.lstrip()
            self.trim = not content
        return reasoning, content

    def _opened(self) -> bool:
        """Whether the start is decided: thinking (an opening tag, or a format that starts in it) or answer."""
        head = self.held.lstrip()
        if head.startswith(OPEN):
            self.held, self.state = head[len(OPEN) :], "thinking"
        elif not head or OPEN.startswith(head):
            return False  # whitespace, or what could still become <think>
        else:
            self.state = "thinking" if self.format.starts_thinking else "answer"
        self.thought = self.state == "thinking"
        return True

    def end(self) -> tuple[str, str]:
        """At the answer's end: what is still held, as reasoning (thinking never closed) or content."""
        held, self.held = self.held, ""
        if self.state == "thinking":
            return held, ""
        if self.state == "start" and self.format.starts_thinking and held.strip():
            self.thought = True  # a partial "<thi" that never became the tag: R1 was thinking all along
            return held, ""
        return "", held.lstrip() if self.trim else held


def split_reasoning(format: ThinkFormat, text: str) -> tuple[str | None, str]:
    """A whole answer's reasoning (None: it had no thinking part) and content, as the stream would split it."""
    stream = ThinkStream(format)
    reasoning, content = stream.feed(text)
    rest_reasoning, rest_content = stream.end()
    return (reasoning + rest_reasoning if stream.thought else None), content + rest_content


def think_then(spec: StructuredOutput, format: ThinkFormat) -> StructuredOutput | None:
    """``spec`` with room to think first, as vLLM applies a reasoning model's grammar only after its thinking: a
    Lark grammar whose answer may (qwen3) or must (deepseek_r1) think up to ``</think>`` before ``spec``'s
    language. None where it cannot be composed (a Lark grammar of the caller's own has its own start rule; a
    schema that is not an object) or does not compile: the caller then constrains the whole answer."""
    body = lark_rule(spec)
    if body is None:
        return None
    opening = '"<think>"? thought WS' if format.starts_thinking else '("<think>" thought WS)?'
    grammar = f'start: {opening} body\nthought[lazy]: /(.|\\n)*/ "{CLOSE}"\nWS: /[ \\t\\r\\n]*/\nbody: {body}\n'
    try:
        composed = StructuredOutput(grammar=grammar)
    except ValueError:  # over the contract's size limit with the thinking rules added
        return None
    return composed if grammar_error(composed) is None else None
