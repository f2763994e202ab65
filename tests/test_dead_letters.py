"""The dead-letter producer against a real broker that freezes (SIGSTOP) while a poison record goes out.

It uses its own broker, never the session one: it stops it.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from brigade.devtools.process import Service, free_port
from brigade.devtools.servers import kafka_service
from consumer.dlq import DeadLetters, Rejected
from consumer.retry import Backoff, kafka_retryable
from producer.topics import ensure_topics
from schemas.settings import Settings
from tests.kafka_reader import read_records


@pytest.fixture
def own_kafka(tmp_path: Path) -> Iterator[Service]:
    service = kafka_service(port=free_port(), log_dir=tmp_path).start()
    yield service
    service.stop()


async def test_a_dead_letter_waits_out_a_frozen_broker_and_lands_once(own_kafka: Service) -> None:
    settings = Settings(kafka_bootstrap=f"127.0.0.1:{own_kafka.port}", kafka_idempotence=False, namespace="dlq")
    await ensure_topics(settings)
    unreachable = asyncio.Event()

    def on_change(_: str, reachable: bool) -> None:
        if not reachable:
            unreachable.set()

    retry = Backoff("kafka", retryable=kafka_retryable, deadline_s=60, on_change=on_change)
    dead = DeadLetters(settings, retry=retry, attempt_s=0.3)
    await dead.start()
    poison = Rejected(reason="not_json", detail="value is not JSON")
    broker = own_kafka.process
    assert broker is not None
    try:
        broker.send_signal(signal.SIGSTOP)
        try:
            sending = asyncio.create_task(
                dead.send(value=b"\x00{", key=b"k", rejected=poison, topic="brigade.small", partition=3, offset=7)
            )
            async with asyncio.timeout(20):
                await unreachable.wait()  # the first attempt timed out: without retries the send has failed
            assert not sending.done()
        finally:
            broker.send_signal(signal.SIGCONT)
        async with asyncio.timeout(30):
            await sending
        assert retry.retries >= 1
        # A marker behind it on the same partition (same key): every copy a retry could have sent is before it.
        marker = Rejected(reason="empty", detail="marker")
        await dead.send(value=b"marker", key=b"k", rejected=marker, topic="brigade.small", partition=3, offset=8)
    finally:
        await dead.stop()

    got = await read_records(settings.kafka_bootstrap, settings.names.dlq_topic, count=2)
    assert [r.value for r in got][:2] == [b"\x00{", b"marker"], "one copy, however many attempts it took"
