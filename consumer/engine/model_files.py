"""What the engine reads from a model directory besides the ONNX graph.

Hugging Face exports spread the facts over config.json, generation_config.json and
tokenizer_config.json, with fields that vary by architecture (``n_positions`` for GPT-2,
``max_position_embeddings`` for Llama) and by age (``chat_template`` inline or in its own file).
This module gathers them into one typed object so the engine never guesses field names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from brigade.models.tokenizer_config import NO_LIMIT, chat_template, read_json, token_text

DEFAULT_CONTEXT = 2048  # when a model states no limit at all
_CONTEXT_KEYS = ("n_positions", "max_position_embeddings", "n_ctx", "seq_length")


def _ids(value: object) -> set[int]:
    if isinstance(value, int):
        return {value}
    if isinstance(value, list):
        return {v for v in value if isinstance(v, int)}
    return set()


@dataclass(frozen=True, slots=True)
class ModelFiles:
    max_context: int
    eos_ids: frozenset[int]
    bos_id: int | None  # fed as the prompt when a request's prompt encodes to nothing
    bos_token: str
    eos_token: str
    chat_template: str | None
    config: dict[str, Any]  # config.json as written, for architecture facts the graph leaves symbolic
    suppress_ids: tuple[int, ...]  # generation_config's suppress_tokens: never sampled


def read_model_files(model_dir: Path, tokenizer: Tokenizer) -> ModelFiles:
    config = read_json(model_dir / "config.json")
    generation = read_json(model_dir / "generation_config.json")
    tok_config = read_json(model_dir / "tokenizer_config.json")
    context = next((int(config[k]) for k in _CONTEXT_KEYS if isinstance(config.get(k), int)), None)
    tok_limit = tok_config.get("model_max_length")
    if context is None and isinstance(tok_limit, int) and tok_limit < NO_LIMIT:
        context = tok_limit
    eos_token = token_text(tok_config.get("eos_token")) or ""
    bos_token = token_text(tok_config.get("bos_token")) or ""
    eos_ids = _ids(config.get("eos_token_id")) | _ids(generation.get("eos_token_id"))
    named_eos = tokenizer.token_to_id(eos_token) if eos_token else None
    if named_eos is not None:
        eos_ids.add(named_eos)
    bos_id = next(iter(_ids(config.get("bos_token_id"))), None)
    if bos_id is None and bos_token:
        bos_id = tokenizer.token_to_id(bos_token)
    return ModelFiles(
        max_context=context or DEFAULT_CONTEXT,
        eos_ids=frozenset(eos_ids),
        bos_id=bos_id if bos_id is not None else min(eos_ids, default=None),
        bos_token=bos_token,
        eos_token=eos_token,
        chat_template=chat_template(model_dir, tok_config),
        config=config,
        suppress_ids=tuple(sorted(_ids(generation.get("suppress_tokens")))),
    )
