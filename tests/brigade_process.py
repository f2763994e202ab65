"""``brigade ingress`` / ``brigade worker`` as real child processes, ready when their /readyz says so."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx

from brigade.devtools.servers import dev_env
from schemas.settings import Settings


def brigade_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The BRIGADE_* variables a child needs to join this test's broker, Redis and namespace."""
    return {**os.environ, **dev_env(settings, BRIGADE_LOG_FORMAT="text", **extra)}


@dataclass
class Child:
    """A running ``brigade`` process, its exit code to come, and its stderr as it is written.

    stderr is read all along: a pipe nobody reads fills at 64 KiB and then blocks the child's logging.
    """

    proc: asyncio.subprocess.Process
    exited: asyncio.Future[int]
    lines: list[str] = field(default_factory=list)
    _grew: asyncio.Event = field(default_factory=asyncio.Event)
    _reader: asyncio.Task[None] = field(init=False)

    def __post_init__(self) -> None:
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            self.lines.append(line.decode(errors="replace"))
            self._grew.set()
        self._grew.set()

    async def wait_for_line(self, text: str) -> None:
        """Until a stderr line contains ``text`` (the caller bounds the wait); fails if stderr ends first."""
        seen = 0
        while True:
            if any(text in line for line in self.lines[seen:]):
                return
            seen = len(self.lines)
            if self._reader.done():
                raise AssertionError(f"stderr ended without {text!r}:\n{self.log}")
            self._grew.clear()
            await self._grew.wait()

    async def final_log(self) -> str:
        """All of stderr, once the process has closed it."""
        await self._reader
        return self.log

    @property
    def log(self) -> str:
        return "".join(self.lines)


@asynccontextmanager
async def brigade_process(*args: str, env: dict[str, str], port: int, timeout_s: float = 60) -> AsyncIterator[Child]:
    """Start ``brigade ARGS``, wait until ``/readyz`` on ``port`` answers 200; kill it on exit if still alive."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "brigade", *args, env=env, stderr=asyncio.subprocess.PIPE
    )
    child = Child(proc=proc, exited=asyncio.ensure_future(proc.wait()))
    try:
        async with asyncio.timeout(timeout_s), httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            while True:  # readiness probe, as Kubernetes would poll it
                assert not child.exited.done(), f"brigade {' '.join(args)} exited during start-up:\n{child.log}"
                try:
                    if (await http.get("/readyz", timeout=1)).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.wait({child.exited}, timeout=0.2)
        yield child
    finally:
        if proc.returncode is None:
            proc.kill()
        await child.exited
        await child.final_log()
