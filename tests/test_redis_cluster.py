"""``BRIGADE_REDIS_CLUSTER``: key names that keep a session in one slot, and a mismatch caught at start-up.

The sink, the session routes and the whole path run on a real three-node cluster in the tests that use the
``any_redis`` fixture (``test_sink.py``, ``test_sessions_redis.py``, ``test_e2e.py``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sys

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from brigade.devtools.cluster import RedisClusterNodes
from brigade.devtools.process import free_port
from brigade.redis_config import RedisCredentialsRejected, RedisModeMismatch, check_redis
from schemas.naming import Names
from schemas.settings import Settings
from tests.brigade_process import brigade_env


def test_standalone_names_are_the_documented_ones() -> None:
    names = Names()
    assert names.stream_key("s1") == "brigade:stream:s1"
    assert names.session_key("s1") == "brigade:session:s1"
    assert names.request_key("r1", "s1") == "brigade:request:r1"


def test_cluster_names_put_a_sessions_keys_in_one_slot_and_sessions_in_many() -> None:
    names = Names(cluster=True)
    assert names.stream_key("s1") == "brigade:stream:{s1}"
    assert names.session_key("s1") == "brigade:session:{s1}"
    assert names.request_key("r1", "s1") == "brigade:request:{s1}:r1"
    for session in ("s1", "conv-42", "a.b:c"):
        keys = [names.stream_key(session), names.session_key(session), names.request_key("r9", session)]
        assert len({key_slot(k.encode()) for k in keys}) == 1, keys
    slots = {key_slot(names.stream_key(f"sess-{i}").encode()) for i in range(40)}
    assert len(slots) == 40, "the tag is the session id, not the namespace: sessions spread over the slots"


async def test_a_cluster_without_the_setting_is_an_error_naming_it(
    settings: Settings, redis_cluster: RedisClusterNodes
) -> None:
    mismatch = settings.model_copy(update={"redis_url": redis_cluster.url})
    with pytest.raises(RedisModeMismatch, match="set BRIGADE_REDIS_CLUSTER=true") as raised:
        await check_redis(mismatch)
    assert f"127.0.0.1:{redis_cluster.services[0].port}" in str(raised.value)


async def test_the_setting_without_a_cluster_is_an_error_naming_it(settings: Settings) -> None:
    mismatch = settings.model_copy(update={"redis_cluster": True})
    with pytest.raises(RedisModeMismatch, match="unset BRIGADE_REDIS_CLUSTER"):
        await check_redis(mismatch)
    await check_redis(settings)  # standalone and not set: fine


async def test_an_unreachable_redis_is_not_a_mismatch(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    down = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0", "redis_cluster": True})
    with caplog.at_level(logging.WARNING, logger="brigade.redis_config"):
        await check_redis(down, timeout_s=1)
    assert any("cluster mode not checked" in r.getMessage() for r in caplog.records)


async def test_a_user_denied_info_is_trusted_with_the_setting(
    settings: Settings, redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Managed Redis users often lack ``@dangerous``, where ``INFO`` lives: start-up must not stop there."""
    user = f"no-info-{secrets.token_hex(4)}"
    await redis_client.acl_setuser(
        user, enabled=True, passwords=["+pw"], keys=["*"], channels=["*"], commands=["+@all", "-info"]
    )
    try:
        address = settings.redis_url.removeprefix("redis://")
        denied = settings.model_copy(update={"redis_url": f"redis://{user}:pw@{address}"})
        with caplog.at_level(logging.WARNING, logger="brigade.redis_config"):
            await check_redis(denied)
    finally:
        await redis_client.acl_deluser(user)
    assert any("INFO denied" in r.getMessage() for r in caplog.records)


async def test_refused_credentials_are_an_error_naming_the_user_not_the_password(settings: Settings) -> None:
    address = settings.redis_url.removeprefix("redis://")
    wrong = settings.model_copy(update={"redis_url": f"redis://nobody:s3cret@{address}"})
    with pytest.raises(RedisCredentialsRejected, match="of user 'nobody'") as raised:
        await check_redis(wrong)
    assert "s3cret" not in str(raised.value)


@pytest.mark.parametrize("command", ["ingress", "worker"])
async def test_brigade_exits_at_start_up_naming_the_setting(
    settings: Settings, topics: list[str], redis_cluster: RedisClusterNodes, command: str
) -> None:
    env = brigade_env(settings, BRIGADE_REDIS_URL=redis_cluster.url, BRIGADE_PORT="0", BRIGADE_WORKER_CLASS="small")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "brigade", command, env=env, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 2, f"brigade {command} started against a cluster with BRIGADE_REDIS_CLUSTER unset"
    text = stderr.decode(errors="replace")
    assert "invalid configuration" in text and "set BRIGADE_REDIS_CLUSTER=true" in text
    assert "Traceback" not in text, "a configuration error is its message, not a stack"
