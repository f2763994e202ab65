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

- ``pythonic``: Llama 3.2 and Llama 4 with their pythonic templates, Gemma 3 and others prompted so: the whole
  answer a Python list of calls with keyword arguments (inside ``<|python_start|>…<|python_end|>`` or not)::

      [get_weather(city="Oslo"), get_time(zone="CET")]

Pure text handling, no I/O. Streamed, the text before a call goes out as content as it comes (holding back
only what could be the start of one); from the first call on, each call goes out as it is written, its name
and then its arguments (``producer/call_scanner.py``), except pythonic calls, which go out at the end: a Python
expression is only known to be one when it is whole. Calls that do not parse at the end stay text where none
went out yet.
"""

from __future__ import annotations

import ast
import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from producer.call_scanner import (
    MISTRAL_ARGS,
    MISTRAL_CALL_ID,
    MISTRAL_CALLS,
    JsonCallScanner,
    Scanner,
    mistral_scanner,
    tool_call,
)

Parsed = tuple[str | None, list[dict[str, Any]] | None]  # content (None: none) and tool_calls (None: no call)

OPEN, CLOSE = "<tool_call>", "</tool_call>"
PYTHON_TAG = "<|python_tag|>"
PYTHON_START, PYTHON_END = "<|python_start|>", "<|python_end|>"  # Llama 4's
# Models that learnt JSON write its literals in Python calls too; they mean what JSON means.
_JSON_NAMES = {"true": True, "false": False, "null": None}


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


@_all_or_nothing
def parse_call_list(text: str) -> Parsed:
    """A JSON list of calls, what ``tool_choice: "required"`` constrains an answer to; one that does not parse (cut
    short by max_tokens or a stop string) is all content."""
    items = json.loads(text)
    if not isinstance(items, list):
        raise _NotACall(items)
    return None, [_from_object(item) for item in items]


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


def _literal(node: ast.expr) -> Any:
    """A keyword argument's value: a Python literal (or JSON's true/false/null), never code to run."""
    if isinstance(node, ast.Name) and node.id in _JSON_NAMES:
        return _JSON_NAMES[node.id]
    if isinstance(node, ast.List | ast.Tuple):
        return [_literal(item) for item in node.elts]
    if isinstance(node, ast.Dict):
        if any(key is None for key in node.keys):  # ``**spread``
            raise _NotACall(ast.dump(node))
        return {_literal(key): _literal(value) for key, value in zip(node.keys, node.values, strict=True) if key}
    return ast.literal_eval(node)


@_all_or_nothing
def parse_pythonic(text: str) -> Parsed:
    """The answer is calls when it is one Python list of ``name(keyword=literal, …)``; else it is content."""
    body = text.strip().removeprefix(PYTHON_START).removesuffix(PYTHON_END).strip()
    if not body.startswith("["):
        return text, None
    try:
        tree = ast.parse(body, mode="eval")
    except SyntaxError as exc:
        raise _NotACall(body) from exc
    if not isinstance(tree.body, ast.List) or not tree.body.elts:
        raise _NotACall(body)
    calls = []
    for node in tree.body.elts:
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or node.args:
            raise _NotACall(ast.dump(node))
        if any(kw.arg is None for kw in node.keywords):  # ``**spread``
            raise _NotACall(ast.dump(node))
        calls.append(_call(node.func.id, {kw.arg: _literal(kw.value) for kw in node.keywords if kw.arg}))
    return None, calls


@dataclass(frozen=True, slots=True)
class CallFormat:
    """How one model family marks its calls: what starts them, and whether only at the answer's start."""

    parse: Callable[[str], Parsed]
    starts: tuple[str, ...]
    # what reads the calls as they are written, given the text from the first call on (None: not yet known)
    scanner: Callable[[str], Scanner | None]
    at_start: bool = False  # calls are the whole answer or none of it (Llama's)
    keep_special_tokens: bool = False  # the start is a special token, dropped from the text unless kept


def objects(_: str) -> Scanner:
    """Calls as JSON objects one after another (Hermes's blocks, Llama's answer)."""
    return JsonCallScanner(1)


def at_the_end(_: str) -> None:
    """Calls known only once the answer is whole (a Python list): they go out with the end."""
    return None


FORMATS: dict[str, CallFormat] = {
    "hermes": CallFormat(parse_hermes, (OPEN,), objects),
    "mistral": CallFormat(parse_mistral, (MISTRAL_CALLS,), mistral_scanner, keep_special_tokens=True),
    "llama3_json": CallFormat(parse_llama3_json, ("{", PYTHON_TAG), objects, at_start=True),
    "pythonic": CallFormat(parse_pythonic, ("[", PYTHON_START), at_the_end, at_start=True),
}


@dataclass
class CallStream:
    """One streamed choice's text, split as it comes into content to send now and its calls: each one's name,
    then its arguments, as they are written (``producer/call_scanner.py``)."""

    format: CallFormat
    held: str = ""  # text not sent yet: a possible start of a call, or everything from the first call on
    in_call: bool = False
    plain: bool = False  # an at_start format's answer that did not open with a call: all of it is content
    scanner: Scanner | None = None  # from the first call on, once the text says which

    def feed(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        """The content that can go out now, and the ``tool_calls`` deltas."""
        self.held += text
        content = "" if self.in_call else self._content()
        return content, self._scan(text) if self.in_call else []

    @property
    def sent(self) -> bool:
        """Whether calls went out as they were written (the end then adds none)."""
        return self.scanner is not None and self.scanner.sent

    def _scan(self, text: str) -> list[dict[str, Any]]:
        if self.scanner is not None:
            return self.scanner.feed(text)
        if (scanner := self.format.scanner(self.held)) is None:
            return []
        self.scanner = scanner
        return scanner.feed(self.held)  # everything from the first call on, the text that decided included

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
