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


def reason(error: Mapping[str, Any]) -> str:
    """The error's message without pydantic's lead for a validator's own exception."""
    message = str(error.get("msg", "invalid"))
    lead = _LEADS.get(str(error.get("type", "")))
    return message.removeprefix(lead) if lead else message
