"""Real services for the tests: Tansu (Kafka protocol) and redis-server on free ports (and, for the tests
of ``BRIGADE_REDIS_CLUSTER``, a three-node Redis Cluster of redis-servers).

Each test gets its own namespace, so topics, consumer groups and Redis keys never collide.
Missing dev tools skip the tests on a laptop and fail them in CI (``CI`` set).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Protocol, TypeVar

import pytest
import redis.asyncio as aioredis

from brigade.devtools.cluster import RedisClusterNodes
from brigade.devtools.process import Service, free_port
from brigade.devtools.servers import DEV_SESSION_TIMEOUT_MS, MissingDevTool, kafka_service, redis_service
from brigade.redis_config import RedisClient, open_redis
from producer.topics import ensure_topics
from schemas.settings import Settings


class _Stoppable(Protocol):
    def stop(self) -> None: ...


S = TypeVar("S", bound=_Stoppable)


def _running(start: Callable[[], S]) -> Iterator[S]:
    """A session's service: started, yielded, stopped; skipped on a laptop without the dev tools (not in CI)."""
    try:
        service = start()
    except MissingDevTool as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))
    yield service
    service.stop()


@pytest.fixture(scope="session")
def kafka_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    yield from _running(lambda: kafka_service(port=free_port(), log_dir=tmp_path_factory.mktemp("kafka")).start())


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    yield from _running(lambda: redis_service(port=free_port(), log_dir=tmp_path_factory.mktemp("redis")).start())


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    yield from _running(lambda: RedisClusterNodes(tmp_path_factory.mktemp("redis-cluster")).start())


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
    return (await ensure_topics(settings)).names


@pytest.fixture
async def redis_client(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(settings.redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def cluster_settings(settings: Settings, redis_cluster: RedisClusterNodes) -> Settings:
    """``settings`` pointed at the Redis Cluster, with ``BRIGADE_REDIS_CLUSTER=true``."""
    return settings.model_copy(update={"redis_url": redis_cluster.url, "redis_cluster": True})


@pytest.fixture(params=["standalone", "cluster"])
def any_redis(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    """``settings`` on the plain redis-server, then on the Redis Cluster: a test using it runs on both."""
    if request.param == "cluster":
        cluster: Settings = request.getfixturevalue("cluster_settings")
        return cluster
    return settings


@pytest.fixture
async def any_redis_client(any_redis: Settings) -> AsyncIterator[RedisClient]:
    """A client for ``any_redis``'s Redis, made the way the ingress and the workers make theirs."""
    client = await open_redis(any_redis)
    yield client
    await client.aclose()
