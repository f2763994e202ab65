"""Validation errors read as the mistake, the same way at the ingress, in a dead letter and in the settings report."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError, field_validator

from consumer.dlq import Rejected, parse_record
from schemas.reasons import reason


class Ask(BaseModel):
    count: int
    name: str

    @field_validator("name")
    @classmethod
    def _short(cls, value: str) -> str:
        if len(value) > 3:
            raise ValueError("at most 3 characters; shorten it")
        assert value, "empty; send a name"
        return value


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"count": 1, "name": "long"}, "at most 3 characters; shorten it"),
        ({"count": 1, "name": ""}, "empty; send a name"),
        ({"count": "x", "name": "a"}, "Input should be a valid integer, unable to parse string as an integer"),
    ],
)
def test_a_validators_words_are_the_message(body: dict[str, object], expected: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Ask.model_validate(body)
    # startswith: pytest's assert rewriting adds its own explanation to an assert's message in this module.
    assert reason(caught.value.errors()[0]).startswith(expected)


def test_a_dead_letter_names_the_field_in_the_validators_words() -> None:
    rejected = parse_record(
        b'{"request_id": "r", "session_id": "s", "messages": [{"role": "user", "content": "hi"}], '
        b'"chat_template_kwargs": {"tools": []}}'
    )
    assert isinstance(rejected, Rejected)
    assert rejected.fields is not None
    assert rejected.fields.startswith("chat_template_kwargs: tools: set by the worker"), rejected.fields
