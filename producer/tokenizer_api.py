"""vLLM's tokenizer endpoints: ``GET /tokenizer_info``, ``POST /tokenize``, ``POST /detokenize``.

Clients that count or build prompts in the model's own tokens use them instead of a local copy of the
tokenizer: lm-eval's ``local-completions`` finds them by itself and then sends token-id prompts. They answer
from the ingress's tokenizers (one per served model, loaded at start); nothing goes through Kafka.
"""

from __future__ import annotations

import asyncio
from functools import lru_cache
from typing import Any

from fastapi import APIRouter, Request
from jinja2.exceptions import TemplateError
from pydantic import BaseModel, ConfigDict, Field, model_validator

from brigade.models.chat_template import ChatRenderer
from brigade.models.tokenizer_config import TokenizerInfo
from producer.errors import ApiError
from producer.ingress import Ingress
from producer.openai_bodies import OpenAIMessage, chat_turns
from producer.openai_tools import OpenAITool
from schemas.requests import TemplateKwargs

router = APIRouter(tags=["tokenizer"])  # at the root, where vLLM serves them


class TokenizeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None  # absent: BRIGADE_MODEL
    prompt: str | None = None
    # vLLM's chat form: the conversation rendered with the model's chat template, as a worker renders it
    messages: list[OpenAIMessage] | None = Field(default=None, min_length=1)
    tools: list[OpenAITool] | None = None
    add_generation_prompt: bool = True
    chat_template_kwargs: TemplateKwargs | None = None
    # absent: True for a prompt; for messages, what the worker does (the tokenizer's specials unless the
    # rendered template already starts with the BOS text)
    add_special_tokens: bool | None = None
    return_token_strs: bool = False

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeBody:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt (a string) and messages (chat turns)")
        return self


class DetokenizeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    tokens: list[int]


def _served(ingress: Ingress, model: str | None) -> str:
    chosen = model or ingress.settings.model
    ingress.check_model(chosen)
    return chosen


@router.get("/tokenizer_info")
async def tokenizer_info(request: Request, model: str | None = None) -> dict[str, Any]:
    """The special tokens, chat template and length limit of ``model``'s tokenizer (default: BRIGADE_MODEL)."""
    ingress: Ingress = request.app.state.ingress
    chosen = _served(ingress, model)
    info = ingress.tokenizer_info[chosen]
    return {
        "model": chosen,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": info.eos_token,
        "bos_token": info.bos_token,
        "pad_token": info.pad_token,
        "chat_template": info.chat_template,
        "model_max_length": info.model_max_length,
    }


@router.post("/tokenize")
async def tokenize(body: TokenizeBody, request: Request) -> dict[str, Any]:
    """``prompt``, or ``messages`` rendered with the model's chat template, as the model's token ids (for
    messages, the ids a worker would feed); ``add_special_tokens`` adds what the tokenizer adds around a text."""
    ingress: Ingress = request.app.state.ingress
    model = _served(ingress, body.model)
    info = ingress.tokenizer_info[model]
    text, special = body.prompt or "", body.add_special_tokens
    if body.messages is not None:
        text = await asyncio.to_thread(_render, info, body)
        if special is None:
            special = not (info.bos_token and text.startswith(info.bos_token))
    ids = await ingress.router.encode(model, text, add_special_tokens=special is not False)
    limit = info.model_max_length
    answer: dict[str, Any] = {"count": len(ids), "max_model_len": limit, "tokens": ids}
    if body.return_token_strs:
        answer["token_strs"] = [ingress.router.decode(model, [i]) for i in ids]
    return answer


@lru_cache(maxsize=16)
def _renderer(template: str | None, bos_token: str, eos_token: str) -> ChatRenderer:
    return ChatRenderer(template, bos_token=bos_token, eos_token=eos_token)


def _render(info: TokenizerInfo, body: TokenizeBody) -> str:
    """The conversation as the worker's template renders it (a thread: a template is code and may be slow)."""
    renderer = _renderer(info.chat_template, info.bos_token or "", info.eos_token or "")
    tools = [t.model_dump(exclude_none=True) for t in body.tools] if body.tools else None
    try:
        return renderer(
            chat_turns(body.messages or []),
            tools,
            add_generation_prompt=body.add_generation_prompt,
            template_kwargs=body.chat_template_kwargs,
        )
    except TemplateError as exc:
        raise ApiError(422, f"messages: the model's chat template refused them: {exc}", param="messages") from None


@router.post("/detokenize")
async def detokenize(body: DetokenizeBody, request: Request) -> dict[str, Any]:
    """Token ids back to text, special tokens included."""
    ingress: Ingress = request.app.state.ingress
    model = _served(ingress, body.model)
    vocab = ingress.router.vocab_size(model)
    unknown = min((i for i in body.tokens if not 0 <= i < vocab), default=None)
    if unknown is not None:
        raise ApiError(422, f"tokens: {unknown} is not a token id of {model} (ids 0 to {vocab - 1})", param="tokens")
    return {"prompt": ingress.router.decode(model, body.tokens)}
