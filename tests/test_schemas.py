"""The wire contract: what a plain Kafka publisher may send and what a raw Redis reader gets."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from schemas import (
    DoneEvent,
    ErrorCode,
    ErrorEvent,
    InferenceRequest,
    Names,
    TokenEvent,
    TokenLogprob,
    TopLogprob,
    parse_event,
)
from schemas.costs import CostClass, classify, estimate_cost, validate_classes
from schemas.jsonschema import all_schemas

CLASSES = (
    CostClass("small", 512, 4, 100),
    CostClass("medium", 4096, 4, 100),
    CostClass("large", math.inf, 2, 10),
)


def test_minimal_raw_message_is_a_valid_request() -> None:
    raw = b'{"request_id": "r-1", "session_id": "s-1", "prompt": "hi", "max_new_tokens": 8}'
    req = InferenceRequest.from_bytes(raw)
    assert (req.request_id, req.session_id, req.prompt, req.max_new_tokens) == ("r-1", "s-1", "hi", 8)
    assert req.temperature == 1.0 and req.stop == [] and req.deadline is None
    assert InferenceRequest.from_bytes(req.to_bytes()) == req


def test_a_null_max_new_tokens_stays_on_the_wire_and_absent_is_64() -> None:
    absent = InferenceRequest(request_id="r", session_id="s", prompt="hi")
    unbounded = InferenceRequest(request_id="r", session_id="s", prompt="hi", max_new_tokens=None)
    assert InferenceRequest.from_bytes(absent.to_bytes()).max_new_tokens == 64
    raw = unbounded.to_bytes()
    assert b'"max_new_tokens":null' in raw and b"top_k" not in raw  # the other off fields stay off the wire
    assert InferenceRequest.from_bytes(raw) == unbounded
    assert (unbounded.new_tokens_cap(100), absent.new_tokens_cap(100)) == (100, 64)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"session_id": "s", "prompt": "x"}, "request_id"),
        ({"request_id": "r", "prompt": "x"}, "session_id"),
        ({"request_id": "r", "session_id": "s", "prompt": "x", "max_new_tokens": 0}, "max_new_tokens"),
        ({"request_id": "r", "session_id": "s", "prompt": "x", "temperature": 9}, "temperature"),
        ({"request_id": "r", "session_id": "s", "prompt": "x", "surprise": 1}, "surprise"),
        ({"request_id": "r w", "session_id": "s", "prompt": "x"}, "request_id"),
        ({"request_id": "r", "session_id": "s", "prompt": "a\ud800"}, "prompt"),  # a lone surrogate
        ({"request_id": "r", "session_id": "s", "messages": [{"role": "user", "content": "\udfff"}]}, "content"),
        ({"request_id": "r", "session_id": "s", "prompt": "x", "stop": ["\ud800"]}, "stop.0"),
        ({"request_id": "r", "session_id": "s", "prompt": "x", "logprobs": 21}, "logprobs"),
        ({"request_id": "r", "session_id": "s", "prompt": "x", "logprobs": -1}, "logprobs"),
        ({"request_id": "r", "session_id": "s", "prompt": "x", "logit_bias": {"7": 101}}, "logit_bias.7"),
        ({"request_id": "r", "session_id": "s", "prompt": "x", "logit_bias": {"-1": 1}}, "logit_bias.-1.[key]"),
        ({"request_id": "r", "session_id": "s", "prompt": "x", "logit_bias": {i: 1 for i in range(301)}}, "logit_bias"),
        ({"request_id": "r", "session_id": "s", "prompt": "x", "max_new_tokens": 4, "min_tokens": 5}, "min_tokens: 5"),
    ],
)
def test_invalid_requests_name_the_field(body: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        InferenceRequest.model_validate(body)
    assert field in str(err.value)


def test_exactly_one_of_prompt_messages_and_token_ids() -> None:
    with pytest.raises(ValidationError, match="exactly one of 'prompt'"):
        InferenceRequest(request_id="r", session_id="s")
    with pytest.raises(ValidationError, match="exactly one of 'prompt'"):
        InferenceRequest.model_validate(
            {"request_id": "r", "session_id": "s", "prompt": "x", "messages": [{"role": "user", "content": "y"}]}
        )
    chat = InferenceRequest.model_validate(
        {"request_id": "r", "session_id": "s", "messages": [{"role": "user", "content": "y"}]}
    )
    assert chat.messages is not None and chat.messages[0].content == "y"
    with pytest.raises(ValidationError, match="exactly one of 'prompt'"):
        InferenceRequest(request_id="r", session_id="s", prompt="x", prompt_token_ids=[1])
    ids = InferenceRequest.model_validate_json(b'{"request_id": "r", "session_id": "s", "prompt_token_ids": [0, 9]}')
    assert ids.prompt_token_ids == [0, 9] and InferenceRequest.from_bytes(ids.to_bytes()) == ids
    with pytest.raises(ValidationError, match="prompt_token_ids"):
        InferenceRequest(request_id="r", session_id="s", prompt_token_ids=[])
    with pytest.raises(ValidationError, match="prompt_token_ids"):
        InferenceRequest(request_id="r", session_id="s", prompt_token_ids=[3, -1])


def test_deadline() -> None:
    now = datetime.now(UTC)
    req = InferenceRequest(request_id="r", session_id="s", prompt="x", deadline=now)
    assert req.expired(now) and not req.expired(now - timedelta(seconds=1))
    assert not InferenceRequest(request_id="r", session_id="s", prompt="x").expired(now)


def test_events_round_trip_as_flat_strings() -> None:
    lp = TokenLogprob(token=" é", id=7, logprob=-0.25, top=[TopLogprob(token=",", id=11, logprob=-0.125)])
    end = TokenLogprob(token="</s>", id=2, logprob=-3.5)
    events = [
        TokenEvent(request_id="r", seq=0, text="héllo"),
        TokenEvent(request_id="r", seq=0, text=" é", logprobs=[lp, lp]),
        DoneEvent(request_id="r", seq=1, finish_reason="length", prompt_tokens=3, completion_tokens=1, attempt=2),
        DoneEvent(request_id="r", seq=1, finish_reason="stop", prompt_tokens=3, completion_tokens=3, logprobs=[end]),
        ErrorEvent(request_id="r", seq=0, code=ErrorCode.EXPIRED, message="past deadline"),
    ]
    for event in events:
        fields = event.to_fields()
        assert all(isinstance(v, str) for v in fields.values())
        assert {"request_id", "seq", "type", "text", "attempt"} <= set(fields)
        assert parse_event(fields) == event
        assert parse_event({k.encode(): v.encode() for k, v in fields.items()}) == event
        assert parse_event(event.model_dump(mode="json")) == event  # an SSE payload: JSON values as they are
    assert json.loads(events[1].to_fields()["logprobs"])[0] == {
        "token": " é",
        "id": 7,
        "logprob": -0.25,
        "top": [{"token": ",", "id": 11, "logprob": -0.125}],
    }


def test_cost_classification() -> None:
    assert estimate_cost(prompt_tokens=100, max_new_tokens=400) == 500
    assert classify(500, CLASSES).name == "small"
    assert classify(513, CLASSES).name == "medium"
    assert classify(10**9, CLASSES).name == "large"
    assert classify(10, CLASSES, explicit="large").name == "large"
    with pytest.raises(ValueError, match="not one of the configured classes"):
        classify(10, CLASSES, explicit="huge")


@pytest.mark.parametrize(
    ("classes", "message"),
    [
        ((), "at least one"),
        ((CostClass("a", 10, 1, 1), CostClass("a", math.inf, 1, 1)), "unique"),
        ((CostClass("a", 10, 1, 1), CostClass("b", 5, 1, 1), CostClass("c", math.inf, 1, 1)), "strictly increase"),
        ((CostClass("a", 10, 1, 1),), "unbounded"),
        ((CostClass("a", math.inf, 0, 1),), "at least 1 partition"),
    ],
)
def test_class_table_validation(classes: tuple[CostClass, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_classes(classes)


def test_names_are_the_documented_ones() -> None:
    n = Names()
    assert n.request_topic("small") == "brigade.requests.small"
    assert n.consumer_group("small") == "brigade-small"
    assert n.dlq_topic == "brigade.dlq"
    assert n.stream_key("abc") == "brigade:stream:abc"
    assert n.session_key("abc") == "brigade:session:abc"


def test_json_schema_export_covers_request_and_events() -> None:
    schemas = json.loads(json.dumps(all_schemas()))
    assert set(schemas["InferenceRequest"]["required"]) == {"request_id", "session_id"}
    text = json.dumps(schemas["Event"])
    for kind in ("TokenEvent", "DoneEvent", "ErrorEvent"):
        assert kind in text


def test_every_field_a_publisher_sends_or_a_reader_reads_is_described() -> None:
    """The JSON Schema is the contract for clients in other languages: each field says what it means."""
    schemas = all_schemas()
    request, event = schemas["InferenceRequest"], schemas["Event"]
    models = [request, *request["$defs"].values(), *event["$defs"].values()]
    undescribed = [
        f"{model['title']}.{name}"
        for model in models
        for name, field in model.get("properties", {}).items()
        if name != "type" and not field.get("description")
    ]
    assert undescribed == []
    seed = schemas["InferenceRequest"]["properties"]["seed"]["description"]
    assert "derives one from request_id" in seed
