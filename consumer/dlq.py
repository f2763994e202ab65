"""Parsing a fetched record, and the dead-letter topic for the ones that cannot be parsed.

A poison message must not stall its partition (everything behind it would wait forever) nor be
lost silently: it goes to ``brigade.dlq`` with its original bytes and headers naming the reason and
where it came from, and then counts as complete so the partition's offset can move past it. One that
still names a valid ``request_id`` and ``session_id`` (a field out of range, one this worker does not
know) has a caller waiting on that stream: the worker also answers it there with its one final event.

The broker may be gone when one arrives (it was fetched just before an outage). The send then rides the
outage out like the worker's commits (``consumer/retry.py``): each attempt is bounded, the attempts back off
until ``BRIGADE_DEPENDENCY_RETRY_S``, and only then does the worker fail (the record is redelivered, not
lost). A timed-out attempt does not send again: the record already sits in the producer's queue, and the
next attempt waits on that same delivery, so an outage leaves one copy in the dead-letter topic, not one per
attempt. Only a delivery the producer itself gave up on (its ``request_timeout_ms``) is sent anew.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from pydantic import BaseModel, ConfigDict, ValidationError

from brigade.kafka_config import kafka_client_options
from consumer.retry import KAFKA_ATTEMPT_S, Backoff, call_with
from schemas.reasons import location, reason
from schemas.requests import Identifier, InferenceRequest
from schemas.settings import Settings

log = logging.getLogger(__name__)

MAX_REASON_BYTES = 4000  # headers are not the place for a whole pydantic dump of a huge payload


class RequestAddress(BaseModel):
    """The two fields a final event needs, read from a record that is otherwise no valid request."""

    model_config = ConfigDict(extra="ignore")

    request_id: Identifier
    session_id: Identifier


@dataclass(frozen=True, slots=True)
class Rejected:
    """Why a record is not a request."""

    reason: str  # "not_json" | "invalid_request" | "empty"
    detail: str  # the decoder's or pydantic's message, naming the offending field
    addressed: RequestAddress | None = None  # its ids, when valid: where its caller waits for a final
    fields: str = ""  # the offending fields, one "field: problem" each, for that final's message


def parse_record(value: bytes | None) -> InferenceRequest | Rejected:
    """The request in a record's value, or why there is none. Never raises."""
    if not value:
        return Rejected(reason="empty", detail="record has no value")
    try:
        raw = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return Rejected(reason="not_json", detail=f"value is not JSON: {exc}")
    try:
        return InferenceRequest.model_validate(raw)
    except ValidationError as exc:
        fields = "; ".join(f"{'.'.join(map(str, location(e))) or 'value'}: {reason(e)}" for e in exc.errors())
        try:
            addressed = RequestAddress.model_validate(raw)
        except ValidationError:
            addressed = None
        return Rejected(reason="invalid_request", detail=str(exc), addressed=addressed, fields=fields)


class DeadLetters:
    """A producer for ``settings.names.dlq_topic``; ``send`` returns once the broker acknowledged.

    With ``retry``, an unreachable broker is waited out (see the module docstring); without it (unit tests)
    the first failure propagates.
    """

    def __init__(self, settings: Settings, *, retry: Backoff | None = None, attempt_s: float = KAFKA_ATTEMPT_S) -> None:
        self._topic = settings.names.dlq_topic
        self._retry = retry
        self._attempt_s = attempt_s
        self._producer = AIOKafkaProducer(
            **kafka_client_options(settings),
            acks="all",
            enable_idempotence=settings.kafka_idempotence,
        )

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def send(
        self, *, value: bytes | None, key: bytes | None, rejected: Rejected, topic: str, partition: int, offset: int
    ) -> None:
        headers = [
            ("reason", rejected.reason.encode()),
            ("error", rejected.detail.encode()[:MAX_REASON_BYTES]),
            ("source_topic", topic.encode()),
            ("source_partition", str(partition).encode()),
            ("source_offset", str(offset).encode()),
        ]
        delivery: asyncio.Future[object] | None = None

        async def attempt() -> None:
            nonlocal delivery
            async with asyncio.timeout(self._attempt_s):
                if delivery is None or (delivery.done() and delivery.exception() is not None):
                    delivery = await self._producer.send(self._topic, value=value, key=key, headers=headers)
                await asyncio.shield(delivery)  # a timed-out attempt leaves the delivery to the next one

        await call_with(self._retry, "dead-letter", attempt)
        log.warning(
            "dead-lettered a record",
            extra={"reason": rejected.reason, "topic": topic, "partition": partition, "offset": offset},
        )
