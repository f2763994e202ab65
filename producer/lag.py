"""Per-class backlog, sampled in the background: Σ (log end − committed offset of ``brigade-<class>``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from brigade.kafka_config import kafka_client_options
from producer.admission import Decision, decide, drain_rate, log_end, partition_lag
from producer.metrics import IngressMetrics
from producer.publisher import Publisher
from schemas.settings import Settings

log = logging.getLogger(__name__)


class LagMonitor:
    """Keeps the latest admission decision per class; the request path only reads a dict."""

    def __init__(self, settings: Settings, publisher: Publisher, metrics: IngressMetrics, *, interval_s: float = 0.5):
        self._settings = settings
        self._publisher = publisher
        self._metrics = metrics
        self._interval_s = interval_s
        self._decisions: dict[str, Decision] = {}
        self._limits = {c.name: c.max_lag for c in settings.cost_classes}  # read per request: built once
        self._last: dict[str, tuple[float, int]] = {}  # class → (monotonic time, Σ committed)
        self.samples = 0

    def decision(self, cost_class: str) -> Decision:
        decided = self._decisions.get(cost_class)
        if decided is not None:
            return decided
        return Decision(admit=True, lag=0, limit=self._limits[cost_class], retry_after_s=0)

    async def run(self) -> None:
        """Sample until cancelled; reconnect with backoff when the broker goes away."""
        while True:
            admin = AIOKafkaAdminClient(**kafka_client_options(self._settings))
            reader = AIOKafkaConsumer(**kafka_client_options(self._settings), enable_auto_commit=False)
            try:
                await admin.start()
                await reader.start()
                while True:
                    await self._sample(admin, reader)
                    self.samples += 1
                    await asyncio.sleep(self._interval_s)  # the sampling period itself
            except KafkaError as exc:
                log.warning("lag sampling failed; retrying", extra={"error": str(exc)})
            except Exception:
                # Admission must not go stale silently: log loudly and keep sampling.
                log.exception("lag sampling raised unexpectedly; retrying")
            finally:
                with contextlib.suppress(Exception):
                    await reader.stop()
                with contextlib.suppress(Exception):
                    await admin.close()
            await asyncio.sleep(1.0)  # backoff before reconnecting

    async def _sample(self, admin: AIOKafkaAdminClient, reader: AIOKafkaConsumer) -> None:
        names = self._settings.names
        await reader.topics()  # refreshes metadata so partitions_for_topic knows new topics
        for cls in self._settings.cost_classes:
            topic = names.request_topic(cls.name)
            partitions = reader.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            if not tps:
                continue
            listed = {tp.partition: end for tp, end in (await reader.end_offsets(tps)).items()}
            produced = {p: end for (t, p), end in self._publisher.log_end.items() if t == topic}
            ends = log_end(listed, produced)
            offsets = await admin.list_consumer_group_offsets(names.consumer_group(cls.name), partitions=tps)
            committed = {tp.partition: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}
            lag = sum(partition_lag(ends, committed).values())
            now, total_committed = time.monotonic(), sum(committed.values())
            prev = self._last.get(cls.name)
            rate = drain_rate(prev[1], total_committed, now - prev[0]) if prev else None
            self._last[cls.name] = (now, total_committed)
            self._decisions[cls.name] = decide(lag=lag, limit=cls.max_lag, drain_rate=rate)
            self._metrics.lag.labels(cls.name).set(lag)
