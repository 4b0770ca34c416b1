"""`fhir-server` command line: serve (what `make run` runs), db upgrade|current, reindex."""

from __future__ import annotations

import argparse
import logging
import sys

from fhir_server.config import Settings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = Settings()
    host = args.host or settings.host
    port = args.port or settings.port
    workers = args.workers or settings.workers
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Alembic narrates every plugin it loads at INFO; only its warnings matter to an operator.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if settings.auth == "off":
        logging.getLogger("fhir_server").warning(
            "FHIR_AUTH=off: the API is open to anyone who can reach %s:%s", host, port
        )
    # Migrate once here, before any worker starts, so workers never race on the schema.
    from fhir_server.storage.factory import open_backend

    backend = open_backend(settings)
    backend.start()
    backend.close()
    print(f"Serving FHIR R4 at {settings.fhir_base} (database: {settings.database_url}, workers: {workers})",
          flush=True)
    uvicorn.run(
        "fhir_server.app:app_factory",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=settings.log_level.lower(),
        access_log=False,
        proxy_headers=False,
    )
    return 0


def _db(args: argparse.Namespace) -> int:
    from fhir_server.storage.factory import open_backend
    from fhir_server.storage.sql import migrate
    from fhir_server.storage.sql.backend import SqlBackend

    settings = Settings()
    backend = open_backend(settings)
    if not isinstance(backend, SqlBackend):
        print("this backend has no SQL schema to migrate", file=sys.stderr)
        return 2
    if args.action == "upgrade":
        backend.start()
    current = migrate.current_revision(backend.engine)
    print(f"database revision: {current or '(empty)'}; newest: {migrate.head_revision()}")
    backend.close()
    return 0 if args.action == "current" or current == migrate.head_revision() else 1


def _reindex(args: argparse.Namespace) -> int:
    import time

    from fhir_server.storage.factory import open_backend
    from fhir_server.storage.sql.backend import SqlBackend

    backend = open_backend(Settings())
    if not isinstance(backend, SqlBackend):
        print("this backend keeps no search index", file=sys.stderr)
        return 2
    backend.start()
    started = time.monotonic()
    count = backend.reindex(args.type)
    backend.analyze()
    print(f"reindexed {count} resources in {time.monotonic() - started:.1f} s")
    backend.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fhir-server", description="FHIR R4 server")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the FHIR API (settings from FHIR_* environment variables)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.set_defaults(func=_serve)
    db = sub.add_parser("db", help="database schema: upgrade to the newest migration, or show the current one")
    db.add_argument("action", choices=["upgrade", "current"])
    db.set_defaults(func=_db)
    reindex = sub.add_parser("reindex", help="rebuild search indexes (after the search parameters change)")
    reindex.add_argument("--type", help="only this resource type")
    reindex.set_defaults(func=_reindex)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
