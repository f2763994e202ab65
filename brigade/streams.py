"""Typed XREAD over redis-py, whose stubs type the reply as a loose union."""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

from brigade.redis_config import RedisClient

Entry = tuple[str, dict[str, str]]
StreamReply = list[tuple[str, list[Entry]]]


async def xread(
    redis: RedisClient, cursors: Mapping[str, str], *, block_ms: int | None, count: int = 1000
) -> StreamReply:
    """XREAD on a client made with ``decode_responses=True``: stream key → [(entry id, fields)]."""
    reply = await redis.xread(dict(cursors), block=block_ms, count=count)  # type: ignore[arg-type]
    return cast(StreamReply, reply or [])
