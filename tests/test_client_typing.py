"""Pins the client's public types (checked by mypy) and its keyword-only calling convention (checked here)."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from typing import assert_type, get_type_hints

from producer.client import BrigadeClient, Completion, RequestOptions, Submitted
from schemas.events import DoneEvent, ErrorEvent, TokenEvent
from schemas.requests import InferenceRequest


async def _typed_usage(client: BrigadeClient) -> None:
    """Never run: mypy checks that these calls type as documented."""
    sub = await client.submit("hi", max_new_tokens=8, stop="\n", cost_class="small")
    assert_type(sub, Submitted)
    assert_type(sub.request_id, str)
    assert_type(sub.partition, int)
    events = client.stream(sub.session_id, request_id=sub.request_id)
    assert_type(events, AsyncIterator[TokenEvent | DoneEvent | ErrorEvent])
    async for event in events:
        assert_type(event.attempt, int)
    done = await client.generate(messages=[{"role": "user", "content": "hi"}], timeout_s=5.0)
    assert_type(done, Completion)
    assert_type(done.text, str)


def test_only_the_prompt_is_positional() -> None:
    for method in (BrigadeClient.submit, BrigadeClient.generate):
        params = list(inspect.signature(method).parameters.values())[1:]
        keyword = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.VAR_KEYWORD)
        assert [p.name for p in params if p.kind not in keyword] == ["prompt"], method.__name__
    stream_params = list(inspect.signature(BrigadeClient.stream).parameters.values())[1:]
    assert [p.name for p in stream_params if p.kind is not inspect.Parameter.KEYWORD_ONLY] == ["session_id"]


def test_submit_and_generate_take_the_same_request_fields() -> None:
    submit = set(inspect.signature(BrigadeClient.submit).parameters)
    generate = set(inspect.signature(BrigadeClient.generate).parameters)
    assert generate - submit == {"timeout_s"}


def test_the_client_takes_every_field_of_the_contract() -> None:
    """A field added to the request contract is one the client can send, by the same name."""
    inputs = {"prompt", "messages", "prompt_token_ids", "session_id", "request_id", "max_new_tokens"}
    given = inputs | set(get_type_hints(RequestOptions))
    assert given == set(InferenceRequest.model_fields) - {"schema_version", "created_at"}
