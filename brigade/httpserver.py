"""uvicorn as a task inside our own event loop, without its signal handlers.

Each process installs signal handlers in exactly one place (its ``main``); tests run several servers
in one loop. So uvicorn's own handlers are switched off here.

uvicorn also keeps a failed lifespan start-up to itself: it logs the traceback as text and exits 3. Here
``start`` raises the lifespan's own exception instead, so the caller can tell a wrong setting
(``brigade.config_error``) from a bug, and a port already taken from either.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from brigade.config_error import ConfigurationError


class _QuietServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class PortUnavailable(ConfigurationError):
    """The server could not bind its address."""

    summary = "address unavailable"

    def __init__(self, message: str, *, variable: str) -> None:
        super().__init__(message)
        self.variable = variable


class _StartupError:
    """Keeps the exception a lifespan start-up raised; everything else passes straight through."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.error: BaseException | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_quietly(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed":  # ``start`` raises it: no traceback logged as text
                message = {"type": message["type"]}
            await send(message)

        try:
            await self.app(scope, receive, send_quietly)
        except BaseException as exc:
            self.error = exc
            raise


class AsgiServer:
    """Start, learn the bound port (0 picks a free one), stop gracefully."""

    def __init__(
        self, app: ASGIApp, *, host: str, port: int, lifespan: str = "on", port_variable: str = "settings"
    ) -> None:
        self._startup = _StartupError(app)
        config = uvicorn.Config(
            self._startup,
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
        self._address = f"{host}:{port}"
        self._port_variable = port_variable  # named when the port cannot be had

    async def start(self, *, timeout_s: float = 60.0) -> int:
        self._task = asyncio.create_task(self._serve(), name="uvicorn")
        async with asyncio.timeout(timeout_s):
            while not self._server.started:
                if self._task.done():
                    self._task.result()  # start-up raised
                    raise RuntimeError(f"HTTP server on port {self.port} stopped while starting")
                await asyncio.sleep(0.01)  # uvicorn exposes start-up only as a flag
        sockets = self._server.servers[0].sockets if self._server.servers else []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        return self.port

    async def _serve(self) -> None:
        try:
            await self._server.serve()
        except SystemExit as exc:
            # How uvicorn fails a start-up (lifespan, or the bind); out of a task it would stop the whole loop.
            if self._startup.error is not None:
                raise self._startup.error from None
            if self._server.started:
                raise RuntimeError(f"uvicorn exited ({exc.code}) while serving") from None
            raise PortUnavailable(
                f"could not listen on {self._address} (the reason is logged just above; usually another process "
                "holds the port): free the port or choose another",
                variable=self._port_variable,
            ) from None

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        await self._task
        self._task = None

    @property
    def done(self) -> asyncio.Task[None] | None:
        return self._task
