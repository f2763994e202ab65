"""uvicorn as a task inside our own event loop, without its signal handlers.

Each process installs signal handlers in exactly one place (its ``main``); tests run several servers
in one loop. So uvicorn's own handlers are switched off here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp


class _QuietServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class AsgiServer:
    """Start, learn the bound port (0 picks a free one), stop gracefully."""

    def __init__(self, app: ASGIApp, *, host: str, port: int, lifespan: str = "on") -> None:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,  # our JSON logging stays in charge
            access_log=False,
            lifespan=lifespan,  # type: ignore[arg-type]
            timeout_graceful_shutdown=5,
        )
        self._server = _QuietServer(config)
        self._task: asyncio.Task[None] | None = None
        self.port = port

    async def start(self, *, timeout_s: float = 60.0) -> int:
        self._task = asyncio.create_task(self._server.serve(), name="uvicorn")
        async with asyncio.timeout(timeout_s):
            while not self._server.started:
                if self._task.done():
                    self._task.result()  # start-up raised
                    raise RuntimeError(f"HTTP server could not listen on port {self.port}")
                await asyncio.sleep(0.01)  # uvicorn exposes start-up only as a flag
        sockets = self._server.servers[0].sockets if self._server.servers else []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        await self._task
        self._task = None

    @property
    def done(self) -> asyncio.Task[None] | None:
        return self._task
