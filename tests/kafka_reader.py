"""Read records off a real topic the way any outside consumer would: no group, from the beginning."""

from __future__ import annotations

import asyncio
from typing import TypeAlias

from aiokafka import AIOKafkaConsumer, ConsumerRecord

Record: TypeAlias = "ConsumerRecord[bytes, bytes]"


async def read_records(bootstrap: str, topic: str, *, count: int, timeout_s: float = 30) -> list[Record]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    records: list[Record] = []
    try:
        async with asyncio.timeout(timeout_s):
            while len(records) < count:
                batch = await consumer.getmany(timeout_ms=200)
                records.extend(r for rs in batch.values() for r in rs)
    finally:
        await consumer.stop()
    return records
