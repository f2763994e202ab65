"""How a served model writes tool calls and thinking, read off its chat template when the deployment says
``auto`` (the default for ``BRIGADE_TOOL_CALL_PARSER`` and ``BRIGADE_REASONING_PARSER``).

vLLM serves one model and asks for its parsers by name; an ingress fronts every class's model at once, so one
name for all of them would be wrong for some. A model's template shows its family's format: the tags it writes
a call between, and whether a conversation ends inside an opened ``<think>``. Pure: the template is rendered
here, once per model, on a conversation of one turn.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from jinja2.exceptions import TemplateError

from brigade.models.chat_template import ChatRenderer
from brigade.models.tokenizer_config import TokenizerInfo
from producer.call_scanner import MISTRAL_CALLS
from producer.reasoning import CLOSE as THINK_CLOSE
from producer.reasoning import OPEN as THINK_OPEN
from producer.tool_parsers import OPEN, PYTHON_TAG
from schemas.requests import ChatMessage
from schemas.settings import ReasoningParser, Settings, ToolCallParser

log = logging.getLogger(__name__)

# Llama 3.x's turn header, and how its templates write a JSON call back into the conversation
LLAMA3_HEADER, LLAMA3_CALL = "<|start_header_id|>", '"parameters": '
# How pythonic templates write a call back into the conversation (``tool_call.name + '('``), or teach one
# (``[func_name1(params_name1=params_value1, …)]``): Llama 3.2's and Llama 4's pythonic templates, Gemma 3's.
PYTHONIC_CALL = re.compile(r"""\.name\s*\+\s*["']\(|func_name1\(""")


@dataclass(frozen=True, slots=True)
class ModelFormats:
    tool_call_parser: ToolCallParser  # never "auto": what was found, or "none"
    reasoning_parser: ReasoningParser


NO_FORMATS = ModelFormats("none", "none")


def tool_call_format(template: str | None) -> ToolCallParser:
    """The parser whose tags the template writes calls with: Mistral's, Hermes's (Qwen's), a Python list of
    calls, Llama 3's JSON. A
    template whose calls are some other shape inside the same tags (Qwen3-Coder's ``<function=…>`` XML) gets
    none: ``"auto"`` is then refused rather than answered with calls left as text."""
    if template is None:
        return "none"
    if MISTRAL_CALLS in template:
        return "mistral"
    if OPEN in template:
        return "none" if "<function=" in template else "hermes"
    if PYTHONIC_CALL.search(template):
        return "pythonic"
    if LLAMA3_HEADER in template and (PYTHON_TAG in template or LLAMA3_CALL in template):
        return "llama3_json"
    return "none"


def reasoning_format(info: TokenizerInfo) -> ReasoningParser:
    """``deepseek_r1`` where the rendered prompt ends inside an opened ``<think>`` (R1, QwQ, thinking-only
    models), ``qwen3`` where the template knows the tags but leaves the answer to open one (Qwen3's hybrids, and
    R1's first templates, which only cut ``…</think>`` out of earlier answers), else none."""
    template = info.chat_template
    if template is None or (THINK_OPEN not in template and THINK_CLOSE not in template):
        return "none"
    render = ChatRenderer(template, bos_token=info.bos_token or "", eos_token=info.eos_token or "")
    try:
        prompt = render([ChatMessage(role="user", content="Hello")])
    except (TemplateError, TypeError, ValueError):
        return "qwen3"  # it knows the tag; without a prompt to look at, the answer opens it
    opened = prompt.rfind(THINK_OPEN)
    return "deepseek_r1" if opened >= 0 and prompt.find(THINK_CLOSE, opened) < 0 else "qwen3"


def model_formats(settings: Settings, infos: dict[str, TokenizerInfo]) -> dict[str, ModelFormats]:
    """Each served model's parsers: the deployment's, or (``auto``) what its template shows."""
    out = {}
    for model, info in infos.items():
        tools = settings.tool_call_parser
        thinking = settings.reasoning_parser
        found = ModelFormats(
            tool_call_format(info.chat_template) if tools == "auto" else tools,
            reasoning_format(info) if thinking == "auto" else thinking,
        )
        if "auto" in (tools, thinking):
            log.info(
                "model formats read off its chat template",
                extra={
                    "model": model,
                    "tool_call_parser": found.tool_call_parser,
                    "reasoning_parser": found.reasoning_parser,
                },
            )
        out[model] = found
    return out
