"""``brigade ingress``: uvicorn serving the app, with the process's only signal handlers."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable

from brigade.httpserver import AsgiServer
from producer.app import create_app
from schemas.settings import Settings

log = logging.getLogger("brigade.ingress")


async def serve(settings: Settings, *, stop: asyncio.Event, ready: Callable[[int], None] | None = None) -> None:
    """Serve until ``stop`` is set; ``ready(port)`` once the socket listens (port 0 picks a free one)."""
    server = AsgiServer(create_app(settings), host=settings.host, port=settings.port)
    port = await server.start()
    log.info("ingress listening", extra={"port": port})
    if ready is not None:
        ready(port)
    try:
        await stop.wait()
    finally:
        await server.stop()


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
