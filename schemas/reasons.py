"""A pydantic error as the sentence a caller reads.

Pydantic writes an error a validator raised as ``Value error, <the validator's words>`` (``Assertion failed, …``
for an ``assert``): a lead that names Python's exception, not the mistake. Every place that turns validation
errors into text — the ingress's 422s, the worker's dead letters, ``brigade``'s settings report — reads them
through here so the same mistake reads the same everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_LEADS = {"value_error": "Value error, ", "assertion_error": "Assertion failed, "}


class FieldError(ValueError):
    """A model validator's error about one field: pydantic places a model-level error at the model itself (the
    body, for a request), so the check names the field it blames and ``location`` puts it there. Its text names
    the field too, for whoever reads pydantic's own message."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail


def location(error: Mapping[str, Any]) -> tuple[Any, ...]:
    """The error's ``loc``, ending at the field a ``FieldError`` names."""
    loc = tuple(error.get("loc", ()))
    raised = error.get("ctx", {}).get("error")
    return (*loc, raised.field) if isinstance(raised, FieldError) else loc


def reason(error: Mapping[str, Any]) -> str:
    """The error's message without pydantic's lead for a validator's own exception (nor, for a ``FieldError``,
    the field its ``location`` ends at)."""
    raised = error.get("ctx", {}).get("error")
    if isinstance(raised, FieldError):
        return raised.detail
    message = str(error.get("msg", "invalid"))
    lead = _LEADS.get(str(error.get("type", "")))
    return message.removeprefix(lead) if lead else message
