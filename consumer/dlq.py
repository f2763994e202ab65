"""Parsing a fetched record, and the dead-letter topic for the ones that cannot be parsed.

A poison message must not stall its partition (everything behind it would wait forever) nor be
lost silently: it goes to ``brigade.dlq`` with its original bytes and headers naming the reason and
where it came from, and then counts as complete so the partition's offset can move past it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from pydantic import ValidationError

from brigade.kafka_config import kafka_client_options
from schemas.requests import InferenceRequest
from schemas.settings import Settings

log = logging.getLogger(__name__)

MAX_REASON_BYTES = 4000  # headers are not the place for a whole pydantic dump of a huge payload


@dataclass(frozen=True, slots=True)
class Rejected:
    """Why a record is not a request."""

    reason: str  # "not_json" | "invalid_request" | "empty"
    detail: str  # the decoder's or pydantic's message, naming the offending field


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
        return Rejected(reason="invalid_request", detail=str(exc))


class DeadLetters:
    """A producer for ``settings.names.dlq_topic``; ``send`` returns once the broker acknowledged."""

    def __init__(self, settings: Settings) -> None:
        self._topic = settings.names.dlq_topic
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
        await self._producer.send_and_wait(self._topic, value=value, key=key, headers=headers)
        log.warning(
            "dead-lettered a record",
            extra={"reason": rejected.reason, "topic": topic, "partition": partition, "offset": offset},
        )
