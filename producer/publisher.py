"""The ingress's Kafka producer: connects in the background, publishes with a deadline, remembers log ends.

The ingress starts and answers (503) while the broker is down, and acknowledges a request only after the
broker has (acks=all; idempotent where the broker supports it). A 503 after the deadline means "unknown",
not "refused": the message may still sit in the producer's buffer and reach the broker once it answers
again (measured: every unacknowledged request of a 10 s broker freeze was answered later). Workers answer
a request_id once, so a client that retries with its own request_id and session_id gets one answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.structs import RecordMetadata

from brigade.kafka_config import kafka_client_options
from schemas.settings import Settings

log = logging.getLogger(__name__)


class BrokerUnavailable(Exception):
    """The broker did not take the message within the request timeout."""


class Publisher:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._connector: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        # (topic, partition) → highest offset + 1 this process saw acknowledged: a lower bound of the log end
        # that stays right where a broker's ListOffsets answer is not (Tansu answers the last batch's base + 1).
        self.log_end: dict[tuple[str, int], int] = {}

    @property
    def ready(self) -> bool:
        return self._connected.is_set()

    async def start(self) -> None:
        self._connector = asyncio.create_task(self._connect(), name="kafka-connect")

    async def _connect(self) -> None:
        delay = 0.2
        while True:
            producer = AIOKafkaProducer(
                **kafka_client_options(self._settings),
                acks="all",
                enable_idempotence=self._settings.kafka_idempotence,
                linger_ms=2,
                request_timeout_ms=int(self._settings.request_timeout_s * 1000),
            )
            try:
                await producer.start()
            except KafkaError as exc:
                with contextlib.suppress(Exception):
                    await producer.stop()
                log.warning("broker not reachable, retrying", extra={"error": str(exc), "retry_in_s": delay})
                await asyncio.sleep(delay)  # backoff between connection attempts, not synchronisation
                delay = min(delay * 2, 5.0)
                continue
            self._producer = producer
            self._connected.set()
            log.info("connected to kafka", extra={"bootstrap": self._settings.kafka_bootstrap})
            return

    async def publish(
        self, topic: str, *, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]] = ()
    ) -> RecordMetadata:
        timeout = self._settings.request_timeout_s
        if self._producer is None:
            raise BrokerUnavailable(
                f"Kafka at {self._settings.kafka_bootstrap} is not reachable yet; retry shortly "
                "(BRIGADE_KAFKA_BOOTSTRAP)"
            )
        try:
            async with asyncio.timeout(timeout):
                ack = await self._producer.send(topic, value=value, key=key, headers=list(headers))
                meta: RecordMetadata = await ack
        except (TimeoutError, KafkaError) as exc:
            raise BrokerUnavailable(
                f"Kafka at {self._settings.kafka_bootstrap} did not acknowledge within {timeout:g} s "
                f"(BRIGADE_REQUEST_TIMEOUT_S): {type(exc).__name__}; the broker may still take it once it recovers, "
                "so retry with the same request_id and session_id (a request already answered is not answered again)"
            ) from exc
        tp = (meta.topic, meta.partition)
        self.log_end[tp] = max(self.log_end.get(tp, 0), meta.offset + 1)
        return meta

    async def stop(self) -> None:
        if self._connector is not None:
            self._connector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connector
        if self._producer is not None:
            await self._producer.stop()
