"""The ingress's one job: turn a valid request into an acknowledged Kafka message on the right class topic."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from aiokafka.structs import RecordMetadata

from brigade.models.tokenizer_config import TokenizerInfo
from brigade.redis_config import RedisClient
from brigade.structured import grammar_error
from producer.errors import CONTRACT_FIELDS, ApiError, FieldNames
from producer.lag import LagMonitor
from producer.metrics import IngressMetrics
from producer.model_formats import NO_FORMATS, ModelFormats
from producer.publisher import BrokerUnavailable, Publisher, Record
from producer.routing import Router, model_not_found
from schemas.naming import Names
from schemas.requests import InferenceRequest, RequestAccepted
from schemas.settings import Settings
from schemas.tracing import TRACEPARENT, TRACESTATE, TraceContext, parse_traceparent


@dataclass
class Ingress:
    settings: Settings
    publisher: Publisher
    redis: RedisClient
    router: Router
    lag: LagMonitor
    metrics: IngressMetrics
    # per served model: what its tokenizer files say (special tokens, chat template, limit), for /tokenizer_info
    tokenizer_info: Mapping[str, TokenizerInfo] = field(default_factory=dict)
    # per served model: how its answers' tool calls and thinking are read (producer/model_formats.py)
    formats: Mapping[str, ModelFormats] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._names = self.settings.names  # built once: the property makes a new one per access

    def check_model(self, model: str) -> None:
        """404 naming the served models when no class serves ``model``."""
        if model not in self.served_models:
            raise model_not_found(model, self.served_models)

    def formats_for(self, model: str) -> ModelFormats:
        """How ``model``'s tool calls and thinking are read; none where nothing was found or said."""
        return self.formats.get(model, NO_FORMATS)

    async def require_redis(self) -> None:
        """Fail fast (RedisError → 503) before work whose answer would have to be read from Redis."""
        await self.redis.ping()

    @property
    def served_models(self) -> tuple[str, ...]:
        return self.settings.served_models

    def check_limits(self, request: InferenceRequest, prompt_tokens: int | None, *, fields: FieldNames) -> None:
        """Refuse what the deployment will not serve; ``fields`` are the names the caller used.

        ``prompt_tokens`` is None when the router proved the prompt under the limit without counting it.
        """
        s = self.settings
        if request.max_new_tokens is not None and request.max_new_tokens > s.max_new_tokens_limit:
            raise ApiError(
                422,
                f"{fields.max_tokens}={request.max_new_tokens} is over the limit {s.max_new_tokens_limit} "
                f"(BRIGADE_MAX_NEW_TOKENS_LIMIT); ask for at most {s.max_new_tokens_limit} tokens",
                param=fields.max_tokens,
                code="max_new_tokens_over_limit",
            )
        if prompt_tokens is not None and prompt_tokens > s.max_prompt_tokens:
            raise ApiError(
                413,
                f"the prompt is {prompt_tokens} tokens, over the limit {s.max_prompt_tokens} "
                "(BRIGADE_MAX_PROMPT_TOKENS); shorten it or split the work",
                param=fields.prompt or request.input_field,
                code="prompt_too_long",
            )

    async def submit(
        self,
        request: InferenceRequest,
        *,
        traceparent: str | None = None,
        tracestate: str | None = None,
        fields: FieldNames = CONTRACT_FIELDS,
    ) -> RequestAccepted:
        """Route (by ``model``, ``cost_class`` or cost), check, admit and publish; the answer says where it went.

        The record carries the caller's ``traceparent`` (and ``tracestate``) as Kafka headers when it is valid,
        passed through as a proxy would (the ingress records no span of its own); without a valid one the
        request starts a new trace, so every request has a trace id the worker's logs and final event repeat.
        """
        (outcome,) = await self.submit_many([request], traceparent=traceparent, tracestate=tracestate, fields=fields)
        if isinstance(outcome, ApiError):
            raise outcome
        return outcome

    async def submit_many(
        self,
        requests: Sequence[InferenceRequest],
        *,
        traceparent: str | None = None,
        tracestate: str | None = None,
        fields: FieldNames = CONTRACT_FIELDS,
    ) -> list[RequestAccepted | ApiError]:
        """``submit`` for each request, in order, each answered on its own; the accepted share produce requests.

        A valid ``traceparent`` is the parent of every request; without one each request starts its own trace.
        """
        caller = parse_traceparent(traceparent)
        trace_headers: list[tuple[str, bytes]] = []
        if caller is not None:
            trace_headers.append((TRACEPARENT, caller.traceparent.encode()))
            if tracestate:
                trace_headers.append((TRACESTATE, tracestate.encode()))
        planned: list[_Planned | ApiError] = []
        fresh = iter(TraceContext.start_many(0 if caller else len(requests)))
        for request in requests:
            try:
                plan = await self._plan(request, fields=fields)
            except ApiError as exc:
                planned.append(exc)
                continue
            trace = caller or next(fresh)
            headers = trace_headers or [(TRACEPARENT, trace.traceparent.encode())]
            planned.append(plan._replace(traceparent=trace.traceparent, headers=tuple(headers)))
        to_send = [p for p in planned if not isinstance(p, ApiError)]
        t0 = time.perf_counter()
        acks = iter(await self.publisher.publish_many([p.record() for p in to_send]))
        elapsed = time.perf_counter() - t0
        out: list[RequestAccepted | ApiError] = []
        for item in planned:
            if isinstance(item, ApiError):
                out.append(item)
                continue
            ack = next(acks)
            name = item.cost_class
            if isinstance(ack, BrokerUnavailable):
                self.metrics.count(name, "unavailable")
                out.append(ApiError(503, str(ack), code="broker_unavailable", headers={"Retry-After": "1"}))
                continue
            self.metrics.accepted(name, elapsed)
            out.append(item.accepted(ack, self._names))
        return out

    async def _plan(self, request: InferenceRequest, *, fields: FieldNames) -> _Planned:
        """Route, check and admit one request: where it goes and what it weighs, or the ``ApiError`` why not."""
        try:
            routed = await self.router.route(request, max_tokens_field=fields.max_tokens)
        except ApiError:
            self.metrics.count("none", "rejected")
            raise
        cls, prompt_tokens = routed.cost_class, routed.prompt_tokens
        try:
            self.check_limits(request, prompt_tokens, fields=fields)
            await _check_structured_output(request, fields)
        except ApiError:
            self.metrics.count(cls.name, "rejected")
            raise
        decision = self.lag.decision(cls.name)
        if not decision.admit:
            self.metrics.count(cls.name, "throttled")
            raise ApiError(
                429,
                f"class {cls.name!r} has a backlog of {decision.lag} requests, over its limit {decision.limit} "
                f"(BRIGADE_CLASS_MAX_LAG); retry after {decision.retry_after_s} s",
                code="class_backlog_full",
                headers={"Retry-After": str(decision.retry_after_s)},
            )
        if request.cost_class != cls.name:
            request = request.model_copy(update={"cost_class": cls.name})
        return _Planned(request, cls.name, prompt_tokens, self._names.request_topic(cls.name))


