"""``consumer.main.main`` through ``brigade worker``: a real process, SIGTERM drains and exits 0."""

from __future__ import annotations

import signal
import subprocess
import sys

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


def test_a_cpu_worker_start_does_not_import_onnx() -> None:
    """``onnx`` (through ml_dtypes) took ~0.6 s of a 1.3 s worker cold start; only a GPU worker's memory plan
    reads a graph with it. A fresh interpreter, because this test session has imported it already."""
    probe = "import sys, consumer.main, producer.main; print(sorted({'onnx', 'ml_dtypes'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
