"""``/healthz``, ``/readyz`` and ``/metrics`` on ``settings.metrics_port``.

A few lines of asyncio rather than an ASGI server: the worker needs three GET routes, and a web
framework's server would bring its own signal handling (only ``consumer.main`` installs those).

``/readyz`` turns ready once the model is loaded and warmed, before the worker joins its group:
Kubernetes then only counts a pod that can serve at once (cold start never takes partitions).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

MAX_REQUEST_LINE = 8192


class HealthServer:
    """Serves the probes and the worker's own registry; ``port`` is the bound port once started."""

    def __init__(self, *, registry: CollectorRegistry, host: str = "0.0.0.0", port: int = 0) -> None:
        self._registry = registry
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self.ready = False  # flipped by the worker after warm-up; back to False when draining
        self.live = True

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("health server not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, self._host, self._port)
        log.info("health server listening", extra={"port": self.port})
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=5)
            while (await asyncio.wait_for(reader.readline(), timeout=5)) not in (b"\r\n", b"\n", b""):
                pass  # headers are not needed
            status, ctype, body = self._route(line[:MAX_REQUEST_LINE])
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _route(self, line: bytes) -> tuple[str, str, bytes]:
        parts = line.decode("latin-1").split()
        if len(parts) < 2 or parts[0] not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"GET only\n"
        path = parts[1].split("?", 1)[0]
        if path == "/healthz":
            return ("200 OK", "text/plain", b"ok\n") if self.live else ("503 Service Unavailable", "text/plain", b"")
        if path == "/readyz":
            if self.ready:
                return "200 OK", "text/plain", b"ready\n"
            return "503 Service Unavailable", "text/plain", b"not ready\n"
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(self._registry)
        return "404 Not Found", "text/plain", b"not found\n"
