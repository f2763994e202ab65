"""What a model directory says about its tokenizer besides ``tokenizer.json``: special tokens, the chat
template, the length limit.

Read by the worker (with the rest of the model's files) and by the ingress, which serves it to clients that
tokenize on their side (``GET /tokenizer_info``, as vLLM does). Hugging Face exports write special tokens as
strings or as AddedToken objects, and the chat template inline, in ``chat_template.jinja`` or in
``chat_template.json``, by age.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NO_LIMIT = 1_000_000  # model_max_length at or over this is Hugging Face's "no limit" (it writes 1e30)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; empty when the file is absent (exports leave out what they do not use)."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else {}


def token_text(value: object) -> str | None:
    """A special token as tokenizer_config writes it: a string, or an AddedToken dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def chat_template(model_dir: Path, tokenizer_config: dict[str, Any]) -> str | None:
    if (model_dir / "chat_template.jinja").is_file():
        return (model_dir / "chat_template.jinja").read_text()
    template = tokenizer_config.get("chat_template") or read_json(model_dir / "chat_template.json").get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


@dataclass(frozen=True, slots=True)
class TokenizerInfo:
    eos_token: str | None
    bos_token: str | None
    pad_token: str | None
    chat_template: str | None
    model_max_length: int | None  # None: the export states no limit


def read_tokenizer_info(model_dir: Path) -> TokenizerInfo:
    config = read_json(model_dir / "tokenizer_config.json")
    limit = config.get("model_max_length")
    return TokenizerInfo(
        eos_token=token_text(config.get("eos_token")),
        bos_token=token_text(config.get("bos_token")),
        pad_token=token_text(config.get("pad_token")),
        chat_template=chat_template(model_dir, config),
        model_max_length=int(limit) if isinstance(limit, int | float) and limit < NO_LIMIT else None,
    )
