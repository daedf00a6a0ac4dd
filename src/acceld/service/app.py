"""The ASGI application: webhook, management API, health, metrics; workers run in its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException

import acceld
from acceld.service.api_models import ErrorBody, Health
from acceld.service.management import ApiError, management_router, notifications_router
from acceld.service.periodic import run_periodically
from acceld.service.state import Service
from acceld.service.store import OUTBOX_CHANNEL, TASKS_CHANNEL, StoreError
from acceld.service.sync import reconcile
from acceld.service.wakeup import Listener
from acceld.service.webhook import (
    WEBHOOK_PATH,
    WEBHOOK_SECURITY_SCHEME,
    error,
    openapi_operation,
    webhook_route,
)

log = logging.getLogger("acceld.service")
PURGE_INTERVAL = 3600.0
_UNHEALTHY: dict[int | str, dict[str, Any]] = {503: {"model": Health, "description": "Not ready"}}


async def _sync(service: Service) -> None:
    report = await reconcile(service.config, service.rules, service.store)
    if report.queued or report.requeued:
        service.pool.wake()
    log.info(
        "sync: %d images, %d queued, %d requeued, %d errors",
        report.images,
        report.queued,
        report.requeued,
        len(report.errors),
    )


async def _purge(service: Service) -> None:
    retention_days = service.config.database.retention_days
    before = time.time() - retention_days * 86400
    purged = await asyncio.to_thread(service.store.purge_finished, before)
    purged_deliveries = await asyncio.to_thread(service.store.purge_deliveries, before)
    if purged or purged_deliveries:
        log.info(
            "purged %d tasks and %d notifications finished more than %g days ago",
            purged,
            purged_deliveries,
            retention_days,
        )


def _listener(service: Service) -> Listener | None:
    """PostgreSQL through psycopg: a LISTEN connection waking this replica's idle workers."""
    engine = service.store.engine
    if not service.store.shared or engine.dialect.driver != "psycopg":
        return None
    return Listener(engine.url, {TASKS_CHANNEL: service.pool.wake, OUTBOX_CHANNEL: service.notifier.wake})


def create_app(service: Service) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        listener = _listener(service)
        if listener is not None:
            listener.start()
            service.pool.listening = lambda: listener.connected
            service.notifier.listening = lambda: listener.connected
        service.pool.start()
        if service.notifier.enabled:
            service.notifier.start()
        background = []
        interval = service.config.sync.interval_seconds
        if interval > 0:
            sync = run_periodically(
                service.store, "sync", interval, lambda: _sync(service), first_delay=interval
            )
            background.append(asyncio.create_task(sync))
        if service.config.database.retention_days > 0:
            purge = run_periodically(
                service.store, "purge", PURGE_INTERVAL, lambda: _purge(service), first_delay=0
            )
            background.append(asyncio.create_task(purge))
        try:
            yield
        finally:
            for job in background:
                job.cancel()
            await service.pool.stop(service.config.workers.shutdown_grace_seconds)
            await service.notifier.stop()
            if listener is not None:
                await listener.stop()

    # /docs and /redoc with their scripts served from the package (air-gapped hosts reach no CDN);
    # no validator badge (Swagger UI would send the document's URL to validator.swagger.io).
    app = FastAPIOffline(
        swagger_ui_parameters={"validatorUrl": None},
        title="acceld",
        version=acceld.__version__,
        description="Converts images pushed to Harbor into lazy-pulling formats.",
        lifespan=lifespan,
        responses={404: {"model": ErrorBody, "description": "Not found"}},
    )
    app.router.routes.insert(0, webhook_route(service))  # first: matched before any other route
    app.include_router(management_router(service))
    app.include_router(notifications_router(service))

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            components = schema.setdefault("components", {})
            components.setdefault("securitySchemes", {})["HarborWebhookAuth"] = WEBHOOK_SECURITY_SCHEME
            operation = openapi_operation(components.setdefault("schemas", {}))
            schema["paths"][WEBHOOK_PATH] = {"post": operation}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error(exc.status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        body = {
            "code": "ERR_ILLEGAL_PARAMETER",
            "message": f"{where}: {first.get('msg', 'invalid request')}",
            "detail": jsonable_encoder(exc.errors()),
        }
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StoreError)
    async def _store_error(_: Request, exc: StoreError) -> JSONResponse:
        return error(503, "ERR_UNAVAILABLE", str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "ERR_INVALID_ENDPOINT", 405: "ERR_METHOD_NOT_ALLOWED"}.get(exc.status_code, "ERR_HTTP")
        message = "Endpoint not found" if exc.status_code == 404 else str(exc.detail)
        return JSONResponse(
            {"code": code, "message": message},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.get("/healthz", response_model=Health, tags=["health"], summary="Liveness")
    async def healthz() -> Health:
        return Health(status="ok")

    database = service.store.engine.dialect.name

    async def readiness() -> JSONResponse:
        try:
            await asyncio.to_thread(service.store.ping)
        except StoreError as exc:
            body = Health(status="unavailable", detail=str(exc), database=database)
            return JSONResponse(body.model_dump(), status_code=503)
        if not service.pool.started:
            body = Health(status="unavailable", detail="workers not running", database=database)
            return JSONResponse(body.model_dump(), status_code=503)
        return JSONResponse(Health(status="ok", database=database).model_dump())

    app.add_api_route(
        "/readyz",
        readiness,
        methods=["GET"],
        response_model=Health,
        responses=_UNHEALTHY,
        tags=["health"],
        summary="Readiness: task store reachable, workers running",
    )
    app.add_api_route(
        "/api/v1/health",
        readiness,
        methods=["GET"],
        response_model=Health,
        responses=_UNHEALTHY,
        tags=["health"],
        summary="Readiness (the original acceld's path)",
    )

    @app.get(
        "/metrics",
        tags=["health"],
        summary="Prometheus metrics",
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
        response_class=Response,
    )
    async def metrics() -> Response:
        body = await asyncio.to_thread(service.metrics.render)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    return app
