"""Real services for the tests: Tansu (Kafka protocol) and redis-server on free ports.

Each test gets its own namespace, so topics, consumer groups and Redis keys never collide.
Missing dev tools skip the tests on a laptop and fail them in CI (``CI`` set).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from brigade.devtools.process import Service, free_port
from brigade.devtools.servers import DEV_SESSION_TIMEOUT_MS, MissingDevTool, kafka_service, redis_service
from producer.topics import ensure_topics
from schemas.settings import Settings


def _start(factory: str, tmp: Path) -> Service:
    try:
        if factory == "kafka":
            return kafka_service(port=free_port(), log_dir=tmp).start()
        return redis_service(port=free_port(), log_dir=tmp).start()
    except MissingDevTool as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def kafka_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    service = _start("kafka", tmp_path_factory.mktemp("kafka"))
    yield service
    service.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    service = _start("redis", tmp_path_factory.mktemp("redis"))
    yield service
    service.stop()


@pytest.fixture(scope="session")
def model_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built-in models are generated once per test session into this directory."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture
def settings(kafka_server: Service, redis_server: Service, model_cache_dir: Path) -> Settings:
    return Settings(
        kafka_bootstrap=f"127.0.0.1:{kafka_server.port}",
        kafka_idempotence=False,  # Tansu lacks InitProducerId
        kafka_session_timeout_ms=DEV_SESSION_TIMEOUT_MS,  # each worker's join: 2 s, not 5
        redis_url=f"redis://127.0.0.1:{redis_server.port}/0",
        namespace=f"t{uuid.uuid4().hex[:10]}",
        class_partitions=(2, 2, 1),
        model="builtin:tiny",
        model_cache_dir=model_cache_dir,
        metrics_port=0,
        port=0,
        log_format="text",
    )


@pytest.fixture
async def topics(settings: Settings) -> list[str]:
    return await ensure_topics(settings)


@pytest.fixture
async def redis_client(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(settings.redis_url, decode_responses=True)
    yield client
    await client.aclose()
