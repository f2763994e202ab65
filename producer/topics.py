"""Topic bootstrap: one request topic per cost class plus the dead-letter topic, created if missing."""

from __future__ import annotations

import contextlib
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from brigade.kafka_config import kafka_client_options
from schemas.settings import Settings

log = logging.getLogger(__name__)

DLQ_PARTITIONS = 1


def desired_topics(settings: Settings) -> dict[str, int]:
    """Topic name → partition count, for every class and the DLQ."""
    names = settings.names
    topics = {names.request_topic(c.name): c.partitions for c in settings.cost_classes}
    topics[names.dlq_topic] = DLQ_PARTITIONS
    return topics


async def ensure_topics(settings: Settings, *, replication_factor: int = 1) -> list[str]:
    """Create the missing topics; return the names created. Existing topics are left as they are."""
    admin = AIOKafkaAdminClient(**kafka_client_options(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = desired_topics(settings)
        missing = [
            NewTopic(name, num_partitions=parts, replication_factor=replication_factor)
            for name, parts in wanted.items()
            if name not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another replica won the race
                await admin.create_topics(missing)
            log.info("created topics", extra={"topics": [t.name for t in missing]})
        return [t.name for t in missing]
    finally:
        await admin.close()
