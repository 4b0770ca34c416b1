"""`fhir-server` command line: serve (what `make run` runs), load, db upgrade|current, reindex,
and administration of the authorization server: clients, users, keys (API keys), signing-keys."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fhir_server.config import Settings

if TYPE_CHECKING:
    from fhir_server.auth.store import AuthStore
    from fhir_server.storage.sql.backend import SqlBackend


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
    if settings.auth == "smart":
        # The sandbox credentials are printed here, once, before the workers start.
        from fhir_server.auth.bootstrap import ensure_sandbox
        from fhir_server.auth.services import AuthServices

        services = AuthServices.open(backend, settings)
        services.keyring.signing_key()
        message = ensure_sandbox(services.store, settings.fhir_base)
        if message:
            print(message, flush=True)
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


def _load(args: argparse.Namespace) -> int:
    from fhir_server.interactions.common import Context
    from fhir_server.load.runner import load_paths, report_text
    from fhir_server.storage.factory import open_backend

    settings = Settings()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        print(f"no such file or directory: {', '.join(missing)}", file=sys.stderr)
        return 2
    backend = open_backend(settings)
    backend.start()
    try:
        ctx = Context(settings=settings, backend=backend, base=settings.fhir_base)
        report = load_paths(ctx, args.paths, strict=args.strict, stream=sys.stderr)
        analyze = getattr(backend, "analyze", None)
        if callable(analyze) and report.loaded:
            analyze()  # fresh planner statistics: a bulk load changes them wholesale
    finally:
        backend.close()
    print(report_text(report))
    return 0 if not report.errors else 1


# -- authorization server administration (clients, users, API keys, signing keys) ----------------

def _auth_store() -> tuple[SqlBackend, AuthStore] | None:
    """(backend, AuthStore) on the configured database, migrated; None (after a message) without SQL."""
    from fhir_server.auth.store import AuthStore
    from fhir_server.storage.factory import open_backend
    from fhir_server.storage.sql.backend import SqlBackend

    backend = open_backend(Settings())
    if not isinstance(backend, SqlBackend):
        print("this backend has no SQL database for clients and users", file=sys.stderr)
        return None
    logging.getLogger("alembic").setLevel(logging.WARNING)
    backend.start()
    return backend, AuthStore(backend.engine)


def _with_auth_store(action: Callable[[argparse.Namespace, AuthStore], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        opened = _auth_store()
        if opened is None:
            return 2
        backend, store = opened
        try:
            return action(args, store)
        except ValueError as exc:  # refused input (includes AlreadyExists): say why, no traceback
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            backend.close()
    return run


def _client_jwks_arg(args: argparse.Namespace) -> dict[str, Any] | None:
    import json

    from fhir_server.auth.keys import client_jwks

    if not args.jwks_file:
        return None
    try:
        data = json.loads(Path(args.jwks_file).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {args.jwks_file}: {exc}") from None
    return client_jwks(data)


def _clients_add(args: argparse.Namespace, store: AuthStore) -> int:
    import secrets

    from fhir_server.auth.store import GRANT_TYPES

    grant_types = [g.strip() for g in args.grant_types.split(",") if g.strip()]
    unknown = sorted(set(grant_types) - set(GRANT_TYPES))
    if unknown or not grant_types:
        raise ValueError(f"grant types must be among {', '.join(GRANT_TYPES)} (got {args.grant_types!r})")
    jwks = _client_jwks_arg(args)
    if args.jwks_url and not args.jwks_url.startswith(("https://", "http://localhost", "http://127.0.0.1")):
        raise ValueError("--jwks-url must be an https URL")
    secret = secrets.token_urlsafe(32) if args.generate_secret else args.secret
    confidential = secret is not None or jwks is not None or args.jwks_url is not None
    if args.public and confidential:
        raise ValueError("--public clients have neither a secret nor keys")
    if "client_credentials" in grant_types and not confidential:
        raise ValueError("client_credentials needs a confidential client (--secret or --jwks-file/--jwks-url)")
    if "authorization_code" in grant_types and not args.redirect_uri:
        raise ValueError("authorization_code needs at least one --redirect-uri")
    if not args.scopes.split():
        raise ValueError("--scopes must name at least one scope")
    client = store.add_client(
        args.client_id, grant_types=grant_types, scopes=args.scopes, secret=secret, name=args.name,
        redirect_uris=args.redirect_uri or [], jwks=jwks, jwks_url=args.jwks_url,
    )
    print(f"client {client.client_id} added ({client.kind}; {', '.join(client.token_endpoint_auth_methods)})")
    if args.generate_secret:
        print(f"client_secret: {secret}  (shown once; only its hash is stored)")
    return 0


def _clients_list(args: argparse.Namespace, store: AuthStore) -> int:
    for c in store.list_clients():
        keys = "jwks_url " + c.jwks_url if c.jwks_url else f"{len(c.jwks['keys'])} keys" if c.jwks else "-"
        print(f"{c.client_id}\t{c.kind}\tgrants={','.join(c.grant_types)}\tscopes={c.scopes}\t"
              f"redirect_uris={' '.join(c.redirect_uris) or '-'}\tkeys={keys}")
    return 0


def _clients_remove(args: argparse.Namespace, store: AuthStore) -> int:
    if not store.remove_client(args.client_id):
        print(f"no client {args.client_id}", file=sys.stderr)
        return 1
    print(f"client {args.client_id} removed with its refresh tokens and API keys")
    return 0


def _users_add(args: argparse.Namespace, store: AuthStore) -> int:
    import secrets

    from fhir_server.auth.passwords import totp_provisioning_uri

    password = args.password if args.password is not None else secrets.token_urlsafe(12)
    if not password:
        raise ValueError("--password must not be empty")
    user = store.add_user(args.username, password, fhir_user=args.fhir_user, patient=args.patient, totp=args.totp)
    print(f"user {user.username} added")
    if args.password is None:
        print(f"password: {password}  (shown once; only its hash is stored)")
    if user.totp_secret:
        print("enrol an authenticator app with (shown once):")
        print(totp_provisioning_uri(user.totp_secret, user.username))
    return 0


def _users_list(args: argparse.Namespace, store: AuthStore) -> int:
    for u in store.list_users():
        print(f"{u.username}\tfhir_user={u.fhir_user or '-'}\tpatient={u.patient or '-'}\t"
              f"totp={'yes' if u.totp_enabled else 'no'}")
    return 0


def _users_remove(args: argparse.Namespace, store: AuthStore) -> int:
    if not store.remove_user(args.username):
        print(f"no user {args.username}", file=sys.stderr)
        return 1
    print(f"user {args.username} removed with their refresh tokens")
    return 0


def _keys_create(args: argparse.Namespace, store: AuthStore) -> int:
    from fhir_server.auth.store import UnknownClient

    try:
        key = store.create_api_key(args.client_id, args.scopes)
    except UnknownClient as exc:
        raise ValueError(str(exc)) from None
    print(key)
    print("(shown once; only its hash is stored. Send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>')",
          file=sys.stderr)
    return 0


def _keys_list(args: argparse.Namespace, store: AuthStore) -> int:
    from fhir_server.model.instant import format_instant

    for k in store.list_api_keys():
        print(f"{k.prefix}…\tclient={k.client_id}\tscopes={k.scopes or '(client scopes)'}\t"
              f"created={format_instant(k.created_ms)}\t{'revoked' if k.revoked else 'active'}")
    return 0


def _keys_revoke(args: argparse.Namespace, store: AuthStore) -> int:
    if not store.revoke_api_key(args.key.rstrip("…")):
        print("no such active API key", file=sys.stderr)
        return 1
    print("API key revoked")
    return 0


def _signing_keys_rotate(args: argparse.Namespace, store: AuthStore) -> int:
    from fhir_server.auth.keys import KeyRing

    kid = KeyRing(store).rotate()
    print(f"new signing key {kid}; earlier keys stay published so tokens they signed keep verifying")
    return 0


def _signing_keys_list(args: argparse.Namespace, store: AuthStore) -> int:
    from fhir_server.model.instant import format_instant

    for k in store.signing_keys():
        print(f"{k.kid}\t{k.alg}\tcreated={format_instant(k.created_ms)}\t{'active' if k.active else 'verify-only'}")
    return 0


def _add_auth_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    clients = sub.add_parser("clients", help="OAuth clients (SMART apps and services)")
    clients_sub = clients.add_subparsers(dest="action", required=True)
    add = clients_sub.add_parser("add", help="register a client: with a secret or keys it is confidential, else public")
    add.add_argument("--client-id", required=True)
    add.add_argument("--name")
    secret = add.add_mutually_exclusive_group()
    secret.add_argument("--secret", help="client secret (stored hashed)")
    secret.add_argument("--generate-secret", action="store_true", help="make a random secret and print it once")
    add.add_argument("--grant-types", required=True,
                     help="comma separated: authorization_code,client_credentials,password,refresh_token")
    add.add_argument("--scopes", required=True, help='space separated, e.g. "patient/*.rs launch openid fhirUser"')
    add.add_argument("--redirect-uri", action="append", help="repeat for several")
    keys = add.add_mutually_exclusive_group()
    keys.add_argument("--jwks-file", help="JWK set with the client's RS384/ES384 public keys (private_key_jwt)")
    keys.add_argument("--jwks-url", help="where the client publishes its JWK set (private_key_jwt)")
    add.add_argument("--public", action="store_true", help="no secret, no keys (PKCE apps in browsers and phones)")
    add.set_defaults(func=_with_auth_store(_clients_add))
    clients_sub.add_parser("list").set_defaults(func=_with_auth_store(_clients_list))
    remove = clients_sub.add_parser("remove")
    remove.add_argument("client_id")
    remove.set_defaults(func=_with_auth_store(_clients_remove))

    users = sub.add_parser("users", help="people who sign in to authorize apps")
    users_sub = users.add_subparsers(dest="action", required=True)
    uadd = users_sub.add_parser("add")
    uadd.add_argument("--username", required=True)
    uadd.add_argument("--password", help="default: a random one, printed once")
    uadd.add_argument("--fhir-user", help="the user's FHIR resource, e.g. Practitioner/1")
    uadd.add_argument("--patient", help="patient id a patient-facing login is bound to")
    uadd.add_argument("--totp", action="store_true", help="require a one-time code; prints the otpauth:// URI")
    uadd.set_defaults(func=_with_auth_store(_users_add))
    users_sub.add_parser("list").set_defaults(func=_with_auth_store(_users_list))
    uremove = users_sub.add_parser("remove")
    uremove.add_argument("username")
    uremove.set_defaults(func=_with_auth_store(_users_remove))

    api_keys = sub.add_parser("keys", help="API keys: long-lived bearer keys mapped to a client and its scopes")
    keys_sub = api_keys.add_subparsers(dest="action", required=True)
    kcreate = keys_sub.add_parser("create", help="print a new API key (once)")
    kcreate.add_argument("--client-id", required=True)
    kcreate.add_argument("--scopes", help="narrower scopes for this key (default: the client's)")
    kcreate.set_defaults(func=_with_auth_store(_keys_create))
    keys_sub.add_parser("list").set_defaults(func=_with_auth_store(_keys_list))
    krevoke = keys_sub.add_parser("revoke")
    krevoke.add_argument("key", help="the key, or the prefix `keys list` shows")
    krevoke.set_defaults(func=_with_auth_store(_keys_revoke))

    signing = sub.add_parser("signing-keys", help="the server's token-signing keys (published as the JWKS)")
    signing_sub = signing.add_subparsers(dest="action", required=True)
    signing_sub.add_parser("rotate", help="start signing with a new key").set_defaults(
        func=_with_auth_store(_signing_keys_rotate))
    signing_sub.add_parser("list").set_defaults(func=_with_auth_store(_signing_keys_list))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fhir-server", description="FHIR R4 server")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the FHIR API (settings from FHIR_* environment variables)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.set_defaults(func=_serve)
    load = sub.add_parser("load", help="load Bundles, resources and NDJSON files (directories, .gz, .tar.gz)")
    load.add_argument("paths", nargs="+", metavar="PATH")
    load.add_argument("--strict", action="store_true",
                      help="each file all or nothing (default: invalid entries are reported and skipped)")
    load.set_defaults(func=_load)
    db = sub.add_parser("db", help="database schema: upgrade to the newest migration, or show the current one")
    db.add_argument("action", choices=["upgrade", "current"])
    db.set_defaults(func=_db)
    reindex = sub.add_parser("reindex", help="rebuild search indexes (after the search parameters change)")
    reindex.add_argument("--type", help="only this resource type")
    reindex.set_defaults(func=_reindex)
    _add_auth_commands(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
