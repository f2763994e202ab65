"""JSON Schema export, so publishers in any language can validate before they send."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from schemas.events import Event
from schemas.requests import InferenceRequest


def request_schema() -> dict[str, Any]:
    return InferenceRequest.model_json_schema()


def event_schema() -> dict[str, Any]:
    return TypeAdapter(Event).json_schema()


def all_schemas() -> dict[str, Any]:
    return {"InferenceRequest": request_schema(), "Event": event_schema()}
