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
from typing import NamedTuple

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.structs import RecordMetadata

from brigade.kafka_config import kafka_client_options
from schemas.settings import Settings

log = logging.getLogger(__name__)


class BrokerUnavailable(Exception):
    """The broker did not take the message within the request timeout."""


class Record(NamedTuple):
    topic: str
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


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
                linger_ms=self._settings.kafka_linger_ms,
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

    def _not_acknowledged(self, exc: BaseException | None) -> BrokerUnavailable:
        timeout = self._settings.request_timeout_s
        cause = type(exc).__name__ if exc is not None else "TimeoutError"
        return BrokerUnavailable(
            f"Kafka at {self._settings.kafka_bootstrap} did not acknowledge within {timeout:g} s "
            f"(BRIGADE_REQUEST_TIMEOUT_S): {cause}; the broker may still take it once it recovers, "
            "so retry with the same request_id and session_id (a request already answered is not answered again)"
        )

    async def publish_many(self, records: Sequence[Record]) -> list[RecordMetadata | BrokerUnavailable]:
        """Hand every record to the producer, then wait for their acks under one deadline; an ack or the reason
        there is none, per record, in order.

        One coroutine sends them all, so a batch of requests costs one deadline and no task per record, and
        the records share produce requests. A record the broker has not acknowledged by the deadline, or that
        could not be handed over, is ``BrokerUnavailable``.
        """
        if not records:
            return []
        if self._producer is None:
            unreachable = BrokerUnavailable(
                f"Kafka at {self._settings.kafka_bootstrap} is not reachable yet; retry shortly "
                "(BRIGADE_KAFKA_BOOTSTRAP)"
            )
            return [unreachable] * len(records)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.request_timeout_s
        acks: list[asyncio.Future[RecordMetadata]] = []
        handover: BaseException | None = None
        try:
            async with asyncio.timeout_at(deadline):
                for r in records:
                    acks.append(await self._producer.send(r.topic, value=r.value, key=r.key, headers=list(r.headers)))
        except (TimeoutError, KafkaError) as exc:
            handover = exc  # the rest were never handed to the producer
        if acks:
            await asyncio.wait(acks, timeout=max(0.0, deadline - loop.time()))
        out: list[RecordMetadata | BrokerUnavailable] = []
        for i in range(len(records)):
            if i >= len(acks):
                out.append(self._not_acknowledged(handover))
                continue
            ack = acks[i]
            if not ack.done():
                ack.cancel()  # nobody will read it; the record may still reach the broker
                out.append(self._not_acknowledged(None))
                continue
            error = ack.exception()
            if error is not None:
                if not isinstance(error, KafkaError):
                    raise error  # not the broker's answer: a bug, answered as the one error shape
                out.append(self._not_acknowledged(error))
                continue
            meta = ack.result()
            tp = (meta.topic, meta.partition)
            self.log_end[tp] = max(self.log_end.get(tp, 0), meta.offset + 1)
            out.append(meta)
        return out

    async def stop(self) -> None:
        if self._connector is not None:
            self._connector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connector
        if self._producer is not None:
            await self._producer.stop()
