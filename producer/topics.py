"""Topic bootstrap: one request topic per cost class plus the dead-letter topic, created if missing."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import NoError, TopicAlreadyExistsError, for_code

from brigade.kafka_config import kafka_client_options
from schemas.settings import Settings

log = logging.getLogger(__name__)

DLQ_PARTITIONS = 1
DEFAULT_REPLICATION = 3  # what production Kafka clusters conventionally run


def desired_topics(settings: Settings) -> dict[str, int]:
    """Topic name → partition count, for every class and the DLQ."""
    names = settings.names
    topics = {names.request_topic(c.name): c.partitions for c in settings.cost_classes}
    topics[names.dlq_topic] = DLQ_PARTITIONS
    return topics


@dataclass(frozen=True, slots=True)
class Created:
    """What ``ensure_topics`` created: names, and the replication factor they got (None: nothing created)."""

    names: list[str]
    replication_factor: int | None = None


class TopicsNotCreated(RuntimeError):
    """The broker refused some topics (replication, policy, ACL, config): each name with the broker's reason."""

    def __init__(self, failures: Mapping[str, str]) -> None:
        super().__init__("; ".join(f"{name}: {reason}" for name, reason in failures.items()))
        self.failures = dict(failures)


def replication_for(brokers: int, requested: int | None = None) -> int:
    """Kafka's usual three copies where the cluster has three brokers, else one per broker; a request as given.

    With one copy, the loss of one broker's disk loses requests the ingress had already acknowledged, and a
    broker restart stops the class until it is back.
    """
    if requested is not None:
        return requested
    return max(1, min(DEFAULT_REPLICATION, brokers))


def creation_failures(response: Any) -> dict[str, str]:
    """The topics a CreateTopics response refused, with the broker's reason; one that already exists is fine
    (another replica of this job, or a partly failed earlier run, created it)."""
    failures = {}
    for topic, code, *message in response.topic_errors:
        error = for_code(code)
        if error is NoError or error is TopicAlreadyExistsError:
            continue
        reason = message[0] if message and message[0] else error.description
        failures[topic] = f"{error.__name__}: {reason}"
    return failures


async def ensure_topics(
    settings: Settings, *, replication_factor: int | None = None, configs: Mapping[str, str] | None = None
) -> Created:
    """Create the missing topics with ``configs`` (topic-level settings, such as ``retention.ms``).

    Existing topics are left as they are. The replication factor is ``replication_for`` the cluster's brokers
    unless given. Raises ``TopicsNotCreated`` when the broker refuses any, after creating the others.
    """
    admin = AIOKafkaAdminClient(**kafka_client_options(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = {name: parts for name, parts in desired_topics(settings).items() if name not in existing}
        if not missing:
            return Created([])
        brokers = len((await admin.describe_cluster())["brokers"])
        factor = replication_for(brokers, replication_factor)
        topics = [NewTopic(name, parts, factor, topic_configs=dict(configs or {})) for name, parts in missing.items()]
        response = await admin.create_topics(topics)
        failures = creation_failures(response)
        created = [topic for topic, code, *_ in response.topic_errors if code == 0]  # not those raced to
        log.info("created topics", extra={"topics": created, "replication_factor": factor, "brokers": brokers})
        if failures:
            raise TopicsNotCreated(failures)
        return Created(created, factor)
    finally:
        await admin.close()
