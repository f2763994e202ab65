"""The Redis client from settings, standalone or cluster: one definition for the ingress and the workers.

``BRIGADE_REDIS_CLUSTER=true`` (Redis Cluster, ElastiCache or Memorystore in cluster mode) selects redis-py's
cluster client, which routes each command to the node owning its key's slot, and key names that put every key
of one session in one slot (``schemas/naming.py``): the sink's Lua scripts touch a request's status, its
session's stream and the session document together, and Redis Cluster runs a script only on keys of one slot.

A setting, not a guess made by each process: the key names are part of the contract with every reader, so
they must not depend on which node a process happened to ask. ``open_redis`` checks it against the server
first (``check_redis``): a mismatch is an error at start-up that names the setting, where it would
otherwise surface as MOVED or CROSSSLOT errors on the first requests.
"""

from __future__ import annotations

import logging
from typing import Any, TypeAlias
from urllib.parse import urlsplit

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline

from brigade.config_error import ConfigurationError
from schemas.settings import Settings

log = logging.getLogger(__name__)

RedisClient: TypeAlias = aioredis.Redis | aioredis.RedisCluster
RedisPipeline: TypeAlias = Pipeline | ClusterPipeline


class RedisModeMismatch(ConfigurationError):
    """``BRIGADE_REDIS_CLUSTER`` says one thing and the server another."""

    variable = "BRIGADE_REDIS_CLUSTER"


async def open_redis(settings: Settings, **options: Any) -> RedisClient:
    """A client for ``BRIGADE_REDIS_URL`` (with ``decode_responses``), after ``check_redis``.

    In cluster mode the URL names any node, and the client learns the slot map here, before the first
    commands run concurrently: redis-py 8.1's cluster client, left to learn it on first use, raced its own
    start-up under 40 concurrent XREADs (AttributeError on a connection it had just closed). An unreachable
    cluster leaves that to the first command, as a standalone client would.
    """
    await check_redis(settings)
    if not settings.redis_cluster:
        return aioredis.from_url(settings.redis_url, decode_responses=True, **options)
    client = aioredis.RedisCluster.from_url(settings.redis_url, decode_responses=True, **options)
    try:
        await client.initialize()
    except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as exc:
        log.warning("redis cluster unreachable at start-up; slot map not loaded", extra={"error": str(exc)})
    return client


class RedisCredentialsRejected(ConfigurationError):
    """``BRIGADE_REDIS_URL``'s user or password is wrong: retrying would only repeat it."""

    variable = "BRIGADE_REDIS_URL"

    @classmethod
    def refused(cls, url: str, exc: BaseException, *, running: bool = False) -> RedisCredentialsRejected:
        """The error for ``exc`` (redis-py's ``AuthenticationError``), naming the user but never the password.

        ``running``: Redis accepted these credentials at start-up and refused them on a reconnect — revoked, or
        rotated while the process kept the old ones.
        """
        when = " it accepted at start-up (revoked or rotated since?)" if running else ""
        return cls(
            f"Redis at {redis_address(url)} refused the credentials{_as_user(url)}{when} ({exc}): put the right "
            "user and password in the URL, redis://<user>:<password>@<host>:<port>/<db> (rediss:// for TLS)"
        )


def _as_user(url: str) -> str:
    user = urlsplit(url).username
    return f" of user {user!r}" if user else " (no user in the URL: the default user)"


def redis_address(url: str) -> str:
    """host:port of a Redis URL, without its credentials (for messages and logs)."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


async def check_redis(settings: Settings, *, timeout_s: float = 5.0) -> None:
    """The settings against the server: ``RedisCredentialsRejected`` when it refuses the URL's credentials,
    ``RedisModeMismatch`` when its cluster mode is not ``BRIGADE_REDIS_CLUSTER``.

    An unreachable Redis is neither: it is logged and start-up goes on, because the worker rides out a Redis
    outage (``consumer/retry.py``) and the ingress answers 503 meanwhile. Nor is a user whose ACL denies
    ``INFO`` (it is in ``@dangerous``, which managed Redis users often lack): the setting is trusted.
    """
    probe = aioredis.from_url(settings.redis_url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        info = await probe.info("cluster")
    except redis.exceptions.AuthenticationError as exc:  # a ConnectionError to redis-py, but no retry mends it
        raise RedisCredentialsRejected.refused(settings.redis_url, exc) from None
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        log.warning("redis unreachable at start-up; cluster mode not checked", extra={"error": str(exc)})
        return
    except redis.exceptions.NoPermissionError as exc:
        log.warning(
            "INFO denied to this Redis user; cluster mode not checked, BRIGADE_REDIS_CLUSTER trusted",
            extra={"error": str(exc)},
        )
        return
    finally:
        await probe.aclose()
    server_cluster = bool(int(info.get("cluster_enabled", 0)))
    if server_cluster == settings.redis_cluster:
        return
    where = redis_address(settings.redis_url)
    if server_cluster:
        raise RedisModeMismatch(
            f"Redis at {where} runs in cluster mode but BRIGADE_REDIS_CLUSTER is false: set "
            "BRIGADE_REDIS_CLUSTER=true on the ingress and every worker (the keys then carry the session id as "
            "a {hash tag}, so that a session's keys share a slot)"
        )
    raise RedisModeMismatch(
        f"BRIGADE_REDIS_CLUSTER is true but Redis at {where} is not a cluster (cluster_enabled:0): unset "
        "BRIGADE_REDIS_CLUSTER, or point BRIGADE_REDIS_URL at a node of the cluster"
    )
