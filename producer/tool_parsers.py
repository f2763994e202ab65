"""``tool_choice: "auto"``: reading the calls a model chose to make out of its own text, as vLLM's
``--tool-call-parser`` does. Each model family writes calls its own way (``BRIGADE_TOOL_CALL_PARSER``):

- ``hermes``: Qwen2.5, Qwen3, Hermes 2/3 and many fine-tunes, a block per call, text around them::

      <tool_call>
      {"name": "get_weather", "arguments": {"city": "Oslo"}}
      </tool_call>

- ``mistral``: Mistral's instruct models, after the ``[TOOL_CALLS]`` control token, a JSON list (tokenizer v3)
  or ``name[ARGS]{…}`` per call (v11 on)::

      [TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Oslo"}}]
      [TOOL_CALLS]get_weather[ARGS]{"city": "Oslo"}

- ``llama3_json``: Llama 3.1–3.3's JSON tool calling, the whole answer one object per call (``;`` between
  them), after ``<|python_tag|>`` or not::

      {"name": "get_weather", "parameters": {"city": "Oslo"}}

Pure text handling, no I/O. Streamed, the text before a call goes out as content as it comes (holding back
only what could be the start of one); from the first call on, each call goes out as it is written, its name
and then its arguments (``CallScanner``: the formats whose calls are JSON objects), or, for Mistral's v11
``name[ARGS]{…}``, whole at the end. Calls that do not parse at the end stay text where none went out yet.
"""

from __future__ import annotations

import functools
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Parsed = tuple[str | None, list[dict[str, Any]] | None]  # content (None: none) and tool_calls (None: no call)

OPEN, CLOSE = "<tool_call>", "</tool_call>"
MISTRAL_CALLS, MISTRAL_ARGS, MISTRAL_CALL_ID = "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"
PYTHON_TAG = "<|python_tag|>"


