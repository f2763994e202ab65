"""Structured output: the engine keeps every answer inside its language (builtin:tiny's random weights would
otherwise write anything), and the ingress, the worker and the OpenAI endpoints carry and check it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import numpy as np
import openai
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from pydantic import ValidationError

from brigade.inprocess import finals, fleet, read_until_final
from brigade.structured import closed, grammar_error, to_grammar
from consumer.engine.constraint import Constraint
from consumer.engine.interface import GenerationInput
from consumer.engine.onnx_engine import OnnxEngine, load_engine
from producer.client import BrigadeClient, InvalidRequest
from schemas.events import DoneEvent, ErrorEvent, FinishReason
from schemas.requests import MAX_GRAMMAR_CHARS, SamplingParams, StructuredOutput
from schemas.settings import Settings
from tests.test_engine import run_all

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["chef", "sous chef", "porter"]},
    },
    "required": ["name", "age", "role"],
    "additionalProperties": False,
}
PLATE = r"[A-Z]{2}-[0-9]{3}"
CHOICES = ["rare", "medium", "well done", "à point"]
SUM = 'start: "(" NUM ("+" NUM)* ")"\nNUM: /[1-9][0-9]?/'


@pytest.fixture(scope="module")
def engine(model_cache_dir: Path) -> Iterator[OnnxEngine]:
    eng = load_engine(Settings(model="builtin:tiny", model_cache_dir=model_cache_dir, device="cpu"))
    yield eng
    eng.close()


def _params(spec: StructuredOutput, *, sampled: bool, seed: int = 0) -> SamplingParams:
    return SamplingParams(temperature=1.0 if sampled else 0.0, seed=seed, structured_output=spec)


def _check(kind: str, text: str) -> None:
    if kind == "json_schema":
        jsonschema.validate(json.loads(text), PERSON)
    elif kind == "regex":
        assert re.fullmatch(PLATE, text), text
    elif kind == "choice":
        assert text in CHOICES, text
    else:
        assert re.fullmatch(r"\([1-9][0-9]?(\+[1-9][0-9]?)*\)", text), text


SPECS = {
    "json_schema": StructuredOutput(json_schema=PERSON),
    "regex": StructuredOutput(regex=PLATE),
    "choice": StructuredOutput(choice=CHOICES),
    "grammar": StructuredOutput(grammar=SUM),
}


def test_every_answer_is_in_its_language_greedy_sampled_and_joining(engine: OnnxEngine) -> None:
    prompt = engine.encode("The chef calls the order")
    first = [
        GenerationInput(f"{kind}-{mode}-{seed}", prompt, 64, _params(spec, sampled=mode == "sampled", seed=seed))
        for kind, spec in SPECS.items()
        for mode in ("greedy", "sampled")
        for seed in ((0,) if mode == "greedy" else (1, 2, 3))
    ]
    free = GenerationInput("free", prompt, 24, SamplingParams(temperature=0.0, ignore_eos=True))
    run = engine.start([*first, free])
    prefilled = {d.request_id: [d] for d in run.step()}
    joiners = [
        GenerationInput(f"{kind}-joined", prompt, 64, _params(spec, sampled=True)) for kind, spec in SPECS.items()
    ]
    run.join(joiners)  # continuous batching: their prefill is a step of its own, then they decode with the rest
    out = run_all(run)
    for item in [*first, *joiners]:
        deltas = prefilled.get(item.request_id, []) + out[item.request_id]
        text = "".join(d.text for d in deltas)
        _check(item.request_id.split("-")[0], text)
        assert deltas[-1].finish_reason is FinishReason.STOP, (item.request_id, text)
        assert deltas[-1].completion_tokens == len(run.token_ids(item.request_id))
    free_text = engine.tokenizer.decode(run.token_ids("free"))
    assert not re.fullmatch(PLATE, free_text) and free_text not in CHOICES, "without a constraint it is free text"


def test_a_cut_answer_ends_with_length_and_the_constraint_wins_over_min_tokens(engine: OnnxEngine) -> None:
    prompt = engine.encode("The chef calls the order")
    (eos,) = sorted(engine.files.eos_ids)[:1]
    inputs = [
        GenerationInput("cut", prompt, 3, _params(SPECS["json_schema"], sampled=False)),
        # min_tokens holds end-of-sequence back past the choice's end: the grammar, which allows nothing else, wins
        GenerationInput(
            "held", prompt, 16, SamplingParams(temperature=0.0, min_tokens=12, structured_output=SPECS["choice"])
        ),
        GenerationInput(
            "biased",
            prompt,
            16,
            SamplingParams(temperature=0.0, logit_bias={eos: 100}, structured_output=SPECS["regex"]),
        ),
    ]
    run = engine.start(inputs)
    out = run_all(run)
    cut = "".join(d.text for d in out["cut"])
    assert (
        out["cut"][-1].finish_reason is FinishReason.LENGTH and cut.startswith('{"') and len(run.token_ids("cut")) == 3
    )
    assert "".join(d.text for d in out["held"]) in CHOICES and out["held"][-1].finish_reason is FinishReason.STOP
    biased = "".join(d.text for d in out["biased"])
    assert re.fullmatch(PLATE, biased), "a biased end-of-sequence cannot end an answer the grammar has not finished"


def test_compiled_grammars_are_reused_and_each_sequence_has_its_own_state(engine: OnnxEngine) -> None:
    spec = StructuredOutput(choice=["yes", "no"])
    a, b = engine.constraints.for_sequence(spec), engine.constraints.for_sequence(spec)
    for token in engine.tokenizer.encode("yes", add_special_tokens=False).ids:
        a.consume(token)
    assert a.finished and not b.finished, "the second copy did not see the first one's tokens"
    assert not np.array_equal(a.allowed(), b.allowed())
    assert np.array_equal(b.allowed(), engine.constraints.for_sequence(spec).allowed())
    assert a.failure is None and b.failure is None
    b.consume(engine.tokenizer.encode("x", add_special_tokens=False).ids[0])
    assert b.failure is not None and a.failure is None, "a forbidden token fails that matcher only"


def test_the_intakes_check_compiles_what_the_sequences_then_use(
    engine: OnnxEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's intake checks a spec on the engine (off the step's thread); its sequences reuse that
    compilation, and a spec that does not compile is compiled once however many requests carry it."""
    built: list[StructuredOutput] = []

    def counting(spec: StructuredOutput) -> str:
        built.append(spec)
        return to_grammar(spec)

    monkeypatch.setattr("consumer.engine.constraint.to_grammar", counting)
    good = StructuredOutput(json_schema={"type": "object", "properties": {"n": {"type": "integer", "minimum": 7}}})
    assert engine.constraint_error(good) is None
    engine.constraints.for_sequence(good)
    engine.constraints.for_sequence(StructuredOutput.model_validate(good.model_dump()))
    assert built == [good]
    bad = StructuredOutput(grammar="start: nope")
    for _ in range(3):
        assert "unknown name" in (engine.constraint_error(bad) or "")
    with pytest.raises(ValueError, match=r"structured_output\.grammar: .*unknown name"):
        engine.constraints.for_sequence(bad)
    assert built == [good, bad]


