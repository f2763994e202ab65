"""``BRIGADE_TOOL_CALL_PARSER`` / ``BRIGADE_REASONING_PARSER`` ``auto`` (the default): each served model's
parsers read off its chat template, so an ingress fronting several model families reads each one's way."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx

from brigade.inprocess import fleet
from brigade.models.registry import resolve_model
from brigade.models.tokenizer import CHAT_TEMPLATE
from brigade.models.tokenizer_config import TokenizerInfo
from producer.model_formats import ModelFormats, model_formats, reasoning_format, tool_call_format
from schemas.settings import Settings

TURNS = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
# Templates cut down to what tells the families apart (the tags as their real templates write them).
QWEN3 = (
    "{% if tools %}Call a function inside <tool_call></tool_call> XML tags.{% endif %}"
    + TURNS
    + "{% for m in messages %}{% if m.reasoning_content %}<think>\n{{ m.reasoning_content }}\n</think>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
R1 = TURNS + "{% if add_generation_prompt %}<｜Assistant｜><think>\n{% endif %}"
R1_FIRST = TURNS + "{% for m in messages %}{{ m.content.split('</think>')[-1] }}{% endfor %}<｜Assistant｜>"
MISTRAL = TURNS + "{% if tools %}[AVAILABLE_TOOLS]{{ tools|tojson }}[/AVAILABLE_TOOLS]{% endif %}[TOOL_CALLS]"
LLAMA_TURNS = "<|start_header_id|>" + TURNS
LLAMA31 = LLAMA_TURNS + "{% for m in messages %}{% if m.tool_calls %}<|python_tag|>{% endif %}{% endfor %}"
LLAMA32 = LLAMA_TURNS + """{% for m in messages %}{{ '"parameters": ' }}{% endfor %}"""
# Llama 3.2's and Llama 4's pythonic templates write a call back as name(param=value); Gemma 3's only teaches it.
PYTHONIC = (
    LLAMA_TURNS + "{% for m in messages %}{% for c in m.tool_calls or [] %}{{- c.name + '(' -}}{% endfor %}{% endfor %}"
)
GEMMA_PYTHONIC = TURNS + "{% if tools %}[func_name1(params_name1=params_value1), func_name2(params)]{% endif %}"
QWEN3_CODER = TURNS + "{% if tools %}Reply with <tool_call><function=NAME><parameter=P>…</tool_call>{% endif %}"
BROKEN_THINKER = "<think>{{ raise_exception('no') }}"


def info(template: str | None) -> TokenizerInfo:
    return TokenizerInfo(eos_token=None, bos_token=None, pad_token=None, chat_template=template, model_max_length=None)


def test_each_family_is_read_off_its_template() -> None:
    found = {name: (tool_call_format(t), reasoning_format(info(t))) for name, t in (
        ("qwen3", QWEN3), ("r1", R1), ("r1-first", R1_FIRST), ("mistral", MISTRAL), ("llama", LLAMA31),
        ("llama32", LLAMA32), ("qwen3-coder", QWEN3_CODER), ("plain", CHAT_TEMPLATE), ("none", None),
        ("pythonic", PYTHONIC), ("gemma", GEMMA_PYTHONIC),
        ("broken", BROKEN_THINKER),
    )}  # fmt: skip
    assert found == {
        "qwen3": ("hermes", "qwen3"),  # the answer opens <think> itself (or not, with thinking turned off)
        "r1": ("none", "deepseek_r1"),  # the prompt ends inside an opened <think>
        "r1-first": ("none", "qwen3"),  # knows </think> only: the answer opens <think> itself
        "mistral": ("mistral", "none"),
        "llama": ("llama3_json", "none"),
        "llama32": ("llama3_json", "none"),  # no <|python_tag|>: its templates write calls back as JSON
        "pythonic": ("pythonic", "none"),  # Llama's header, but calls written back as Python
        "gemma": ("pythonic", "none"),
        "qwen3-coder": ("none", "none"),  # XML calls inside <tool_call>: not hermes's JSON
        "plain": ("none", "none"),
        "none": ("none", "none"),
        "broken": ("none", "qwen3"),
    }


def test_a_named_parser_is_used_for_every_model() -> None:
    infos = {"a": info(QWEN3), "b": info(LLAMA31)}
    detected = model_formats(Settings(), infos)
    assert detected == {"a": ModelFormats("hermes", "qwen3"), "b": ModelFormats("llama3_json", "none")}
    named = model_formats(Settings(tool_call_parser="mistral", reasoning_parser="none"), infos)
    assert set(named.values()) == {ModelFormats("mistral", "none")}


async def test_the_models_list_says_how_each_is_read(settings: Settings, topics: list[str], tmp_path: Path) -> None:
    thinker = tmp_path / "qwen3-shaped"
    shutil.copytree(resolve_model("builtin:tiny", cache_dir=settings.model_cache_dir), thinker)
    config = json.loads((thinker / "tokenizer_config.json").read_text())
    (thinker / "tokenizer_config.json").write_text(json.dumps(config | {"chat_template": QWEN3}))
    served = settings.model_copy(
        update={"tool_call_parser": "auto", "reasoning_parser": "auto", "class_models": {"large": str(thinker)}}
    )
    async with fleet(served, classes=[]) as f, httpx.AsyncClient(base_url=f.url) as http:
        listed = {m["id"]: m for m in (await http.get("/v1/models")).json()["data"]}
    assert (listed[str(thinker)]["tool_call_parser"], listed[str(thinker)]["reasoning_parser"]) == ("hermes", "qwen3")
    assert (listed[settings.model]["tool_call_parser"], listed[settings.model]["reasoning_parser"]) == ("none", "none")
    assert listed[settings.model]["max_model_len"] == 512 and listed[settings.model]["root"] == settings.model
