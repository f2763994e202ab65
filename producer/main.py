"""``brigade ingress``: uvicorn serving the app, with the process's only signal handlers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Iterator

import uvicorn

from producer.app import create_app
from schemas.settings import Settings

log = logging.getLogger("brigade.ingress")


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handlers: ``main`` owns them, and tests run several servers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(settings: Settings, *, stop: asyncio.Event, ready: Callable[[int], None] | None = None) -> None:
    """Serve until ``stop`` is set; ``ready(port)`` once the socket listens (port 0 picks a free one)."""
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,  # our JSON logging stays in charge
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    server = _QuietServer(config)

    async def watch() -> None:
        while not server.started:
            if server_task.done():
                return
            await asyncio.sleep(0.01)  # uvicorn exposes start-up only as a flag
        port = server.servers[0].sockets[0].getsockname()[1] if server.servers else settings.port
        log.info("ingress listening", extra={"port": port})
        if ready is not None:
            ready(port)
        await stop.wait()
        server.should_exit = True

    server_task = asyncio.create_task(server.serve(), name="uvicorn")
    watcher = asyncio.create_task(watch(), name="ingress-watch")
    try:
        await server_task
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    if not server.started:
        raise RuntimeError(f"the ingress could not start on {settings.host}:{settings.port}")


def main(settings: Settings) -> None:
    """First SIGTERM/SIGINT: stop admitting and finish open responses. Second: leave at once."""

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            if stop.is_set():
                log.warning("[shutdown] second signal, exiting now")
                os._exit(130)
            log.info("[shutdown] signal received, stopping the ingress")
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        await serve(settings, stop=stop)

    asyncio.run(run())
