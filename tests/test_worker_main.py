"""``consumer.main.main`` through ``brigade worker``: a real process, SIGTERM drains and exits 0."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import httpx

from brigade.devtools.process import free_port
from schemas.settings import Settings


def _env(settings: Settings, metrics_port: int) -> dict[str, str]:
    return {
        **os.environ,
        "BRIGADE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "BRIGADE_KAFKA_IDEMPOTENCE": "false",
        "BRIGADE_REDIS_URL": settings.redis_url,
        "BRIGADE_NAMESPACE": settings.namespace,
        "BRIGADE_CLASS_PARTITIONS": ",".join(map(str, settings.class_partitions)),
        "BRIGADE_MODEL": settings.model,
        "BRIGADE_MODEL_CACHE_DIR": str(settings.model_cache_dir),
        "BRIGADE_METRICS_PORT": str(metrics_port),
        "BRIGADE_LOG_FORMAT": "text",
    }


async def test_sigterm_drains_and_exits_cleanly(settings: Settings, topics: list[str]) -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "brigade", "worker", env=_env(settings, port), stderr=asyncio.subprocess.PIPE
    )
    exited = asyncio.ensure_future(proc.wait())
    try:
        async with asyncio.timeout(60), httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            while True:  # readiness probe, as Kubernetes would poll it
                assert not exited.done(), "worker exited during start-up"
                try:
                    if (await http.get("/readyz", timeout=1)).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.wait({exited}, timeout=0.2)
            proc.send_signal(signal.SIGTERM)
            assert proc.stderr is not None
            log = (await proc.stderr.read()).decode()
            assert await exited == 0, log
        assert "[shutdown] signal received: draining" in log and "[shutdown] stopped" in log
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
