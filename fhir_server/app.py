"""Application assembly: settings -> backend -> FHIR ASGI app + FastAPI for everything else."""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from capability.statement import build_capability_statement
from fhir_server import __version__
from fhir_server.auth.endpoints import oauth_router
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
            if (path.startswith(self.prefix) and (len(path) == len(self.prefix) or path[len(self.prefix)] == "/")
                    and not path.startswith(self.prefix + "/.well-known/")):
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
        if ctx.export_worker is not None:
            ctx.export_worker.stop()
        backend.close()

    api = FastAPI(title="fhir-server", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)

    @api.get("/health")
    def health() -> JSONResponse:
        ok = backend.ping()
        # "profiles": whether the background compilation of the profile plans has finished; until
        # then it shares the CPU with the requests (a benchmark of steady throughput waits for it).
        return JSONResponse({"status": "ok" if ok else "unavailable",
                             "profiles": "ready" if _warmed.is_set() else "compiling"},
                            status_code=200 if ok else 503)

    if settings.auth == "smart":
        api.include_router(oauth_router(ctx))

    return ServerApp(api, FhirAsgiApp(ctx))


def startup(ctx: Context) -> None:
    """Schema and CapabilityStatement, before the first request is served (idempotent)."""
    if ctx.capability:
        return
    ctx.backend.start()
    if ctx.settings.auth == "smart":
        from fhir_server.auth.bootstrap import ensure_sandbox
        from fhir_server.auth.services import AuthServices

        ctx.auth = AuthServices.open(ctx.backend, ctx.settings)
        ctx.auth.keyring.signing_key()  # created (and persisted) before the first token is asked for
        message = ensure_sandbox(ctx.auth.store, ctx.base)
        if message:
            # Credentials go to the console of the person who started the server, never to the log.
            print(message, flush=True)
    else:
        log.warning("FHIR_AUTH=off: every request is served without authorisation")
    engine = getattr(ctx.backend, "engine", None)
    if engine is not None:
        from fhir_server.bulk.jobs import ExportStore
        from fhir_server.bulk.worker import ExportWorker

        ctx.exports = ExportStore(engine)
        ctx.export_worker = ExportWorker(ctx, ctx.exports)
        ctx.export_worker.start()
    from fhir_server.interactions.conformance import check_requirement

    check_requirement(ctx.settings.require_profiles)
    ctx.capability.update(build_capability_statement(ctx.base, ctx.settings.conditional_delete,
                                                     smart=ctx.settings.auth == "smart",
                                                     supported_profiles=_supported_profiles()))
    tune_gc()
    log.info("FHIR server ready at %s", ctx.base)


def _supported_profiles() -> dict[str, list[str]]:
    """Resource type -> the profiles the validator knows for it; their check plans are compiled in
    the background (a first write that needs one before then compiles it itself)."""
    from fhir_server.interactions.conformance import validator

    v = validator()
    by_type: dict[str, list[str]] = {}
    for canonical in v.profiles():
        sd = v.conformance.sd(canonical)
        if sd is not None:
            by_type.setdefault(sd["type"], []).append(canonical)
    global _warming
    with _warm_lock:
        if not _warming:  # once per process: the validator and its compiled plans are process-wide
            _warming = True
            threading.Thread(target=_warm_up, args=(v,), name="profile-warm-up", daemon=True).start()
    return by_type


def _warm_up(v: Any) -> None:
    try:
        v.warm_up()
    finally:
        _warmed.set()


_warm_lock = threading.Lock()
_warming = False
_warmed = threading.Event()  # the profile plans are compiled (or their compilation failed)


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
