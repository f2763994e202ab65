"""``consumer.main.main`` through ``brigade worker``: a real process, SIGTERM drains and exits 0."""

from __future__ import annotations

import signal

from brigade.devtools.process import free_port
from schemas.settings import Settings
from tests.brigade_process import brigade_env, brigade_process


async def test_sigterm_drains_and_exits_cleanly(settings: Settings, topics: list[str]) -> None:
    port = free_port()
    env = brigade_env(settings, BRIGADE_METRICS_PORT=str(port))
    async with brigade_process("worker", env=env, port=port) as child:
        child.proc.send_signal(signal.SIGTERM)
        assert await child.exited == 0, child.log
        log = await child.final_log()
    assert "[shutdown] signal received: draining" in log and "[shutdown] stopped" in log
