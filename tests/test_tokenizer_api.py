"""vLLM's tokenizer endpoints on the ingress, as lm-eval's remote tokenizer calls them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from brigade.inprocess import fleet
from brigade.models.registry import load_tokenizer
from consumer.engine.onnx_engine import load_engine
from schemas.requests import ChatMessage
from schemas.settings import Settings


@pytest.fixture
async def http(settings: Settings, topics: list[str]) -> AsyncIterator[httpx.AsyncClient]:
    async with fleet(settings, classes=[]) as f, httpx.AsyncClient(base_url=f.url) as client:
        yield client


async def test_tokenize_and_detokenize_are_the_models_tokenizer(settings: Settings, http: httpx.AsyncClient) -> None:
    tokenizer = load_tokenizer(settings.model, cache_dir=settings.model_cache_dir)
    text = "The expediter calls the ticket"
    info = (await http.get("/tokenizer_info")).json()
    plain = (await http.post("/tokenize", json={"prompt": text, "add_special_tokens": False})).json()
    strs = (
        await http.post("/tokenize", json={"model": settings.model, "prompt": text, "return_token_strs": True})
    ).json()
    back = (await http.post("/detokenize", json={"tokens": plain["tokens"]})).json()

    assert info["model"] == settings.model and "eos_token" in info and info["model_max_length"] > 0
    assert plain["tokens"] == tokenizer.encode(text, add_special_tokens=False).ids
    assert plain["count"] == len(plain["tokens"]) and plain["max_model_len"] == info["model_max_length"]
    assert strs["tokens"] == tokenizer.encode(text).ids and "".join(strs["token_strs"]).strip() == text
    assert back == {"prompt": text}


async def test_tokenizer_errors_name_the_field(http: httpx.AsyncClient) -> None:
    unknown = await http.post("/tokenize", json={"model": "nope", "prompt": "x"})
    both = await http.post("/tokenize", json={"prompt": "x", "messages": [{"role": "user", "content": "x"}]})
    bad_turn = await http.post("/tokenize", json={"messages": [{"role": "tool", "content": "x"}]})
    outside = await http.post("/detokenize", json={"tokens": [1, 10**9]})
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "model", unknown.text
    assert both.status_code == 422 and "give exactly one of prompt (a string) and messages" in both.text, both.text
    assert bad_turn.status_code == 422 and bad_turn.json()["error"]["param"] == "messages.0", bad_turn.text
    assert outside.status_code == 422 and outside.json()["error"]["param"] == "tokens", outside.text
    assert f"{10**9} is not a token id" in outside.json()["error"]["message"]


async def test_a_conversation_counts_as_the_worker_will_feed_it(settings: Settings, http: httpx.AsyncClient) -> None:
    """vLLM's chat form of /tokenize: the model's chat template over the turns (and tools), then the worker's
    encoding, so a client sizing a conversation gets the count the worker will see."""
    engine = load_engine(settings)
    tools = [{"type": "function", "function": {"name": "fire", "parameters": {"type": "object"}}}]
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Fire table four"}]
    chat = (await http.post("/tokenize", json={"messages": turns, "tools": tools})).json()
    bare = (await http.post("/tokenize", json={"messages": turns, "add_generation_prompt": False})).json()
    expected = engine.encode(engine.render_chat([ChatMessage.model_validate(t) for t in turns], tools))
    engine.close()
    assert chat["tokens"] == expected and chat["count"] == len(expected)
    assert bare["count"] < chat["count"] and chat["tokens"][: bare["count"]] == bare["tokens"]