def test_objects_that_list_their_properties_are_closed_unless_they_say_otherwise(engine: OnnxEngine) -> None:
    """What OpenAI's strict mode and vLLM's default backend do: without it a model writes keys nobody asked for."""
    nested = {"type": "object", "properties": {"properties": {"type": "object", "properties": {"a": {}}}}}
    assert closed(nested)["additionalProperties"] is False
    assert closed(nested)["properties"]["properties"]["additionalProperties"] is False, "a property named properties"
    assert "additionalProperties" not in closed(nested)["properties"], "the name mapping is not a schema"
    kept = {"anyOf": [{"properties": {}, "additionalProperties": True}, {"enum": [{"properties": {}}]}]}
    assert closed(kept) == kept and closed({"type": "object"}) == {"type": "object"}

    open_person = {k: v for k, v in PERSON.items() if k != "additionalProperties"}
    spec = StructuredOutput(json_schema={**open_person, "required": ["name"]})
    prompt = engine.encode("The chef calls the order")
    inputs = [GenerationInput(f"r{seed}", prompt, 96, _params(spec, sampled=True, seed=seed)) for seed in range(6)]
    run = engine.start(inputs)
    out = run_all(run)
    for item in inputs:
        answer = json.loads("".join(d.text for d in out[item.request_id]))
        assert set(answer) <= set(PERSON["properties"]), answer  # type: ignore[call-overload]


