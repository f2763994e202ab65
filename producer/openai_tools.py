"""Tool calling on the chat endpoint, as vLLM serves it.

``tool_choice`` a named function: the answer is that function's arguments, constrained to its ``parameters``
schema. ``"required"``: the answer is a JSON list of ``{"name", "parameters"}`` objects, one of the tools each
(vLLM's shape). Either way the answer is structured output (``brigade/structured.py``), so it parses, and it
comes back as ``message.tool_calls`` (streamed as ``delta.tool_calls``). ``"auto"`` (OpenAI's default when tools
are given) lets the model decide, so its calls are read out of its own format by the deployment's parser
(``BRIGADE_TOOL_CALL_PARSER``, ``producer/tool_parsers.py``); without one it is refused, as vLLM does without
``--enable-auto-tool-choice``. ``"none"``: the tools only reach the chat template.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from producer.call_scanner import tool_call
from producer.errors import ApiError
from producer.tool_parsers import FORMATS, CallFormat, Parsed, parse_call_list
from schemas.requests import StructuredOutput
from schemas.settings import ToolCallParser


class FunctionSpec(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None  # left out: a function without parameters
    strict: bool | None = None  # enforced either way


class OpenAITool(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: FunctionSpec


class FunctionName(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


def _parameters(tool: OpenAITool) -> dict[str, Any]:
    return tool.function.parameters or {"type": "object", "properties": {}}


@dataclass(frozen=True, slots=True)
class ToolCalling:
    """How one call's answers become tool calls: ``named``'s arguments, (None) a list of calls, or with
    ``auto``, the calls the model chose to write in its own format (``producer/tool_parsers.py``)."""

    named: str | None
    auto: CallFormat | None = None

    @property
    def keeps_special_tokens(self) -> bool:
        """Whether the answers' text must keep special tokens: the model's calls start with one."""
        return self.auto is not None and self.auto.keep_special_tokens

    def split(self, text: str) -> Parsed:
        """An answer's content and OpenAI's ``tool_calls``. A forced list of calls that does not parse (cut
        short by max_tokens or a stop string) is returned as content, and so is an auto answer without calls."""
        if self.auto is not None:
            return self.auto.parse(text)
        if self.named is not None:
            return None, [tool_call(self.named, text)]
        return parse_call_list(text)

    def finish_reason(self, reason: str, called: bool) -> str:
        """vLLM's and OpenAI's: ``tool_calls`` where the model chose the calls (``required``, ``auto``); a named
        function's answer keeps its own reason."""
        return "tool_calls" if self.named is None and called and reason == "stop" else reason


def plan_tools(
    tools: list[OpenAITool] | None,
    choice: ToolChoice | None,
    *,
    structured: bool,
    parallel: bool = True,
    parser: ToolCallParser = "none",
) -> tuple[StructuredOutput | None, ToolCalling | None]:
    """The constraint and the response mapping a call's ``tools`` / ``tool_choice`` ask for; an ``ApiError``
    naming the field when they cannot be served. ``structured``: the call also asked for structured output;
    ``parallel`` (OpenAI's ``parallel_tool_calls``): ``"required"`` may make more than one call; ``parser``
    (``BRIGADE_TOOL_CALL_PARSER``): how to read the calls of ``"auto"``, which without one is refused."""
    if not tools:
        if isinstance(choice, NamedToolChoice) or choice == "required":
            raise ApiError(422, "tool_choice: there are no tools to call; send tools with it", param="tools")
        return None, None
    if choice is None or choice == "auto":
        if parser != "none":
            return None, ToolCalling(None, auto=FORMATS[parser])
        raise ApiError(
            422,
            'tool_choice: "auto" (the default when tools are given) needs a parser for the model\'s own tool-call '
            "format, and none is known for this model (its chat template shows none of the call tags brigade reads, "
            f"or the deployment set none; BRIGADE_TOOL_CALL_PARSER={'|'.join(FORMATS)} names one, as vLLM's "
            '--tool-call-parser); send "required", a named function ({"type": "function", "function": '
            '{"name": …}}) or "none"',
            param="tool_choice",
        )
    if choice == "none":
        return None, None
    if structured:
        raise ApiError(
            422,
            "tool_choice: a forced tool call constrains the answer itself; leave out response_format and "
            "structured_outputs / guided_* with it",
            param="tool_choice",
        )
    if isinstance(choice, NamedToolChoice):
        named = next((t for t in tools if t.function.name == choice.function.name), None)
        if named is None:
            offered = ", ".join(t.function.name for t in tools)
            raise ApiError(
                422,
                f"tool_choice.function.name: {choice.function.name!r} is not one of the tools ({offered})",
                param="tool_choice.function.name",
            )
        return StructuredOutput(json_schema=_parameters(named)), ToolCalling(named.function.name)
    one_of = [
        {
            "type": "object",
            "properties": {"name": {"type": "string", "enum": [t.function.name]}, "parameters": _parameters(t)},
            "required": ["name", "parameters"],
            "additionalProperties": False,
        }
        for t in tools
    ]
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": one_of}}
    if not parallel:
        schema["maxItems"] = 1
    return StructuredOutput(json_schema=schema), ToolCalling(None)