def tool_call(name: str, arguments: str, *, index: int | None = None) -> dict[str, Any]:
    """One of OpenAI's ``tool_calls`` (with its ``index`` in a streamed delta)."""
    call: dict[str, Any] = {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function"}
    call["function"] = {"name": name, "arguments": arguments}
    return call if index is None else {"index": index, **call}


class _NotACall(ValueError):
    """What the model wrote where a call goes is not one; the whole answer stays content."""


def _call(name: Any, arguments: Any) -> dict[str, Any]:
    if not isinstance(name, str) or not name:
        raise _NotACall(name)
    if isinstance(arguments, str):
        arguments = json.loads(arguments)  # arguments sent as JSON text must still be JSON
    if not isinstance(arguments, dict):
        raise _NotACall(arguments)
    return tool_call(name, json.dumps(arguments, ensure_ascii=False))


def _from_object(call: Any) -> dict[str, Any]:
    """``{"name", "arguments"}`` (Hermes's, Mistral's) or ``{"name", "parameters"}`` (Llama's)."""
    if not isinstance(call, dict):
        raise _NotACall(call)
    return _call(call.get("name"), call.get("arguments", call.get("parameters", {})))


def _all_or_nothing(parse: Callable[[str], Parsed]) -> Callable[[str], Parsed]:
    @functools.wraps(parse)
    def parsed(text: str) -> Parsed:
        try:
            return parse(text)
        except (ValueError, TypeError):  # json's errors and _NotACall are ValueErrors
            return text, None

    return parsed


_BLOCK = re.compile(re.escape(OPEN) + r"\s*(.*?)\s*" + re.escape(CLOSE), re.DOTALL)


@_all_or_nothing
def parse_hermes(text: str) -> Parsed:
    """``<tool_call>`` blocks anywhere; the text around them is the content."""
    blocks = list(_BLOCK.finditer(text))
    if not blocks:
        return text, None
    calls = [_from_object(json.loads(block.group(1))) for block in blocks]
    return _BLOCK.sub("", text).strip() or None, calls


@_all_or_nothing
def parse_mistral(text: str) -> Parsed:
    """Everything after the first ``[TOOL_CALLS]`` is calls; the text before it is the content."""
    at = text.find(MISTRAL_CALLS)
    if at < 0:
        return text, None
    calls = []
    for part in text[at + len(MISTRAL_CALLS) :].split(MISTRAL_CALLS):
        part = part.strip()
        if part.startswith(("[", "{")):
            listed = json.loads(part)
            calls += [_from_object(c) for c in (listed if isinstance(listed, list) else [listed])]
            continue
        name, args, arguments = part.partition(MISTRAL_ARGS)
        if not args:
            raise _NotACall(part)
        calls.append(_call(name.partition(MISTRAL_CALL_ID)[0].strip(), arguments))
    if not calls:
        raise _NotACall(text)
    return text[:at].strip() or None, calls


@_all_or_nothing
def parse_llama3_json(text: str) -> Parsed:
    """The answer is calls when it opens with one (after ``<|python_tag|>`` or not); else it is content."""
    body = text.strip()
    body = body.removeprefix(PYTHON_TAG).lstrip()
    if not body.startswith("{"):
        return text, None
    decoder, calls, at = json.JSONDecoder(), [], 0
    while at < len(body):
        call, at = decoder.raw_decode(body, at)
        calls.append(_from_object(call))
        while at < len(body) and (body[at] == ";" or body[at].isspace()):
            at += 1
    return None, calls


@dataclass
class CallScanner:
    """Calls written as JSON objects ``{"name", "arguments"}`` (or ``"parameters"``), read as they are generated:
    each call's delta goes out once its name is known, then its arguments as they come (as vLLM streams them),
    instead of all of them at the answer's end. A character scanner that follows strings and nesting is enough;
    keys may come in either order, and text outside the objects (a format's tags) is passed over.

    ``call_depth``: the nesting at which a call's keys sit: 2 for a JSON list of calls (``"required"``'s
    answer, Mistral's), 1 for objects one after another (Hermes's blocks, Llama's)."""

    call_depth: int = 2
    index: int = -1  # the call being read
    depth: int = 0
    in_string: bool = False
    escaped: bool = False
    key: str = ""  # the call's key whose value comes next
    token: list[str] | None = None  # a string being read at the call's depth: a key, or the name's value
    after_colon: bool = False
    name: str | None = None
    named: bool = False  # the call's first delta (id, name) went out
    sent: bool = False  # some call's did
    arguments: list[str] | None = None  # the call's arguments text not sent yet, while they are read
    reading_arguments: bool = False

    def feed(self, text: str) -> list[dict[str, Any]]:
        """The ``tool_calls`` deltas this text completes (one per call it touches)."""
        out: dict[int, dict[str, Any]] = {}
        for ch in text:
            self._step(ch)
            self._flush(out)
        return list(out.values())

    def _step(self, ch: str) -> None:
        if self.reading_arguments:
            assert self.arguments is not None
            self.arguments.append(ch)
        if self.in_string:
            self._string_char(ch)
        elif ch == '"':
            self.in_string = True
            if self.depth == self.call_depth and not self.reading_arguments:
                self.token = []
                if self._at_arguments():
                    self._start_arguments('"')
        elif ch in "[{":
            if self.depth == self.call_depth - 1 and ch == "{":
                self.index, self.name, self.named, self.key, self.after_colon = self.index + 1, None, False, "", False
            elif self.depth == self.call_depth and self._at_arguments():
                self._start_arguments(ch)
            self.depth += 1
        elif ch in "]}":
            self.depth -= 1
            self.reading_arguments = self.reading_arguments and self.depth > self.call_depth
        elif self.depth == self.call_depth and ch in ":,":
            self.after_colon, self.key = ch == ":", self.key if ch == ":" else ""

    def _string_char(self, ch: str) -> None:
        if self.escaped:
            self.escaped = False
        elif ch == "\\":
            self.escaped = True
        elif ch == '"':
            self.in_string = False
            self._string_ended()
            return
        if self.token is not None:
            self.token.append(ch)

    def _at_arguments(self) -> bool:
        return self.after_colon and self.key in ("arguments", "parameters")

    def _start_arguments(self, first: str) -> None:
        self.reading_arguments, self.arguments = True, [first]

    def _string_ended(self) -> None:
        if self.reading_arguments:
            self.reading_arguments = self.depth > self.call_depth  # a string as the value ends with its quote
            return
        if self.token is None:
            return
        value, self.token = "".join(self.token), None
        if not self.after_colon:
            self.key = value
        elif self.key == "name":
            self.name = value

    def _flush(self, out: dict[int, dict[str, Any]]) -> None:
        if self.name is None or (self.named and not self.arguments):
            return  # nothing new to send
        delta = out.get(self.index)
        if delta is None:
            delta = out[self.index] = {"index": self.index, "function": {"arguments": ""}}
        if not self.named:
            self.named = self.sent = True
            delta.update(tool_call(self.name, "", index=self.index))
        if self.arguments:
            delta["function"]["arguments"] += "".join(self.arguments)
            self.arguments = [] if self.reading_arguments else None


@dataclass(frozen=True, slots=True)
class CallFormat:
    """How one model family marks its calls: what starts them, and whether only at the answer's start."""

    parse: Callable[[str], Parsed]
    starts: tuple[str, ...]
    at_start: bool = False  # calls are the whole answer or none of it (Llama's)
    keep_special_tokens: bool = False  # the start is a special token, dropped from the text unless kept
    call_depth: int | None = None  # calls are JSON objects at this nesting (CallScanner): streamed as written


FORMATS: dict[str, CallFormat] = {
    "hermes": CallFormat(parse_hermes, (OPEN,), call_depth=1),
    # tokenizer v3's JSON list streams; v11's name[ARGS]{…} is read at the end
    "mistral": CallFormat(parse_mistral, (MISTRAL_CALLS,), keep_special_tokens=True, call_depth=2),
    "llama3_json": CallFormat(parse_llama3_json, ("{", PYTHON_TAG), at_start=True, call_depth=1),
}


@dataclass
class CallStream:
    """One streamed choice's text, split as it comes into content to send now and its calls: each one's name,
    then its arguments, as they are written (``CallScanner``), where the format's calls are JSON objects."""

    format: CallFormat
    held: str = ""  # text not sent yet: a possible start of a call, or everything from the first call on
    in_call: bool = False
    plain: bool = False  # an at_start format's answer that did not open with a call: all of it is content
    scanner: CallScanner | None = None  # from the first call on

    def feed(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        """The content that can go out now, and the ``tool_calls`` deltas."""
        if self.in_call:
            self.held += text
            return "", self._scan(text)
        self.held += text
        content = self._content()
        return content, self._scan(self.held) if self.in_call else []

    @property
    def sent(self) -> bool:
        """Whether calls went out as they were written (the end then adds none)."""
        return self.scanner is not None and self.scanner.sent

    def _scan(self, text: str) -> list[dict[str, Any]]:
        if self.format.call_depth is None:
            return []
        self.scanner = self.scanner or CallScanner(self.format.call_depth)
        return self.scanner.feed(text)

    def _content(self) -> str:
        if self.format.at_start:
            return self._feed_at_start()
        found = [at for start in self.format.starts if (at := self.held.find(start)) >= 0]
        if found:
            self.in_call = True
            return self._release(min(found))
        keep = max(partial_prefix(self.held, start) for start in self.format.starts)
        return self._release(len(self.held) - keep)

    def _feed_at_start(self) -> str:
        if self.plain:
            return self._release(len(self.held))
        head = self.held.lstrip()
        if head.startswith(self.format.starts):
            self.in_call = True
            return ""
        if not head or any(start.startswith(head) for start in self.format.starts):
            return ""  # still undecided
        self.plain = True
        return self._release(len(self.held))

    def _release(self, upto: int) -> str:
        out, self.held = self.held[:upto], self.held[upto:]
        return out

    def end(self) -> Parsed:
        """At the answer's end: the held text's calls, or the held text as content when it has none."""
        return self.format.parse(self.held) if self.in_call else (self.held or None, None)


def partial_prefix(text: str, start: str) -> int:
    """How many characters at the end of ``text`` could begin ``start`` (a tag a stream must hold back)."""
    for n in range(min(len(start) - 1, len(text)), 0, -1):
        if text.endswith(start[:n]):
            return n
    return 0
