"""The ways OpenAI and vLLM clients ask for structured output, mapped onto the contract's ``structured_output``.

OpenAI: ``response_format`` ``{"type": "json_object"}`` (JSON mode) or ``{"type": "json_schema", "json_schema":
{"name", "schema", "strict"}}``. vLLM: ``structured_outputs`` (``json``, ``json_object``, ``regex``, ``choice``,
``grammar``) and the older ``guided_json``, ``guided_regex``, ``guided_choice``, ``guided_grammar``. One
request may use one of them; the answer is enforced whatever ``strict`` says, as vLLM does.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from producer.errors import ApiError
from schemas.reasons import reason
from schemas.requests import StructuredOutput


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")  # left out: any JSON value
    strict: bool | None = None  # enforced either way


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class VllmStructuredOutputs(BaseModel):
    """vLLM's ``structured_outputs`` object (its ``StructuredOutputsParams``), the fields brigade serves."""

    model_config = ConfigDict(extra="forbid")

    json_: dict[str, Any] | str | None = Field(default=None, alias="json")
    json_object: bool | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    # vLLM's backend knobs, accepted and unused: brigade has one backend, writes JSON without optional whitespace
    # and closes objects that list their properties (brigade/structured.py).
    disable_fallback: bool | None = None
    disable_any_whitespace: bool | None = None
    disable_additional_properties: bool | None = None


def _schema(value: dict[str, Any] | str, field: str) -> dict[str, Any]:
    """A schema given as an object, or as JSON text (vLLM takes both)."""
    if isinstance(value, dict):
        return value
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise ApiError(422, f"{field}: not JSON ({exc}); send the JSON Schema as an object", param=field) from None
    if not isinstance(parsed, dict):
        raise ApiError(422, f"{field}: a JSON Schema is an object; this is {type(parsed).__name__}", param=field)
    return parsed


def _from_response_format(rf: ResponseFormat) -> dict[str, Any] | None:
    if rf.type == "json_object":
        return {"json_object": True}
    if rf.type == "json_schema":
        if rf.json_schema is None:
            raise ApiError(
                422,
                'response_format: type "json_schema" needs a json_schema object ({"name": …, "schema": {…}})',
                param="response_format.json_schema",
            )
        return {"json_schema": rf.json_schema.schema_ if rf.json_schema.schema_ is not None else {}}
    return None  # "text": off


def _from_vllm(so: VllmStructuredOutputs) -> dict[str, Any] | None:
    knobs = {"disable_fallback", "disable_any_whitespace", "disable_additional_properties"}
    given = so.model_dump(exclude_none=True, by_alias=True, exclude=knobs)
    if so.json_object is False:
        given.pop("json_object")
    if "json" in given:
        given["json_schema"] = _schema(given.pop("json"), "structured_outputs.json")
    return given or None


def structured_output(
    *,
    response_format: ResponseFormat | None,
    structured_outputs: VllmStructuredOutputs | None,
    guided: dict[str, Any],
) -> tuple[StructuredOutput, str] | None:
    """The contract's constraint and the field the caller used (for errors), or None when none was asked.

    ``guided``: vLLM's ``guided_json`` / ``guided_regex`` / ``guided_choice`` / ``guided_grammar`` by name.
    """
    asked: list[tuple[str, dict[str, Any]]] = []
    if response_format is not None and (spec := _from_response_format(response_format)) is not None:
        asked.append(("response_format", spec))
    if structured_outputs is not None and (spec := _from_vllm(structured_outputs)) is not None:
        asked.append((f"structured_outputs.{next(iter(spec))}", spec))
    for name, value in guided.items():
        if value is None:
            continue
        kind = name.removeprefix("guided_")
        asked.append((name, {"json_schema": _schema(value, name)} if kind == "json" else {kind: value}))
    if not asked:
        return None
    if len(asked) > 1:
        names = ", ".join(name for name, _ in asked)
        raise ApiError(422, f"{names}: each asks for structured output; send one of them", param=asked[1][0])
    field, spec = asked[0]
    try:
        return StructuredOutput.model_validate(spec), field
    except ValidationError as exc:
        raise ApiError(422, f"{field}: {reason(exc.errors()[0])}", param=field) from None
