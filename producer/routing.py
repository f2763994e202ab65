"""Which class a request lands in, with its prompt counted by the tokenizer of the model that class serves.

Each class may serve its own model (``BRIGADE_CLASS_<NAME>_MODEL``), and two models may split the same text
into different numbers of tokens, so a request's cost depends on the class it is weighed for. The router
weighs it class by class, cheapest first, counting once per distinct model: with one model for every class
that is one count, as before. A request naming a ``model`` is weighed only against the classes that serve
that model; one naming a ``cost_class`` is weighed only against that class.

Where the model's tokenizer allows it, the prompt's byte length stands in for its count
(``producer/prompt_bound.py``): the router tokenizes only when that bound cannot decide the class and the
prompt limit, which for short prompts is never.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tokenizers import Encoding, Tokenizer

from producer.errors import ApiError
from producer.prompt_bound import TokenBound, byte_bound
from schemas.costs import CostClass, estimate_cost
from schemas.requests import InferenceRequest
from schemas.settings import Settings

_THREAD_TOKENIZE_CHARS = 4096  # longer texts are tokenized off the event loop
_MESSAGE_OVERHEAD_TOKENS = 4  # role markers a chat template adds per turn, roughly


@dataclass(frozen=True, slots=True)
class Routed:
    cost_class: CostClass
    model: str  # the model that class serves
    # Counted with that model's tokenizer; None when an upper bound under every limit made counting needless.
    prompt_tokens: int | None


def model_not_found(model: str, served: tuple[str, ...]) -> ApiError:
    return ApiError(
        404,
        f"model {model!r} is not served here; served: {', '.join(served)} (GET /v1/models)",
        param="model",
        code="model_not_found",
    )


def prompt_texts(request: InferenceRequest) -> tuple[list[str], int]:
    """The texts the model will read, and the tokens a chat template adds: a few per turn for role markers."""
    if request.prompt is not None:
        return [request.prompt], 0
    messages = request.messages or ()
    texts = [m.content for m in messages]
    texts += [f"{c.function.name} {c.function.arguments}" for m in messages for c in m.tool_calls or ()]
    if request.tools:  # a template for tool use writes them out, much as JSON
        texts.append(json.dumps(request.tools))
    return texts, _MESSAGE_OVERHEAD_TOKENS * len(messages)


async def count_tokens(tokenizer: Tokenizer, request: InferenceRequest) -> int:
    """Prompt tokens, or the messages' tokens plus the chat template's per-turn overhead; token ids are counted."""
    if request.prompt_token_ids is not None:
        return len(request.prompt_token_ids)
    texts, overhead = prompt_texts(request)
    encodings = await encode_texts(tokenizer, texts)
    return sum(len(e.ids) for e in encodings) + overhead


async def encode_texts(tokenizer: Tokenizer, texts: list[str], *, add_special_tokens: bool = True) -> list[Encoding]:
    """On the event loop when short; a long text goes to a thread (tokenizing it would hold every other caller)."""
    if sum(len(t) for t in texts) > _THREAD_TOKENIZE_CHARS:
        return await asyncio.to_thread(tokenizer.encode_batch, texts, add_special_tokens=add_special_tokens)
    return tokenizer.encode_batch(texts, add_special_tokens=add_special_tokens)


class Router:
    """Classes, the model each serves, and a tokenizer per distinct model (loaded once, at start)."""

    def __init__(self, settings: Settings, tokenizers: Mapping[str, Tokenizer]) -> None:
        missing = set(settings.served_models) - set(tokenizers)
        if missing:
            raise ValueError(f"no tokenizer for served model(s) {sorted(missing)}")
        self._settings = settings
        self._tokenizers = tokenizers
        self._bounds: dict[str, TokenBound | None] = {model: byte_bound(tokenizers[model]) for model in tokenizers}
        # Built once: the settings rebuild these tuples on every access, which is per request here.
        self._classes = settings.cost_classes
        self._serving = {model: settings.classes_serving(model) for model in settings.served_models}

    async def encode(self, model: str, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """``text`` as ``model``'s token ids (a long one off the event loop)."""
        (encoding,) = await encode_texts(self._tokenizers[model], [text], add_special_tokens=add_special_tokens)
        return list(encoding.ids)

    def decode(self, model: str, ids: Sequence[int]) -> str:
        """Token ids of ``model``'s vocabulary as text, special tokens included (an echoed prompt)."""
        return str(self._tokenizers[model].decode(list(ids), skip_special_tokens=False))

    def vocab_size(self, model: str) -> int:
        return int(self._tokenizers[model].get_vocab_size(with_added_tokens=True))

    async def route(self, request: InferenceRequest, *, max_tokens_field: str = "max_new_tokens") -> Routed:
        """The cheapest fitting class among those allowed; ``ApiError`` naming the field when there is none.

        404 when ``model`` is served by no class; 422 when ``cost_class`` is unknown or serves another model;
        413 when the request is too costly for every class serving its ``model``.
        """
        s = self._settings
        candidates = self._classes
        if request.model is not None:
            candidates = self._serving.get(request.model, ())
            if not candidates:
                raise model_not_found(request.model, s.served_models)
        if request.cost_class is not None:
            candidates = self._explicit(request, candidates)
        new_tokens = request.new_tokens_cap(s.max_new_tokens_limit)
        counted: dict[str, int] = {}
        cost = 0
        for cls in candidates:
            model = s.model_for(cls.name)
            if model not in counted:
                if self._bound_decides(request, model, cls, new_tokens):
                    return Routed(cost_class=cls, model=model, prompt_tokens=None)
                counted[model] = await count_tokens(self._tokenizers[model], request)
            cost = estimate_cost(prompt_tokens=counted[model], max_new_tokens=new_tokens)
            if cost <= cls.max_cost or request.cost_class is not None:
                return Routed(cost_class=cls, model=model, prompt_tokens=counted[model])
        last = candidates[-1]
        model = s.model_for(last.name)
        asked = (
            f"{max_tokens_field} {new_tokens}"
            if request.max_new_tokens is not None
            else f"{new_tokens} new, the BRIGADE_MAX_NEW_TOKENS_LIMIT an unset {max_tokens_field} may use"
        )
        raise ApiError(
            413,
            f"the request costs {cost} "  # the last class's: the largest serving the model
            f"tokens (prompt {counted[model]} + {asked}), over the bound "
            f"{int(last.max_cost)} of class {last.name!r} (BRIGADE_CLASS_MAX_COST), the largest class serving model "
            f"{model!r}; shorten the prompt, ask for fewer tokens, or leave out model",
            param="model",
            code="too_costly_for_model",
        )

    def _bound_decides(self, request: InferenceRequest, model: str, cls: CostClass, new_tokens: int) -> bool:
        """Would the exact count land in ``cls`` and pass the prompt limit? True only when its bound proves it.

        ``cls`` is the cheapest candidate not yet ruled out, so landing there is what the exact count does too;
        ``new_tokens`` is the request's ``new_tokens_cap``.
        """
        bound_of = self._bounds.get(model)
        if bound_of is None or request.prompt_token_ids is not None:  # ids are counted at no cost
            return False
        texts, overhead = prompt_texts(request)
        bound = bound_of(texts) + overhead
        if bound > self._settings.max_prompt_tokens:
            return False
        fits = estimate_cost(prompt_tokens=bound, max_new_tokens=new_tokens) <= cls.max_cost
        return fits or request.cost_class is not None

    def _explicit(self, request: InferenceRequest, candidates: tuple[CostClass, ...]) -> tuple[CostClass, ...]:
        """An explicit ``cost_class`` wins over the estimate, if it exists and serves the requested model."""
        s = self._settings
        name = request.cost_class
        if name not in s.classes:
            raise ApiError(
                422,
                f"cost_class {name!r} is not one of the configured classes ({', '.join(s.classes)})",
                param="cost_class",
                code="unknown_cost_class",
            )
        chosen = tuple(c for c in candidates if c.name == name)
        if not chosen:
            serving = ", ".join(c.name for c in candidates)
            raise ApiError(
                422,
                f"cost_class {name!r} serves model {s.model_for(str(name))!r}, not {request.model!r}; "
                f"classes serving it: {serving}; leave out cost_class or model",
                param="cost_class",
                code="model_not_in_class",
            )
        return chosen
