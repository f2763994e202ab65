"""``brigade ingress`` / ``brigade worker`` as real child processes, ready when their /readyz says so."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from schemas.settings import Settings


def brigade_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The BRIGADE_* variables a child needs to join this test's broker, Redis and namespace."""
    return {
        **os.environ,
        "BRIGADE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "BRIGADE_KAFKA_IDEMPOTENCE": "false",
        "BRIGADE_REDIS_URL": settings.redis_url,
        "BRIGADE_NAMESPACE": settings.namespace,
        "BRIGADE_CLASS_PARTITIONS": ",".join(map(str, settings.class_partitions)),
        "BRIGADE_MODEL": settings.model,
        "BRIGADE_MODEL_CACHE_DIR": str(settings.model_cache_dir),
        "BRIGADE_LOG_FORMAT": "text",
        **settings.per_class_env(),
        **extra,
    }


@asynccontextmanager
async def brigade_process(
    *args: str, env: dict[str, str], port: int, timeout_s: float = 60
) -> AsyncIterator[tuple[asyncio.subprocess.Process, asyncio.Future[int]]]:
    """Start ``brigade ARGS``, wait until ``/readyz`` on ``port`` answers 200; kill it on exit if still alive.

    Yields the process and a future of its exit code.
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "brigade", *args, env=env, stderr=asyncio.subprocess.PIPE
    )
    exited = asyncio.ensure_future(proc.wait())
    try:
        async with asyncio.timeout(timeout_s), httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            while True:  # readiness probe, as Kubernetes would poll it
                assert not exited.done(), f"brigade {' '.join(args)} exited during start-up"
                try:
                    if (await http.get("/readyz", timeout=1)).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.wait({exited}, timeout=0.2)
        yield proc, exited
    finally:
        if proc.returncode is None:
            proc.kill()
        await exited
