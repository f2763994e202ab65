"""``tool_choice: "auto"``: reading the calls a model chose to make out of its own text, as vLLM's
``--tool-call-parser`` does. Each model family writes calls its own way; brigade reads Hermes's, which Qwen2.5,
Qwen3, Hermes 2/3 and many fine-tunes share (``BRIGADE_TOOL_CALL_PARSER=hermes``)::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Oslo"}}
    </tool_call>

Pure text handling, no I/O. Streamed, the text before a call goes out as content as it comes (holding back
only what could be the start of ``<tool_call>``); from the first call on, the rest is held and read whole at
the end. A block that does not parse stays text: the caller sees what the model wrote.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

OPEN, CLOSE = "<tool_call>", "</tool_call>"


def tool_call(name: str, arguments: str, *, index: int | None = None) -> dict[str, Any]:
    """One of OpenAI's ``tool_calls`` (with its ``index`` in a streamed delta)."""
    call: dict[str, Any] = {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function"}
    call["function"] = {"name": name, "arguments": arguments}
    return call if index is None else {"index": index, **call}


_BLOCK = re.compile(re.escape(OPEN) + r"\s*(.*?)\s*" + re.escape(CLOSE), re.DOTALL)


def parse_hermes(text: str) -> tuple[str | None, list[dict[str, Any]] | None]:
    """The content around the calls (None when there is none) and OpenAI's ``tool_calls`` (None: no call).

    All or nothing: when any block fails to parse, the whole text is content, as the model wrote it.
    """
    blocks = list(_BLOCK.finditer(text))
    if not blocks:
        return text, None
    calls = []
    for block in blocks:
        try:
            call = json.loads(block.group(1))
            name, arguments = call["name"], call.get("arguments", call.get("parameters", {}))
        except (ValueError, TypeError, KeyError):
            return text, None
        if not isinstance(name, str):
            return text, None
        arguments_text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
        calls.append(tool_call(name, arguments_text))
    content = _BLOCK.sub("", text).strip()
    return content or None, calls


@dataclass
class HermesStream:
    """One streamed choice's text, split as it comes into content to send now and calls read at the end."""

    held: str = ""  # text not sent yet: a possible start of <tool_call>, or everything from the first call on
    in_call: bool = False

    def feed(self, text: str) -> str:
        """The content that can go out now."""
        self.held += text
        if self.in_call:
            return ""
        at = self.held.find(OPEN)
        if at >= 0:
            self.in_call = True
            out, self.held = self.held[:at], self.held[at:]
            return out
        keep = _partial_open(self.held)
        out, self.held = self.held[: len(self.held) - keep], self.held[len(self.held) - keep :]
        return out

    def end(self) -> tuple[str | None, list[dict[str, Any]] | None]:
        """At the answer's end: the held text's calls, or the held text as content when it has none."""
        return parse_hermes(self.held) if self.in_call else (self.held or None, None)


def _partial_open(text: str) -> int:
    """How many characters at the end of ``text`` could begin ``<tool_call>``."""
    for n in range(min(len(OPEN) - 1, len(text)), 0, -1):
        if text.endswith(OPEN[:n]):
            return n
    return 0
