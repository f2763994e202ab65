"""``brigade topics create``: partitions per class, a replication factor that fits the cluster, refusals reported.

Tansu refuses nothing but a duplicate, so the broker's other refusals (replication, policy, ACL) are checked on
CreateTopics responses built the way aiokafka decodes them.
"""

from __future__ import annotations

import asyncio
import sys

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.admin import CreateTopicsResponse_v3

from brigade.devtools.process import free_port
from brigade.kafka_config import kafka_client_options
from producer.topics import creation_failures, desired_topics, ensure_topics, replication_for
from schemas.settings import Settings
from tests.brigade_process import brigade_env


def test_three_copies_where_three_brokers_exist_else_one_per_broker() -> None:
    assert [replication_for(n) for n in (1, 2, 3, 7)] == [1, 2, 3, 3]
    assert replication_for(1, requested=3) == 3, "an explicit factor is the broker's to refuse, not ours to lower"


def test_refusals_are_reported_and_a_topic_that_already_exists_is_not_one() -> None:
    response = CreateTopicsResponse_v3(
        throttle_time_ms=0,
        topic_errors=[
            ("made", 0, None),
            ("raced", 36, "Topic 'raced' already exists."),
            ("big", 38, "Replication factor: 3 larger than available brokers: 1."),
            ("denied", 29, None),
        ],
    )
    failures = creation_failures(response)
    assert failures == {
        "big": "InvalidReplicationFactorError: Replication factor: 3 larger than available brokers: 1.",
        "denied": "TopicAuthorizationFailedError: Returned by the broker when the client is not authorized to "
        "access the requested topic.",
    }


async def test_two_jobs_at_once_create_every_topic_once(settings: Settings) -> None:
    first, second = await asyncio.gather(ensure_topics(settings), ensure_topics(settings))
    wanted = desired_topics(settings)
    assert set(first.names) | set(second.names) == set(wanted)
    assert not set(first.names) & set(second.names), "a topic the other job made is not reported as made twice"
    admin = AIOKafkaAdminClient(**kafka_client_options(settings))
    await admin.start()
    try:
        described = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(list(wanted))}
    finally:
        await admin.close()
    assert described == wanted
    again = await ensure_topics(settings)
    assert again.names == [] and again.replication_factor is None


async def test_the_command_creates_with_the_clusters_factor_then_finds_them(settings: Settings) -> None:
    env = brigade_env(settings)

    async def create(*args: str) -> tuple[int | None, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "brigade", "topics", "create", *args, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        return proc.returncode, out.decode(), err.decode()

    code, out, err = await create("--config", "retention.ms=3600000")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == len(desired_topics(settings))
    assert all("created replication=1" in line for line in lines), out  # the dev broker is one broker
    code, out, _ = await create()
    assert code == 0 and all(line.endswith("exists") for line in out.splitlines()), out
    code, _, err = await create("--config", "retention.ms")
    assert code == 2 and "--config" in err and "KEY=VALUE" in err


@pytest.mark.parametrize("factor", ["0", "three"])
async def test_a_bad_factor_is_a_usage_error(settings: Settings, factor: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "brigade", "topics", "create", "--replication-factor", factor,
        env=brigade_env(settings), stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 2 and "--replication-factor" in err.decode()


async def test_an_unreachable_broker_is_one_line_naming_the_variable(settings: Settings) -> None:
    unreachable = settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{free_port()}"})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "brigade", "topics", "create",
        env=brigade_env(unreachable), stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    text = err.decode()
    assert proc.returncode == 1 and "cannot reach Kafka" in text and "BRIGADE_KAFKA_BOOTSTRAP" in text
    assert "Traceback" not in text
