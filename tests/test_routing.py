"""The router weighs a request with the tokenizer of each class's model, cheapest class first. No broker needed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit

from brigade.models.registry import load_tokenizer
from producer.errors import ApiError
from producer.routing import Router
from schemas.costs import estimate_cost
from schemas.requests import InferenceRequest
from schemas.settings import Settings

WORDS = "/models/word-level"  # a user model directory; only its tokenizer matters here


def word_tokenizer() -> Tokenizer:
    """One token per word: a vocabulary unlike the built-ins' byte-level BPE, so counts differ."""
    tok = Tokenizer(WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = WhitespaceSplit()
    return tok


@pytest.fixture
def router(model_cache_dir: Path) -> Router:
    settings = Settings(_env_file=None, class_models={"large": WORDS}, model_cache_dir=model_cache_dir)
    tiny = load_tokenizer("builtin:tiny", cache_dir=model_cache_dir)
    return Router(settings, {"builtin:tiny": tiny, WORDS: word_tokenizer()})


def request(prompt: str, **fields: object) -> InferenceRequest:
    return InferenceRequest.model_validate({"request_id": "r", "session_id": "s", "prompt": prompt, **fields})


async def test_the_count_is_the_landing_class_models(router: Router, model_cache_dir: Path) -> None:
    prompt = " ".join(["mise-en-place"] * 1500)  # 1500 words, several byte-level tokens each
    tiny = load_tokenizer("builtin:tiny", cache_dir=model_cache_dir)
    tiny_count = len(tiny.encode(prompt).ids)
    assert tiny_count > 4096  # over medium's bound with tiny's tokenizer, so it lands in large ...
    routed = await router.route(request(prompt, max_new_tokens=8))
    assert (routed.cost_class.name, routed.model, routed.prompt_tokens) == ("large", WORDS, 1500)  # ... counted there
    small = await router.route(request("a short order", max_new_tokens=8))
    assert (small.cost_class.name, small.prompt_tokens) == ("small", None)  # its 13 bytes decided: not counted
    explicit = await router.route(request(prompt, cost_class="small"))  # an explicit class is not re-weighed
    assert (explicit.cost_class.name, explicit.prompt_tokens) == ("small", tiny_count)


async def test_the_byte_bound_decides_only_what_the_exact_count_would(router: Router, model_cache_dir: Path) -> None:
    tiny = load_tokenizer("builtin:tiny", cache_dir=model_cache_dir)
    prompt = " ".join(["mise-en-place"] * 40)  # 559 bytes: over small's 512 by its bytes, not by its tokens
    count = len(tiny.encode(prompt).ids)
    assert count + 8 <= 512 < len(prompt.encode()) + 8
    routed = await router.route(request(prompt, max_new_tokens=8))
    assert (routed.cost_class.name, routed.prompt_tokens) == ("small", count)
    # Under the prompt limit by bytes, an explicit class takes it uncounted; over it, the count is needed.
    settings = Settings(_env_file=None, max_prompt_tokens=len(prompt.encode()) - 1, model_cache_dir=model_cache_dir)
    strict = Router(settings, {"builtin:tiny": tiny})
    assert (await strict.route(request(prompt, cost_class="small"))).prompt_tokens == count
    assert (await router.route(request(prompt, cost_class="small"))).prompt_tokens is None


async def test_a_request_too_costly_for_every_class_serving_its_model_is_413(router: Router) -> None:
    with pytest.raises(ApiError) as err:
        await router.route(request(" ".join(["mise-en-place"] * 1500), model="builtin:tiny", max_new_tokens=8))
    assert err.value.status == 413 and err.value.code == "too_costly_for_model"
    assert "over the bound 4096 of class 'medium' (BRIGADE_CLASS_MAX_COST), the largest class serving model" in str(
        err.value
    )
    said = re.search(r"the request costs (\d+) tokens \(prompt (\d+) \+ max_new_tokens 8\)", str(err.value))
    assert said is not None, str(err.value)
    assert int(said[1]) == estimate_cost(prompt_tokens=int(said[2]), max_new_tokens=8) > 4096


async def test_a_null_max_new_tokens_is_routed_as_if_it_asked_for_the_limit(router: Router) -> None:
    assert (await router.route(request("hi", max_new_tokens=None))).cost_class.name == "medium"  # 1 + 1024 > 512
    prompt = "a" * 3500  # one token per byte with tiny's tokenizer
    assert (await router.route(request(prompt, model="builtin:tiny", max_new_tokens=8))).cost_class.name == "medium"
    with pytest.raises(ApiError) as err:
        await router.route(request(prompt, model="builtin:tiny", max_new_tokens=None))
    assert err.value.status == 413
    needle = "(prompt 3500 + 1024 new, the BRIGADE_MAX_NEW_TOKENS_LIMIT an unset max_new_tokens may use)"
    assert needle in str(err.value)


async def test_unknown_model_and_class(router: Router) -> None:
    with pytest.raises(ApiError, match=r"served: builtin:tiny, /models/word-level \(GET /v1/models\)") as err:
        await router.route(request("x", model="llama"))
    assert err.value.status == 404
    with pytest.raises(ApiError, match=r"cost_class 'huge' is not one of the configured classes") as err:
        await router.route(request("x", cost_class="huge"))
    assert err.value.status == 422


def test_every_served_model_needs_a_tokenizer() -> None:
    with pytest.raises(ValueError, match="no tokenizer for served model"):
        Router(Settings(_env_file=None, class_models={"large": WORDS}), {"builtin:tiny": word_tokenizer()})
