"""The ingress's one job: turn a valid request into an acknowledged Kafka message on the right class topic."""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from producer.errors import ApiError
from producer.lag import LagMonitor
from producer.metrics import IngressMetrics
from producer.publisher import BrokerUnavailable, Publisher
from producer.routing import Router
from schemas.requests import InferenceRequest, RequestAccepted
from schemas.settings import Settings
from schemas.tracing import TRACEPARENT, TRACESTATE, continue_or_start


@dataclass
class Ingress:
    settings: Settings
    publisher: Publisher
    redis: aioredis.Redis
    router: Router
    lag: LagMonitor
    metrics: IngressMetrics

    async def require_redis(self) -> None:
        """Fail fast (RedisError → 503) before work whose answer would have to be read from Redis."""
        await self.redis.ping()

    @property
    def served_models(self) -> tuple[str, ...]:
        return self.settings.served_models

    def check_limits(self, request: InferenceRequest, prompt_tokens: int, *, max_tokens_field: str) -> None:
        """Refuse what the deployment will not serve; ``max_tokens_field`` is the name the caller used."""
        s = self.settings
        if request.max_new_tokens > s.max_new_tokens_limit:
            raise ApiError(
                422,
                f"{max_tokens_field}={request.max_new_tokens} is over the limit {s.max_new_tokens_limit} "
                f"(BRIGADE_MAX_NEW_TOKENS_LIMIT); ask for at most {s.max_new_tokens_limit} tokens",
                param=max_tokens_field,
                code="max_new_tokens_over_limit",
            )
        if prompt_tokens > s.max_prompt_tokens:
            raise ApiError(
                413,
                f"the prompt is {prompt_tokens} tokens, over the limit {s.max_prompt_tokens} "
                "(BRIGADE_MAX_PROMPT_TOKENS); shorten it or split the work",
                param="messages" if request.prompt is None else "prompt",
                code="prompt_too_long",
            )

    async def submit(
        self,
        request: InferenceRequest,
        *,
        traceparent: str | None = None,
        tracestate: str | None = None,
        max_tokens_field: str = "max_new_tokens",
    ) -> RequestAccepted:
        """Route (by ``model``, ``cost_class`` or cost), check, admit and publish; the answer says where it went.

        The record carries the caller's ``traceparent`` (and ``tracestate``) as Kafka headers when it is valid,
        passed through as a proxy would (the ingress records no span of its own); without a valid one the
        request starts a new trace, so every request has a trace id the worker's logs and final event repeat.
        """
        try:
            routed = await self.router.route(request, max_tokens_field=max_tokens_field)
        except ApiError:
            self.metrics.requests.labels("none", "rejected").inc()
            raise
        cls, prompt_tokens = routed.cost_class, routed.prompt_tokens
        try:
            self.check_limits(request, prompt_tokens, max_tokens_field=max_tokens_field)
        except ApiError:
            self.metrics.requests.labels(cls.name, "rejected").inc()
            raise
        decision = self.lag.decision(cls.name)
        if not decision.admit:
            self.metrics.requests.labels(cls.name, "throttled").inc()
            raise ApiError(
                429,
                f"class {cls.name!r} has a backlog of {decision.lag} requests, over its limit {decision.limit} "
                f"(BRIGADE_CLASS_MAX_LAG); retry after {decision.retry_after_s} s",
                code="class_backlog_full",
                headers={"Retry-After": str(decision.retry_after_s)},
            )
        if request.cost_class != cls.name:
            request = request.model_copy(update={"cost_class": cls.name})
        topic = self.settings.names.request_topic(cls.name)
        trace, continued = continue_or_start(traceparent)
        headers = [(TRACEPARENT, trace.traceparent.encode())]
        if continued and tracestate:
            headers.append((TRACESTATE, tracestate.encode()))
        t0 = time.perf_counter()
        try:
            meta = await self.publisher.publish(
                topic, key=request.session_id.encode(), value=request.to_bytes(), headers=headers
            )
        except BrokerUnavailable as exc:
            self.metrics.requests.labels(cls.name, "unavailable").inc()
            raise ApiError(503, str(exc), code="broker_unavailable", headers={"Retry-After": "1"}) from None
        self.metrics.publish_seconds.labels(cls.name).observe(time.perf_counter() - t0)
        self.metrics.requests.labels(cls.name, "accepted").inc()
        return RequestAccepted(
            request_id=request.request_id,
            session_id=request.session_id,
            cost_class=cls.name,
            topic=topic,
            partition=meta.partition,
            offset=meta.offset,
            stream=self.settings.names.stream_key(request.session_id),
            prompt_tokens=prompt_tokens,
            events_url=f"/v1/sessions/{request.session_id}/events?request_id={request.request_id}",
            traceparent=trace.traceparent,
        )
