"""``brigade dev`` as a user runs it: separate OS processes, a request served, SIGTERM stops everything."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import httpx
import pytest

from brigade.devtools.process import port_open

pytestmark = pytest.mark.slow


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (entry / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if text in cmdline or text in environ:
            pids.append(int(entry.name))
    return pids


async def test_dev_stack_starts_serves_and_stops_cleanly(tmp_path: Path, model_cache_dir: Path) -> None:
    log_dir = tmp_path / "logs"
    env = {
        **os.environ,
        "COLUMNS": "200",
        "BRIGADE_MODEL_CACHE_DIR": str(model_cache_dir),
        "BRIGADE_DEV_TEST_MARK": str(tmp_path),  # inherited by every child: lets us find orphans
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "brigade", "dev",
        "--port", "0", "--kafka-port", "0", "--redis-port", "0", "--workers-per-class", "1",
        "--log-dir", str(log_dir),
        env=env, stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    url = None
    seen: list[str] = []
    try:
        async with asyncio.timeout(240):
            while url is None:
                line = (await proc.stderr.readline()).decode()
                if not line:
                    raise AssertionError("brigade dev exited early:\n" + "".join(seen))
                seen.append(line)
                match = re.search(r"ingress\s+(http://127\.0\.0\.1:\d+)", line)
                url = match.group(1) if match else None
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            resp = await http.post(
                "/v1/requests", json={"session_id": "dev-1", "prompt": "hello", "max_new_tokens": 4, "temperature": 0}
            )
            assert resp.status_code == 202, resp.text
            rid = resp.json()["request_id"]
            types = []
            async with http.stream("GET", "/v1/sessions/dev-1/events", params={"request_id": rid}) as sse:
                async for line in sse.aiter_lines():
                    if line.startswith("event:"):
                        types.append(line.split(":", 1)[1].strip())
            assert types[-1] == "done" and types.count("done") == 1, types
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(90):
            rest = await proc.stderr.read()
            code = await proc.wait()
    assert code == 0, "".join(seen) + rest.decode()
    assert "[shutdown]" in rest.decode()
    port = int(url.rsplit(":", 1)[1])
    assert not port_open("127.0.0.1", port)
    assert _processes_mentioning(str(tmp_path)) == []


def test_the_help_names_the_extra_to_install() -> None:
    """Rich markup read ``[dev]`` as a style tag and printed ``pip install 'brigade'``."""
    from typer.testing import CliRunner

    from brigade.cli import app

    result = CliRunner().invoke(app, ["dev", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "pip install 'brigade[dev]'" in result.output, result.output


def test_the_dev_stack_shortens_the_kafka_session_unless_it_was_set() -> None:
    from brigade.devstack import plan_stack
    from brigade.devtools.servers import DEV_SESSION_TIMEOUT_MS
    from schemas.settings import Settings

    def planned(base: Settings) -> int:
        stack = plan_stack(base, port=0, kafka_port=0, redis_port=0, workers_per_class=1, log_dir=None)
        return stack.settings.kafka_session_timeout_ms

    assert planned(Settings()) == DEV_SESSION_TIMEOUT_MS
    assert planned(Settings(kafka_session_timeout_ms=12_000)) == 12_000


def test_the_dev_stack_runs_redis_as_a_cluster_when_asked(tmp_path: Path, model_cache_dir: Path) -> None:
    """``--redis-cluster`` (BRIGADE_REDIS_CLUSTER=true): three nodes, and an ingress that starts against them."""
    import redis

    from brigade.devstack import plan_stack, running
    from schemas.settings import Settings

    base = Settings(redis_cluster=True, model_cache_dir=model_cache_dir)
    stack = plan_stack(base, port=0, kafka_port=0, redis_port=0, workers_per_class=0, log_dir=tmp_path)
    with running(stack, ready_timeout_s=60) as up:
        nodes = [s for s in up.services if s.name == "redis"]
        assert len(nodes) == 3 and nodes[0].port == up.redis_port
        body = {"session_id": "dev-cluster", "prompt": "hello", "max_new_tokens": 4}
        resp = httpx.post(f"{up.ingress_url}/v1/requests", json=body, timeout=30)
        assert resp.status_code == 202, resp.text
        assert resp.json()["stream"] == "brigade:stream:{dev-cluster}"
        first = redis.Redis(host="127.0.0.1", port=up.redis_port, decode_responses=True)
        try:
            info = first.cluster("INFO")
            assert info["cluster_state"] == "ok" and int(info["cluster_known_nodes"]) == 3
        finally:
            first.close()
    assert not any(s.running for s in up.services)
