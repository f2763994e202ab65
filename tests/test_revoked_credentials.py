"""Redis credentials revoked while the fleet runs: the worker stops at once naming the variable, the ingress says so.

Start-up already refuses wrong credentials (``tests/test_redis_cluster.py``); these accept them first. The user
is a real ACL user on the session's redis-server, revoked as an operator would: a new password, its clients
killed, so the next command reconnects and is refused.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import httpx
import pytest
import redis.asyncio as aioredis

from brigade.devtools.process import free_port
from brigade.inprocess import fleet
from schemas.settings import Settings
from tests.brigade_process import brigade_env, brigade_process
from tests.test_worker import publish_requests, request


@dataclass(frozen=True)
class AclUser:
    name: str
    password: str
    settings: Settings  # the test's settings with this user in BRIGADE_REDIS_URL
    revoke: Callable[[], Awaitable[None]]


@pytest.fixture
async def acl_user(settings: Settings, redis_client: aioredis.Redis) -> AsyncIterator[AclUser]:
    name, password = f"u{secrets.token_hex(4)}", secrets.token_hex(8)
    await redis_client.acl_setuser(
        name, enabled=True, passwords=[f"+{password}"], keys=["*"], channels=["*"], commands=["+@all"]
    )

    async def revoke() -> None:
        await redis_client.acl_setuser(name, reset_passwords=True, passwords=[f"+{secrets.token_hex(8)}"])
        await redis_client.client_kill_filter(user=name)

    address = settings.redis_url.removeprefix("redis://")
    url = f"redis://{name}:{password}@{address}"
    try:
        yield AclUser(name, password, settings.model_copy(update={"redis_url": url}), revoke)
    finally:
        await redis_client.acl_deluser(name)


async def test_a_worker_whose_redis_password_is_revoked_exits_2_naming_the_variable(
    topics: list[str], acl_user: AclUser
) -> None:
    port = free_port()
    # Were refused credentials retried as an outage, the worker would sit here for ten minutes.
    env = brigade_env(acl_user.settings, BRIGADE_METRICS_PORT=str(port), BRIGADE_DEPENDENCY_RETRY_S="600")
    async with brigade_process("worker", env=env, port=port) as child:
        await acl_user.revoke()
        await publish_requests(acl_user.settings, [request("r-revoked", "s-revoked")])
        async with asyncio.timeout(60):
            code = await child.exited
        log = await child.final_log()
    assert code == 2, log
    assert f"refused the credentials of user '{acl_user.name}' it accepted at start-up" in log
    assert "BRIGADE_REDIS_URL" in log and "Traceback" not in log
    assert acl_user.password not in log
    assert "unreachable; retrying" not in log


async def test_an_ingress_whose_redis_password_is_revoked_says_so(topics: list[str], acl_user: AclUser) -> None:
    async with fleet(acl_user.settings, classes=[]) as f, httpx.AsyncClient(base_url=f.url, timeout=10) as http:
        assert (await http.get("/v1/sessions/s-revoked")).status_code == 404  # the credentials work
        await acl_user.revoke()
        resp = await http.get("/v1/sessions/s-revoked")
        assert resp.status_code == 503, resp.text
        message = resp.json()["error"]["message"]
        assert "refused the ingress's credentials" in message and "BRIGADE_REDIS_URL" in message
        assert resp.headers["retry-after"] == "30"
        ready = await http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["redis"] is False
