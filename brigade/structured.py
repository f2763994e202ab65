"""A request's ``structured_output`` as an llguidance grammar, and the check both the ingress and the worker run.

llguidance (the Rust library behind vLLM's ``guidance`` backend) compiles JSON Schema, regular expressions
and Lark grammars to one grammar format and computes, per step, which tokens keep the answer inside the
language: the worker masks the rest (``consumer/engine/constraint.py``). The ingress checks the grammar
before it publishes, so a typo in a schema is a 422 naming the field, not an error event after a queue wait;
the worker checks again for what was published straight to Kafka.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from llguidance import LLMatcher

from schemas.requests import StructuredOutput

# The JSON a constrained answer is written in: compact, as json.dumps(separators=(",", ":")) writes it.
# Flexible whitespace would let a sampled answer wander through newlines and spaces up to max_new_tokens.
_JSON_OPTIONS = {"whitespace_flexible": False}
_JSON_IN_LARK = {"x-guidance": _JSON_OPTIONS}  # the same options, where a schema sits inside a Lark grammar


def closed(schema: Any) -> Any:
    """``schema`` with every object that lists its ``properties`` closed to others unless it says otherwise.

    JSON Schema allows unlisted properties by default, and a model let loose in one writes keys nobody asked
    for until max_tokens (seen on the dev stack). OpenAI's strict schemas require them closed, vLLM's default
    backend (xgrammar) closes them, and vLLM's guidance backend has ``disable-additional-properties`` for it:
    what callers expect. An object without ``properties`` (``{"type": "object"}``) stays any object.
    """
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: closed(sub) for name, sub in value.items()}
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            out[key] = [closed(sub) for sub in value]
        elif key in _SCHEMAS:
            out[key] = closed(value)
        else:
            out[key] = value  # enum, const, default, examples…: values, not schemas
    if isinstance(schema.get("properties"), dict) and "additionalProperties" not in schema:
        out["additionalProperties"] = False
    return out


# Where JSON Schema nests schemas: by name, in a list, or alone.
_SCHEMA_MAPS = frozenset(("properties", "patternProperties", "$defs", "definitions", "dependentSchemas"))
_SCHEMA_LISTS = frozenset(("anyOf", "oneOf", "allOf", "prefixItems", "items"))
_SCHEMAS = frozenset(
    ("items", "additionalProperties", "not", "if", "then", "else", "contains", "propertyNames", "unevaluatedProperties")
)


def to_grammar(spec: StructuredOutput) -> str:
    """The llguidance grammar (its serialized form) of the one constraint ``spec`` gives."""
    if spec.json_schema is not None:
        return LLMatcher.grammar_from_json_schema(closed(spec.json_schema), defaults=_JSON_OPTIONS)  # type: ignore[arg-type]
    if spec.json_object is not None:
        return LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=_JSON_OPTIONS)  # type: ignore[arg-type]
    if spec.regex is not None:
        return LLMatcher.grammar_from_regex(spec.regex)
    if spec.choice is not None:
        return LLMatcher.grammar_from_lark("start: " + _alternatives(spec.choice))
    assert spec.grammar is not None  # the model allows exactly one field
    return LLMatcher.grammar_from_lark(spec.grammar)


def lark_rule(spec: StructuredOutput) -> str | None:
    """``spec``'s language as the body of a Lark rule, to compose into a larger grammar (a reasoning model's
    thinking before it); None for a Lark grammar of the caller's own, which has its own start rule, or a schema
    that is not an object."""
    if spec.json_schema is not None:
        schema = closed(spec.json_schema)
        return f"%json {json.dumps(schema | _JSON_IN_LARK)}" if isinstance(schema, dict) else None
    if spec.json_object is not None:
        return f"%json {json.dumps({'type': 'object'} | _JSON_IN_LARK)}"
    if spec.regex is not None:
        return "/" + spec.regex.replace("/", "\\/") + "/"
    if spec.choice is not None:
        return _alternatives(spec.choice)
    return None


def _alternatives(choice: list[str]) -> str:
    # the literal strings as Lark alternatives: JSON string escapes quote every character exactly
    return " | ".join(json.dumps(c) for c in choice)


def grammar_error(spec: StructuredOutput) -> str | None:
    """Why ``spec`` cannot constrain an answer (llguidance's message, which points into the grammar), or None.

    Remembered per spec: OpenAI's ``n`` and prompt lists send one grammar with many requests.
    """
    return _grammar_error(spec.model_dump_json(exclude_none=True))


@lru_cache(maxsize=256)
def _grammar_error(spec_json: str) -> str | None:
    try:
        grammar = to_grammar(StructuredOutput.model_validate_json(spec_json))
    except ValueError as exc:
        return str(exc)
    error, messages = LLMatcher.validate_grammar_with_warnings(grammar)
    return messages[0].strip() if error else None
