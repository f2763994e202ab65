"""``brigade ingress``: uvicorn serving the app, with the process's only signal handlers."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable

from brigade import eventloop
from brigade.httpserver import AsgiServer
from producer.app import create_app
from producer.lane import PublishLane
from schemas.settings import Settings

log = logging.getLogger("brigade.ingress")


async def serve(settings: Settings, *, stop: asyncio.Event, ready: Callable[[int], None] | None = None) -> None:
    """Serve until ``stop`` is set; ``ready(port)`` once the socket listens (port 0 picks a free one)."""
    app = create_app(settings)
    server = AsgiServer(PublishLane(app), host=settings.host, port=settings.port, port_variable="BRIGADE_PORT")
    port = await server.start()
    log.info("ingress listening", extra={"port": port})
    if ready is not None:
        ready(port)
    try:
        await stop.wait()
    finally:
        # Drain before closing: readiness goes false and session-long streams end, then uvicorn stops
        # accepting and waits (bounded) for the answers still being streamed.
        log.info("[shutdown] draining: no longer ready, closing session streams")
        app.state.draining.set()
        await server.stop()
        log.info("[shutdown] stopped")


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

    eventloop.run(run(), loop=settings.event_loop, role="ingress")