def test_the_contract_takes_exactly_one_bounded_constraint() -> None:
    with pytest.raises(ValidationError, match="give exactly one of json_schema"):
        StructuredOutput(regex="a", choice=["b"])
    with pytest.raises(ValidationError, match=r"give exactly one of json_schema .* got none"):
        StructuredOutput()
    with pytest.raises(ValidationError, match=f"over {MAX_GRAMMAR_CHARS} characters as JSON"):
        StructuredOutput(json_schema={"enum": ["x" * MAX_GRAMMAR_CHARS]})
    with pytest.raises(ValidationError, match="json_object"):
        StructuredOutput(json_object=False)
    assert grammar_error(StructuredOutput(json_schema={"type": "nosuch"})) == "Invalid type: nosuch"
    assert "unknown name" in (grammar_error(StructuredOutput(grammar="start: nope")) or "")
    assert grammar_error(SPECS["json_schema"]) is None


async def test_through_the_ingress_and_straight_from_kafka(
    settings: Settings, topics: list[str], redis_client: aioredis.Redis
) -> None:
    """POST /v1/requests (and the Python client) checks the grammar before publishing (422 naming the field); a
    record published straight to Kafka is checked by the worker (an invalid_request event); good ones come back in
    the language."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        async with fleet(settings, classes=["small"]) as f, httpx.AsyncClient(base_url=f.url) as http:
            bad = {"prompt": "x", "session_id": "so-bad", "structured_output": {"regex": "a(b"}}
            refused = await http.post("/v1/requests", json=bad)
            assert refused.status_code == 422, refused.text
            error = refused.json()["error"]
            assert error["param"] == "structured_output.regex" and error["code"] == "invalid_structured_output"
            assert (
                "structured_output.regex does not compile" in error["message"] and "unclosed group" in error["message"]
            )

            async with BrigadeClient(f.url) as client:
                picked = await client.generate("Steak:", max_new_tokens=16, structured_output={"choice": CHOICES})
                with pytest.raises(InvalidRequest, match=r"structured_output\.json_schema does not compile"):
                    await client.submit("x", structured_output=StructuredOutput(json_schema={"type": "nosuch"}))
            assert picked.text in CHOICES and picked.finish_reason == "stop"

            good = {"prompt": "x", "session_id": "so-good", "request_id": "so-good-1", "max_new_tokens": 40,
                    "structured_output": {"json_schema": PERSON}}  # fmt: skip
            assert (await http.post("/v1/requests", json=good)).status_code == 202
            raw = {"request_id": "so-raw-1", "session_id": "so-raw", "prompt": "x", "max_new_tokens": 8,
                   "structured_output": {"grammar": "start: missing"}}  # fmt: skip
            await producer.send_and_wait(settings.names.request_topic("small"), json.dumps(raw).encode(), key=b"so-raw")
            answered = await read_until_final(redis_client, settings.names.stream_key("so-good"), {"so-good-1"})
            failed = await read_until_final(redis_client, settings.names.stream_key("so-raw"), {"so-raw-1"})
    finally:
        await producer.stop()
    (done,) = finals(answered["so-good-1"])
    assert isinstance(done, DoneEvent) and done.finish_reason == "stop"
    jsonschema.validate(json.loads("".join(e.text for e in answered["so-good-1"] if e.type == "token")), PERSON)
    (err,) = finals(failed["so-raw-1"])
    assert isinstance(err, ErrorEvent) and err.code == "invalid_request"
    assert err.message.startswith("structured_output.grammar does not compile") and "unknown name" in err.message


async def test_openai_response_format_and_vllm_fields(settings: Settings, topics: list[str]) -> None:
    async with fleet(settings, classes=["small"]) as f:
        client = openai.AsyncOpenAI(base_url=f"{f.url}/v1", api_key="unused", max_retries=0)
        try:
            schema_format: Any = {
                "type": "json_schema",
                "json_schema": {"name": "person", "schema": PERSON, "strict": True},
            }
            chat = await client.chat.completions.create(
                model=settings.model, messages=[{"role": "user", "content": "who cooks?"}], max_tokens=48,
                response_format=schema_format,
            )  # fmt: skip
            mode = await client.chat.completions.create(
                model=settings.model, messages=[{"role": "user", "content": "json"}], max_tokens=48, n=2,
                response_format={"type": "json_object"}, extra_body={"logit_bias": None},
            )  # fmt: skip
            stream = await client.completions.create(
                model=settings.model, prompt="Plate:", max_tokens=16, stream=True, extra_body={"guided_regex": PLATE}
            )
            streamed = "".join([c.choices[0].text async for c in stream if c.choices])
            choice = await client.completions.create(
                model=settings.model, prompt="Steak:", max_tokens=16,
                extra_body={"structured_outputs": {"choice": CHOICES, "disable_any_whitespace": True}},
            )  # fmt: skip
        finally:
            await client.close()
    content = chat.choices[0].message.content or ""
    jsonschema.validate(json.loads(content), PERSON)
    assert chat.choices[0].finish_reason == "stop"
    for c in mode.choices:  # a random model may not close its object in 48 tokens: whatever it wrote is JSON so far
        text = c.message.content or ""
        assert text.startswith("{") and (c.finish_reason == "length" or isinstance(json.loads(text), dict)), text
    assert re.fullmatch(PLATE, streamed), streamed
    assert choice.choices[0].text in CHOICES and choice.choices[0].finish_reason == "stop"


def _unmasked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The matcher's mask not applied: the model picks tokens the grammar forbids, as a failed matcher would
    see. (llguidance fails mid-answer only past its parser limits, which no small grammar reaches.)"""
    monkeypatch.setattr(Constraint, "mask", lambda self, logits: None)


