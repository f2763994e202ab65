"""``/healthz``, ``/readyz`` and ``/metrics`` on ``settings.metrics_port`` (Starlette on uvicorn).

``/readyz`` turns ready once the model is loaded and warmed, before the worker joins its group:
Kubernetes then only counts a pod that can serve at once (cold start never takes partitions). Its
body also says how many partitions the worker owns, so a supervisor can wait for the group join.
It turns not-ready while a dependency is unreachable (the worker retries Redis and its commits with
backoff meanwhile, ``consumer/retry.py``), and names it: ``{"unreachable": ["redis"]}``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from brigade.httpserver import AsgiServer

log = logging.getLogger(__name__)


class HealthServer:
    """Serves the probes and the worker's own registry; ``port`` is the bound port once started."""

    def __init__(self, *, registry: CollectorRegistry, host: str = "0.0.0.0", port: int = 0) -> None:
        self._registry = registry
        self.ready = False  # flipped by the worker after warm-up; back to False when draining
        self.live = True
        self.partitions: Callable[[], int] = lambda: 0  # partitions owned right now
        self.unreachable: set[str] = set()  # dependencies whose calls are being retried right now
        app = Starlette(
            routes=[
                Route("/healthz", self._healthz, methods=["GET"]),
                Route("/readyz", self._readyz, methods=["GET"]),
                Route("/metrics", self._metrics, methods=["GET"]),
            ]
        )
        self._server = AsgiServer(app, host=host, port=port, lifespan="off", port_variable="BRIGADE_METRICS_PORT")
        self._started = False

    @property
    def port(self) -> int:
        if not self._started:
            raise RuntimeError("health server not started")
        return self._server.port

    async def start(self) -> int:
        port = await self._server.start()
        self._started = True
        log.info("health server listening", extra={"port": port})
        return port

    async def stop(self) -> None:
        await self._server.stop()
        self._started = False

    async def _healthz(self, _request: Request) -> Response:
        return PlainTextResponse("ok\n" if self.live else "stopping\n", status_code=200 if self.live else 503)

    def dependency(self, name: str, reachable: bool) -> None:
        """Called by the retry loops: ``name`` stopped answering, or answers again."""
        if reachable:
            self.unreachable.discard(name)
        else:
            self.unreachable.add(name)

    async def _readyz(self, _request: Request) -> Response:
        ready = self.ready and not self.unreachable
        body = {"ready": ready, "partitions": self.partitions(), "unreachable": sorted(self.unreachable)}
        return JSONResponse(body, status_code=200 if ready else 503)

    async def _metrics(self, _request: Request) -> Response:
        return Response(generate_latest(self._registry), media_type=CONTENT_TYPE_LATEST)
