"""``producer.main.main`` through ``brigade ingress``: a real process and real signals.

First SIGTERM: readiness drops, session streams end, the process exits 0. Second signal: exit at once.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from brigade.devtools.process import free_port
from schemas.settings import Settings
from tests.brigade_process import Child, brigade_env, brigade_process


@pytest.fixture
async def ingress_process(settings: Settings, topics: list[str]) -> AsyncIterator[tuple[Child, str]]:
    port = free_port()
    env = brigade_env(settings, BRIGADE_HOST="127.0.0.1", BRIGADE_PORT=str(port))
    async with brigade_process("ingress", env=env, port=port) as child:
        yield child, f"http://127.0.0.1:{port}"


async def test_sigterm_ends_session_streams_and_exits_cleanly(ingress_process: tuple[Child, str]) -> None:
    child, url = ingress_process
    proc = child.proc
    async with (
        httpx.AsyncClient(base_url=url, timeout=10) as http,
        http.stream("GET", "/v1/sessions/idle/events") as resp,
    ):
        assert resp.status_code == 200
        proc.send_signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        async with asyncio.timeout(10):
            _ = [line async for line in resp.aiter_lines()]  # ends when the ingress closes the stream
        assert loop.time() - t0 < 4, "the session stream waited for uvicorn's grace timeout"
    assert await proc.wait() == 0, child.log
    log = await child.final_log()
    assert "[shutdown] draining" in log and "[shutdown] stopped" in log


async def test_a_peer_that_hangs_up_cannot_kill_the_process(ingress_process: tuple[Child, str]) -> None:
    """SIGPIPE stays ignored in the servers, so a write to a socket whose peer left (a probe that timed out,
    a client gone mid-stream) fails in the write instead of killing the process. A worker generating its model
    died this way when its readiness probe's client gave up (rc -13 in ``brigade bench --figure coldstart``)."""
    child, _ = ingress_process
    status = await asyncio.to_thread(Path(f"/proc/{child.proc.pid}/status").read_text)
    ignored = int(next(line for line in status.splitlines() if line.startswith("SigIgn:")).split()[1], 16)
    assert ignored & (1 << (signal.SIGPIPE - 1)), "SIGPIPE is not ignored"


async def test_second_signal_exits_at_once(ingress_process: tuple[Child, str], settings: Settings) -> None:
    child, url = ingress_process
    proc = child.proc
    body = {"model": settings.model, "prompt": "nobody answers", "stream": True}
    async with (
        httpx.AsyncClient(base_url=url, timeout=10) as http,
        http.stream("POST", "/v1/completions", json=body) as resp,
    ):
        assert resp.status_code == 200  # an answer in flight keeps the graceful stop waiting
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            await child.wait_for_line("[shutdown] draining")
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(3):
            assert await proc.wait() == 130
