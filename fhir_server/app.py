"""Application assembly: settings -> backend -> FHIR ASGI app + FastAPI for everything else."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from capability.statement import build_capability_statement
from fhir_server import __version__
from fhir_server.config import Settings
from fhir_server.http.asgi import FhirAsgiApp
from fhir_server.interactions.common import Context
from fhir_server.storage.base import Backend
from fhir_server.storage.factory import open_backend

log = logging.getLogger("fhir_server")


class ServerApp:
    """Routes /fhir straight to the FHIR app and the rest (health, lifespan, later auth) to FastAPI."""

    def __init__(self, api: FastAPI, fhir: FhirAsgiApp, prefix: str = "/fhir") -> None:
        self.api = api
        self.fhir = fhir
        self.prefix = prefix
        self.ctx = fhir.ctx

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith(self.prefix) and (len(path) == len(self.prefix) or path[len(self.prefix)] == "/"):
                await self.fhir(scope, receive, send)
                return
        await self.api(scope, receive, send)


def create_app(settings: Settings | None = None, backend: Backend | None = None) -> ServerApp:
    settings = settings or Settings()
    backend = backend or open_backend(settings)
    ctx = Context(settings=settings, backend=backend, base=settings.fhir_base)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        startup(ctx)
        yield
        backend.close()

    api = FastAPI(title="fhir-server", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)

    @api.get("/health")
    def health() -> JSONResponse:
        ok = backend.ping()
        return JSONResponse({"status": "ok" if ok else "unavailable"}, status_code=200 if ok else 503)

    return ServerApp(api, FhirAsgiApp(ctx))


def startup(ctx: Context) -> None:
    """Schema and CapabilityStatement, before the first request is served (idempotent)."""
    if ctx.capability:
        return
    ctx.backend.start()
    ctx.capability.update(build_capability_statement(ctx.base))
    tune_gc()
    log.info("FHIR server ready at %s", ctx.base)


def tune_gc() -> None:
    """Keep the cyclic GC off the long-lived startup heap and collect the young generation less often.

    Every request parses a resource into hundreds of short-lived objects; with the default
    threshold (700) the collector runs several times per request and keeps re-walking the
    R4 facts, compiled plans and library state loaded at startup.  Those are frozen here."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def app_factory() -> ServerApp:
    """Entry point for uvicorn workers: every worker builds its app from the environment."""
    return create_app(Settings())
