"""The ingress ASGI app: wiring only. The work lives in ``Ingress`` and the routers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError
from tokenizers import Tokenizer

from brigade import __version__
from brigade.kafka_config import check_kafka
from brigade.models.registry import load_tokenizer, tokenizer_dir
from brigade.models.tokenizer_config import TokenizerInfo, read_tokenizer_info
from brigade.redis_config import open_redis
from producer.cancel import router as cancel_router
from producer.errors import install_error_handlers
from producer.ingress import Ingress
from producer.lag import LagMonitor
from producer.metrics import IngressMetrics
from producer.model_formats import model_formats
from producer.openai_api import router as openai_router
from producer.publisher import Publisher
from producer.routes import router as native_router
from producer.routing import Router
from producer.sessions import router as sessions_router
from producer.stream_reader import BLOCK_MS
from producer.tokenizer_api import router as tokenizer_router
from schemas.settings import Settings


def _tokenizer_files(settings: Settings, model: str) -> tuple[Tokenizer, TokenizerInfo]:
    """A served model's tokenizer and what its tokenizer_config says (start-up, in a thread: files on disk)."""
    cache_dir = settings.model_cache_dir
    return load_tokenizer(model, cache_dir=cache_dir), read_tokenizer_info(tokenizer_dir(model, cache_dir=cache_dir))


def create_app(settings: Settings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics = IngressMetrics()
        # One tokenizer per distinct model: a request's cost is counted with its class's model's tokenizer.
        loaded = {model: await asyncio.to_thread(_tokenizer_files, settings, model) for model in settings.served_models}
        tokenizers = {model: tokenizer for model, (tokenizer, _) in loaded.items()}
        infos = {model: info for model, (_, info) in loaded.items()}
        # A down Redis must fail a request within its timeout, but a blocked XREAD legitimately waits BLOCK_MS.
        redis = await open_redis(
            settings,
            socket_connect_timeout=settings.request_timeout_s,
            socket_timeout=settings.request_timeout_s + BLOCK_MS / 1000,
        )
        await check_kafka(settings)
        publisher = Publisher(settings)
        await publisher.start()
        lag = LagMonitor(settings, publisher, metrics)
        lag_task = asyncio.create_task(lag.run(), name="lag-monitor")
        app.state.ingress = Ingress(
            settings=settings,
            publisher=publisher,
            redis=redis,
            router=Router(settings, tokenizers),
            lag=lag,
            metrics=metrics,
            tokenizer_info=infos,
            formats=model_formats(settings, infos),
        )
        try:
            yield
        finally:
            lag_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lag_task
            await publisher.stop()
            await redis.aclose()

    app = FastAPI(
        title="brigade ingress",
        version=__version__,
        summary="Publish inference requests to Kafka by cost class; read tokens from Redis streams.",
        lifespan=lifespan,
    )
    # Set by ``serve`` when shutdown starts: /readyz turns 503 so traffic moves away, and session-long
    # event streams end (their clients resume elsewhere with Last-Event-ID).
    app.state.draining = asyncio.Event()
    install_error_handlers(app)
    app.include_router(native_router)
    app.include_router(openai_router)
    app.include_router(sessions_router)
    app.include_router(cancel_router)
    app.include_router(tokenizer_router)

    @app.get("/healthz", include_in_schema=False)
    @app.get("/health", include_in_schema=False)  # vLLM's name, which probes and clients written for it call
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/version", include_in_schema=False)
    async def version() -> dict[str, str]:
        """vLLM's: the server's version."""
        return {"version": __version__}

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> JSONResponse:
        ingress: Ingress = request.app.state.ingress
        checks = {"kafka": ingress.publisher.ready, "redis": False}
        with contextlib.suppress(RedisError, OSError):
            checks["redis"] = bool(await ingress.redis.ping())
        draining: bool = request.app.state.draining.is_set()
        ok = all(checks.values()) and not draining
        body = {"ready": ok, **checks, **({"draining": True} if draining else {})}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        ingress: Ingress = request.app.state.ingress
        return Response(generate_latest(ingress.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
