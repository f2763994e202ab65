"""Tool calls read as the model writes them, for streaming: each call's ``id`` and ``name`` go out once the name
is complete, then its arguments piece by piece, as vLLM streams them, instead of every call at the answer's end.

Character scanners, no parsing: what they send is the model's own text. Whether the calls parse as a whole is
decided at the end (``producer/tool_parsers.py``), as for a whole answer. Pure, no I/O.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

MISTRAL_CALLS, MISTRAL_ARGS, MISTRAL_CALL_ID = "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"


def tool_call(name: str, arguments: str, *, index: int | None = None) -> dict[str, Any]:
    """One of OpenAI's ``tool_calls`` (with its ``index`` in a streamed delta)."""
    call: dict[str, Any] = {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function"}
    call["function"] = {"name": name, "arguments": arguments}
    return call if index is None else {"index": index, **call}


@dataclass
class JsonStrings:
    """Whether a character of JSON text is inside a string, escapes followed: what both scanners need to tell
    structure (brackets, colons) from text."""

    inside: bool = False
    escaped: bool = False

    def step(self, ch: str) -> bool:
        """Whether ``ch`` belongs to a string, its quotes included; call it for every character in order."""
        if self.inside:
            if self.escaped:
                self.escaped = False
            elif ch == "\\":
                self.escaped = True
            elif ch == '"':
                self.inside = False
            return True
        self.inside = ch == '"'
        return self.inside


class Scanner(Protocol):
    sent: bool  # some call's first delta went out

    def feed(self, text: str) -> list[dict[str, Any]]: ...


@dataclass
class JsonCallScanner:
    """Calls written as JSON objects ``{"name", "arguments"}`` (or ``"parameters"``), read as they are generated:
    each call's delta goes out once its name is known, then its arguments as they come (as vLLM streams them),
    instead of all of them at the answer's end. A character scanner that follows strings and nesting is enough;
    keys may come in either order, and text outside the objects (a format's tags) is passed over.

    ``call_depth``: the nesting at which a call's keys sit: 2 for a JSON list of calls (``"required"``'s
    answer, Mistral's), 1 for objects one after another (Hermes's blocks, Llama's)."""

    call_depth: int = 2
    index: int = -1  # the call being read
    depth: int = 0
    strings: JsonStrings = field(default_factory=JsonStrings)
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
        was_inside = self.strings.inside
        if self.strings.step(ch):
            if not was_inside:
                self._string_started()
            elif not self.strings.inside:
                self._string_ended()
            elif self.token is not None:
                self.token.append(ch)
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

    def _string_started(self) -> None:
        if self.depth == self.call_depth and not self.reading_arguments:
            self.token = []
            if self._at_arguments():
                self._start_arguments('"')

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


@dataclass
class NamedCallScanner:
    """Mistral's calls from its v11 tokenizer on: ``[TOOL_CALLS]name[ARGS]{…}``, one after another (a
    ``[CALL_ID]…`` between name and arguments dropped). The name is what comes before ``[ARGS]``; the arguments
    run until their object closes."""

    index: int = -1
    head: str = ""  # since the last call's arguments: tags and the next name
    depth: int = 0
    strings: JsonStrings = field(default_factory=JsonStrings)
    reading: bool = False  # inside a call's arguments
    opened: bool = False  # its object has begun
    sent: bool = False

    def feed(self, text: str) -> list[dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        pending: list[str] = []
        for ch in text:
            if self.reading:
                pending.append(ch)
                self._track(ch)
                continue
            self.head += ch
            if self.head.endswith(MISTRAL_ARGS):
                _add(out, self.index, "".join(pending))
                pending = []
                name = self.head[: -len(MISTRAL_ARGS)].replace(MISTRAL_CALLS, "").partition(MISTRAL_CALL_ID)[0]
                self.index, self.head, self.reading, self.opened = self.index + 1, "", True, False
                out[self.index] = tool_call(name.strip(), "", index=self.index)
                self.sent = True
        _add(out, self.index, "".join(pending))
        return list(out.values())

    def _track(self, ch: str) -> None:
        if self.strings.step(ch):
            return
        if ch in "[{":
            self.depth, self.opened = self.depth + 1, True
        elif ch in "]}":
            self.depth -= 1
        if self.opened and self.depth == 0:
            self.reading = False  # the arguments' object closed


def _add(out: dict[int, dict[str, Any]], index: int, arguments: str) -> None:
    if not arguments or index < 0:
        return
    delta = out.setdefault(index, {"index": index, "function": {"arguments": ""}})
    delta["function"]["arguments"] += arguments


def mistral_scanner(held: str) -> Scanner | None:
    """A JSON list after ``[TOOL_CALLS]`` (tokenizer v3) or ``name[ARGS]`` (v11); None until the text says."""
    rest = held[held.find(MISTRAL_CALLS) + len(MISTRAL_CALLS) :].lstrip()
    if not rest:
        return None
    if rest[0] in "[{":
        return JsonCallScanner(2 if rest[0] == "[" else 1)
    return NamedCallScanner()