def test_a_failed_grammar_ends_its_sequence_alone(engine: OnnxEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    _unmasked(monkeypatch)
    prompt = engine.encode("The chef calls the order")
    inputs = [
        GenerationInput("bound", prompt, 16, _params(SPECS["regex"], sampled=False)),
        GenerationInput("free", prompt, 6, SamplingParams(temperature=0.0, ignore_eos=True)),
    ]
    run = engine.start(inputs)
    out = run_all(run)
    last = out["bound"][-1]
    assert last.error is not None and last.error.startswith("structured output failed after ")
    assert last.finish_reason is None and last.text == ""
    assert out["free"][-1].finish_reason is FinishReason.LENGTH and out["free"][-1].completion_tokens == 6


async def test_the_worker_answers_a_failed_grammar_with_an_error_and_serves_the_rest(
    settings: Settings, topics: list[str], redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    _unmasked(monkeypatch)
    async with fleet(settings, classes=["small"]) as f, httpx.AsyncClient(base_url=f.url) as http:
        bodies = [
            {"session_id": "sf-bound", "request_id": "sf-b", "prompt": "x", "structured_output": {"regex": PLATE}},
            {"session_id": "sf-free", "request_id": "sf-f", "prompt": "x", "max_new_tokens": 4},
        ]
        assert (await http.post("/v1/requests/batch", json={"requests": bodies})).status_code == 202
        bound = await read_until_final(redis_client, settings.names.stream_key("sf-bound"), {"sf-b"})
        free = await read_until_final(redis_client, settings.names.stream_key("sf-free"), {"sf-f"})
    (err,) = finals(bound["sf-b"])
    assert isinstance(err, ErrorEvent) and err.code == "invalid_request" and "structured output failed" in err.message
    (done,) = finals(free["sf-f"])
    assert isinstance(done, DoneEvent) and done.completion_tokens == 4