async def _check_structured_output(request: InferenceRequest, fields: FieldNames) -> None:
    """422 for a schema, regex or grammar that does not compile, before the request waits in a queue for it.

    In a thread: a large grammar takes milliseconds to compile, and the event loop serves every other caller.
    """
    spec = request.structured_output
    if spec is None:
        return
    error = await asyncio.to_thread(grammar_error, spec)
    if error is not None:
        name = fields.structured_output or f"structured_output.{spec.kind}"
        raise ApiError(
            422, f"{name} does not compile: {error}; correct it", param=name, code="invalid_structured_output"
        )


class _Planned(NamedTuple):
    """A request that passed routing, limits and admission, and the record it becomes."""

    request: InferenceRequest
    cost_class: str
    prompt_tokens: int | None
    topic: str
    traceparent: str = ""
    headers: tuple[tuple[str, bytes], ...] = ()

    def record(self) -> Record:
        return Record(self.topic, self.request.record_key, self.request.to_bytes(), self.headers)

    def accepted(self, meta: RecordMetadata, names: Names) -> RequestAccepted:
        r = self.request
        return RequestAccepted(
            request_id=r.request_id,
            session_id=r.session_id,
            cost_class=self.cost_class,
            topic=self.topic,
            partition=meta.partition,
            offset=meta.offset,
            stream=names.stream_key(r.session_id),
            prompt_tokens=self.prompt_tokens,
            events_url=f"/v1/sessions/{r.session_id}/events?request_id={r.request_id}",
            traceparent=self.traceparent,
        )
