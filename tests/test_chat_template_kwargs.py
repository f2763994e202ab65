"""vLLM's ``chat_template_kwargs`` (Qwen3's ``{"enable_thinking": false}``): more variables for the model's chat
template, carried on the contract and rendered by the worker, and by ``/tokenize`` the same way."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from pydantic import ValidationError

from brigade.inprocess import fleet
from brigade.models.chat_template import ChatRenderer
from brigade.models.registry import resolve_model
from brigade.models.tokenizer import CHAT_TEMPLATE
from schemas.requests import MAX_TEMPLATE_KWARGS_CHARS, ChatMessage, InferenceRequest
from schemas.settings import Settings

# Qwen3's switch, reduced: with thinking turned off the template opens an empty think block for the answer.
THINKING = CHAT_TEMPLATE + (
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}"
)
ASK = [{"role": "user", "content": "What is on the menu?"}]
OFF = {"enable_thinking": False}


def test_the_template_reads_them_under_its_own_variables() -> None:
    render = ChatRenderer(THINKING)
    turns = [ChatMessage(role="user", content="hi")]
    assert render(turns) == "user: hi\nassistant:"
    assert render(turns, template_kwargs=OFF) == "user: hi\nassistant:<think>\n\n</think>\n\n"
    assert render(turns, template_kwargs={"enable_thinking": True}) == render(turns)


def test_the_contract_bounds_them() -> None:
    base: dict[str, Any] = {"request_id": "r", "session_id": "s", "messages": ASK}
    assert InferenceRequest.model_validate(base | {"chat_template_kwargs": OFF}).chat_template_kwargs == OFF
    with pytest.raises(ValidationError, match="messages, add_generation_prompt: set by the worker"):
        InferenceRequest.model_validate(base | {"chat_template_kwargs": {"messages": [], "add_generation_prompt": 0}})
    with pytest.raises(ValidationError, match=f"over {MAX_TEMPLATE_KWARGS_CHARS} characters"):
        InferenceRequest.model_validate(base | {"chat_template_kwargs": {"notes": "x" * MAX_TEMPLATE_KWARGS_CHARS}})
    with pytest.raises(ValidationError, match="chat_template_kwargs: allowed only with messages"):
        InferenceRequest.model_validate(base | {"messages": None, "prompt": "hi", "chat_template_kwargs": OFF})
    assert b"chat_template_kwargs" not in InferenceRequest.model_validate(base).to_bytes(), "off stays off the wire"
    assert b"trim_history" not in InferenceRequest.model_validate(base).to_bytes(), "off stays off the wire"
    with pytest.raises(ValidationError, match="trim_history: allowed only with messages"):
        InferenceRequest.model_validate(base | {"messages": None, "prompt": "hi", "trim_history": False})


@pytest.fixture
def thinking_model(model_cache_dir: Path, tmp_path: Path) -> Path:
    """builtin:tiny exported to a directory of its own, its tokenizer_config carrying THINKING."""
    model_dir = tmp_path / "thinking-tiny"
    shutil.copytree(resolve_model("builtin:tiny", cache_dir=model_cache_dir), model_dir)
    config_path = model_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps(config | {"chat_template": THINKING}))
    return model_dir


async def test_through_the_chat_endpoint_and_tokenize(
    settings: Settings, topics: list[str], thinking_model: Path
) -> None:
    model = str(thinking_model)
    served = settings.model_copy(update={"model": model, "class_models": {}})
    async with fleet(served, classes=["small"]) as f, httpx.AsyncClient(base_url=f.url, timeout=30) as http:
        client = openai.AsyncOpenAI(base_url=f"{f.url}/v1", api_key="unused", max_retries=0)
        ask: Any = ASK
        plain = await client.chat.completions.create(model=model, messages=ask, max_tokens=1, temperature=0)
        off = await client.chat.completions.create(
            model=model, messages=ask, max_tokens=1, temperature=0, extra_body={"chat_template_kwargs": OFF}
        )
        counted = [
            (await http.post("/tokenize", json={"model": model, "messages": ASK, **extra})).json()["count"]
            for extra in ({}, {"chat_template_kwargs": OFF})
        ]
        refused = await http.post(
            "/v1/chat/completions", json={"model": model, "messages": ASK, "chat_template_kwargs": {"tools": []}}
        )
        not_served = await http.post(
            "/v1/chat/completions", json={"model": model, "messages": ASK, "continue_final_message": True}
        )
        await client.close()
    assert plain.usage is not None and off.usage is not None
    assert off.usage.prompt_tokens > plain.usage.prompt_tokens, "the worker rendered the template with the flag"
    assert counted == [plain.usage.prompt_tokens, off.usage.prompt_tokens], "/tokenize counts what the worker ran"
    assert refused.status_code == 422
    # The validator's own words, without pydantic's "Value error, " lead.
    assert refused.json()["error"]["message"].startswith("chat_template_kwargs: tools: set by the worker"), refused.text
    assert not_served.status_code == 422 and "continue_final_message" in not_served.text
