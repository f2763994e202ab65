"""vLLM's tokenizer endpoints: ``GET /tokenizer_info``, ``POST /tokenize``, ``POST /detokenize``.

Clients that count or build prompts in the model's own tokens use them instead of a local copy of the
tokenizer: lm-eval's ``local-completions`` finds them by itself and then sends token-id prompts. They answer
from the ingress's tokenizers (one per served model, loaded at start); nothing goes through Kafka.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from producer.errors import ApiError
from producer.ingress import Ingress

router = APIRouter(tags=["tokenizer"])  # at the root, where vLLM serves them


class TokenizeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None  # absent: BRIGADE_MODEL
    prompt: str
    add_special_tokens: bool = True
    return_token_strs: bool = False


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
    """``prompt`` as the model's token ids; ``add_special_tokens`` adds what the tokenizer adds around a text."""
    ingress: Ingress = request.app.state.ingress
    model = _served(ingress, body.model)
    ids = await ingress.router.encode(model, body.prompt, add_special_tokens=body.add_special_tokens)
    limit = ingress.tokenizer_info[model].model_max_length
    answer: dict[str, Any] = {"count": len(ids), "max_model_len": limit, "tokens": ids}
    if body.return_token_strs:
        answer["token_strs"] = [ingress.router.decode(model, [i]) for i in ids]
    return answer


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
