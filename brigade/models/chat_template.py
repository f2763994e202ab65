"""A conversation as the model reads it: its chat template (sandboxed, as transformers renders it) applied
to the turns and tools, or plain lines for a model without one.

Shared by the worker, which renders every chat request, and the ingress's ``/tokenize``, whose count for a
conversation must be the worker's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from schemas.requests import ChatMessage


def _raise(message: str) -> None:
    raise TemplateError(message)


class ChatRenderer:
    """The model's own template when it has one (sandboxed, as transformers renders it), else plain lines."""

    def __init__(self, template: str | None, *, bos_token: str = "", eos_token: str = "") -> None:
        self._tokens = {"bos_token": bos_token, "eos_token": eos_token}
        self._template = None
        if template is not None:
            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = _raise
            self._template = env.from_string(template)

    def __call__(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[dict[str, Any]] | None = None,
        *,
        add_generation_prompt: bool = True,
        template_kwargs: Mapping[str, Any] | None = None,
    ) -> str:
        """``tools`` (OpenAI's shape) go to the template as transformers passes them; without a template, where
        nothing could describe them, the plain lines show each call and result as text. ``template_kwargs``
        (vLLM's ``chat_template_kwargs``): more variables for the template, under the ones set here."""
        turns = [template_turn(m) for m in messages]
        if self._template is None:
            lines = "".join(f"{m.role}: {_plain(m)}\n" for m in messages)
            return lines + ("assistant:" if add_generation_prompt else "")
        return self._template.render(
            **(template_kwargs or {}),
            messages=turns,
            tools=list(tools) if tools else None,
            add_generation_prompt=add_generation_prompt,
            **self._tokens,
        )


def template_turn(message: ChatMessage) -> dict[str, Any]:
    """A turn as chat templates read it: tool calls' arguments as objects (as transformers and vLLM give them;
    templates such as Llama 3.1's write them out with ``tojson``), kept as text when they are not JSON."""
    turn: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls is not None:
        turn["tool_calls"] = [
            {
                "id": c.id,
                "type": c.type,
                "function": {"name": c.function.name, "arguments": _arguments(c.function.arguments)},
            }
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        turn["tool_call_id"] = message.tool_call_id
    return turn


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _plain(message: ChatMessage) -> str:
    calls = " ".join(f"{c.function.name}({c.function.arguments})" for c in message.tool_calls or ())
    return " ".join(part for part in (message.content, calls) if part)
