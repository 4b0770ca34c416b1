"""Persistence of the authorization server: clients, users, grants, revocations, keys.

Every worker and node shares this state through the database.  Auth traffic is small, so each
method is one short transaction on a pooled connection.  Operations that must be race-free
(redeeming a code, rotating a refresh token, remembering an assertion jti) are single
conditional statements or primary-key inserts, which the database serialises for us.

SQLite connections of this server run in autocommit mode (see storage/sql/dialect.py), where a
SQLAlchemy transaction would not open one in SQLite: write transactions therefore issue BEGIN
IMMEDIATE themselves, which also takes the write lock up front as the FHIR backend does.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from fhir_server.auth import passwords
from fhir_server.auth.tables import (
    oauth_api_key,
    oauth_assertion_jti,
    oauth_client,
    oauth_code,
    oauth_launch,
    oauth_refresh,
    oauth_revoked,
    oauth_signing_key,
    oauth_user,
)
from fhir_server.model.instant import now_ms
from fhir_server.storage.sql.sidecar import SideTables

API_KEY_PREFIX = "fhk_"
_API_KEY_SHOWN = 12  # "fhk_" and 8 random characters: enough to tell keys apart in a listing
_MAX_CHAIN = 10_000  # refresh rotations followed when revoking a stolen token's descendants


class AlreadyExists(ValueError):
    pass


class UnknownClient(LookupError):
    pass


GRANT_TYPES = ("authorization_code", "client_credentials", "password", "refresh_token")


@dataclass(frozen=True)
class ClientRecord:
    client_id: str
    name: str
    grant_types: tuple[str, ...]
    scopes: str
    redirect_uris: tuple[str, ...]
    jwks: dict[str, Any] | None
    jwks_url: str | None
    public: bool
    created_ms: int
    secret_hash: str | None = field(default=None, repr=False)

    @property
    def token_endpoint_auth_methods(self) -> tuple[str, ...]:
        """How this client proves its identity at the token endpoint (RFC 7591 names)."""
        if self.public:
            return ("none",)
        methods: tuple[str, ...] = ()
        if self.secret_hash is not None:
            methods += ("client_secret_basic", "client_secret_post")
        if self.jwks is not None or self.jwks_url is not None:
            methods += ("private_key_jwt",)
        return methods

    @property
    def kind(self) -> str:
        if self.public:
            return "public"
        return "private_key_jwt" if self.secret_hash is None else "confidential"


@dataclass(frozen=True)
class UserRecord:
    username: str
    fhir_user: str | None
    patient: str | None
    created_ms: int
    password_hash: str = field(repr=False)
    totp_secret: str | None = field(default=None, repr=False)

    @property
    def totp_enabled(self) -> bool:
        return self.totp_secret is not None


@dataclass(frozen=True)
class CodeRecord:
    code_hash: str
    client_id: str
    username: str
    redirect_uri: str | None
    scope: str
    code_challenge: str | None
    code_challenge_method: str | None
    nonce: str | None
    patient: str | None
    encounter: str | None
    expires_ms: int
    used: bool


@dataclass(frozen=True)
class CodeConsumption:
    """Outcome of redeeming an authorization code.

    ``record`` is set only for the one caller that redeemed a live, unused code.  ``reused`` means
    the code had been redeemed before: RFC 6749 §4.1.2 asks to revoke what it issued, so
    ``previous`` carries the stored grant (client and user) to revoke for."""

    record: CodeRecord | None
    reused: bool = False
    previous: CodeRecord | None = None


@dataclass(frozen=True)
class RefreshRecord:
    token_hash: str
    client_id: str
    username: str | None
    scope: str
    patient: str | None
    encounter: str | None
    fhir_user: str | None
    expires_ms: int
    revoked: bool
    replaced_by: str | None


@dataclass(frozen=True)
class RefreshRotation:
    """Outcome of exchanging a refresh token for a new one.

    ``record`` is the new token's row when the exchange succeeded.  ``reused`` means the presented
    token had already been exchanged, a sign it was stolen: every token descended from it has been
    revoked, and ``previous`` names the grant so the caller can do more (e.g. revoke_all_for)."""

    record: RefreshRecord | None
    reused: bool = False
    previous: RefreshRecord | None = None


@dataclass(frozen=True)
class SigningKeyRecord:
    kid: str
    alg: str
    created_ms: int
    active: bool
    private_pem: str = field(repr=False)


@dataclass(frozen=True)
class ApiKeyRecord:
    key_hash: str
    prefix: str
    client_id: str
    scopes: str | None  # None: whatever the client may have
    created_ms: int
    revoked: bool


@dataclass(frozen=True)
class LaunchRecord:
    launch_id: str
    patient: str | None
    encounter: str | None
    expires_ms: int


def client_from_row(m: Mapping[Any, Any]) -> ClientRecord:
    return ClientRecord(
        client_id=m["client_id"],
        name=m["name"],
        grant_types=tuple(m["grant_types"].split()),
        scopes=m["scopes"],
        redirect_uris=tuple(json.loads(m["redirect_uris"])),
        jwks=json.loads(m["jwks"]) if m["jwks"] is not None else None,
        jwks_url=m["jwks_url"],
        public=bool(m["public"]),
        created_ms=int(m["created_ms"]),
        secret_hash=m["secret_hash"],
    )


def user_from_row(m: Mapping[Any, Any]) -> UserRecord:
    return UserRecord(
        username=m["username"], fhir_user=m["fhir_user"], patient=m["patient"], created_ms=int(m["created_ms"]),
        password_hash=m["password_hash"], totp_secret=m["totp_secret"],
    )


def code_from_row(m: Mapping[Any, Any]) -> CodeRecord:
    return CodeRecord(**{**m, "expires_ms": int(m["expires_ms"]), "used": bool(m["used"])})


def refresh_from_row(m: Mapping[Any, Any]) -> RefreshRecord:
    return RefreshRecord(**{**m, "expires_ms": int(m["expires_ms"]), "revoked": bool(m["revoked"])})


def signing_key_from_row(m: Mapping[Any, Any]) -> SigningKeyRecord:
    return SigningKeyRecord(kid=m["kid"], alg=m["alg"], created_ms=int(m["created_ms"]), active=bool(m["active"]),
                            private_pem=m["private_pem"])


def api_key_from_row(m: Mapping[Any, Any]) -> ApiKeyRecord:
    return ApiKeyRecord(**{**m, "created_ms": int(m["created_ms"]), "revoked": bool(m["revoked"])})


def launch_from_row(m: Mapping[Any, Any]) -> LaunchRecord:
    return LaunchRecord(**{**m, "expires_ms": int(m["expires_ms"])})


class AuthStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._dialect = engine.dialect.name
        self._side = SideTables(engine)
        self._tx = self._side.tx
        self._read = self._side.read

    def _insert_new(self, conn: Connection, table: Table, values: Mapping[str, Any]) -> bool:
        """Insert unless the primary key exists; False when it did.  No exception, no aborted transaction."""
        # RETURNING rather than rowcount: SQLAlchemy does not promise a rowcount for INSERT.
        key = next(iter(table.primary_key.columns))
        if self._dialect in ("postgresql", "sqlite"):
            dialect_insert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
            stmt = dialect_insert(table).values(values).on_conflict_do_nothing().returning(key)
            return conn.execute(stmt).first() is not None
        try:
            with conn.begin_nested():
                conn.execute(insert(table).values(values))
            return True
        except IntegrityError:
            return False

    # -- clients -----------------------------------------------------------------------------
    def add_client(
        self,
        client_id: str,
        *,
        grant_types: Sequence[str],
        scopes: str,
        secret: str | None = None,
        name: str | None = None,
        redirect_uris: Sequence[str] = (),
        jwks: Mapping[str, Any] | None = None,
        jwks_url: str | None = None,
    ) -> ClientRecord:
        """Register a client; without a secret and without keys it is public.  Raises AlreadyExists."""
        unknown = set(grant_types) - set(GRANT_TYPES)
        if unknown:
            raise ValueError(f"unknown grant types: {', '.join(sorted(unknown))}")
        values = {
            "client_id": client_id,
            "secret_hash": passwords.hash_password(secret) if secret is not None else None,
            "name": name or client_id,
            "grant_types": " ".join(grant_types),
            "scopes": " ".join(scopes.split()),
            "redirect_uris": json.dumps(list(redirect_uris)),
            "jwks": json.dumps(dict(jwks)) if jwks is not None else None,
            "jwks_url": jwks_url,
            "public": secret is None and jwks is None and jwks_url is None,
            "created_ms": now_ms(),
        }
        with self._tx() as conn:
            if not self._insert_new(conn, oauth_client, values):
                raise AlreadyExists(f"client {client_id!r} already exists")
        return client_from_row(values)

    def get_client(self, client_id: str) -> ClientRecord | None:
        with self._read() as conn:
            row = conn.execute(select(oauth_client).where(oauth_client.c.client_id == client_id)).first()
        return client_from_row(row._mapping) if row else None

    def list_clients(self) -> list[ClientRecord]:
        with self._read() as conn:
            rows = conn.execute(select(oauth_client).order_by(oauth_client.c.client_id)).all()
        return [client_from_row(r._mapping) for r in rows]

    def count_clients(self) -> int:
        with self._read() as conn:
            return int(conn.execute(select(func.count()).select_from(oauth_client)).scalar_one())

    def remove_client(self, client_id: str) -> bool:
        """Delete a client with its codes, refresh tokens and API keys (access tokens run out on their own)."""
        with self._tx() as conn:
            for table in (oauth_code, oauth_refresh, oauth_api_key, oauth_assertion_jti):
                conn.execute(delete(table).where(table.c.client_id == client_id))
            return conn.execute(delete(oauth_client).where(oauth_client.c.client_id == client_id)).rowcount > 0

    def verify_client_secret(self, client_id: str, secret: str) -> bool:
        client = self.get_client(client_id)
        return passwords.verify_password(client.secret_hash if client else None, secret)

    # -- users -------------------------------------------------------------------------------
    def add_user(
        self,
        username: str,
        password: str,
        *,
        fhir_user: str | None = None,
        patient: str | None = None,
        totp: bool = False,
    ) -> UserRecord:
        """Create a user; with totp a secret is generated (read it from the record to enrol). Raises AlreadyExists."""
        values = {
            "username": username,
            "password_hash": passwords.hash_password(password),
            "fhir_user": fhir_user,
            "patient": patient,
            "totp_secret": passwords.new_totp_secret() if totp else None,
            "created_ms": now_ms(),
        }
        with self._tx() as conn:
            if not self._insert_new(conn, oauth_user, values):
                raise AlreadyExists(f"user {username!r} already exists")
        return user_from_row(values)

    def get_user(self, username: str) -> UserRecord | None:
        with self._read() as conn:
            row = conn.execute(select(oauth_user).where(oauth_user.c.username == username)).first()
        return user_from_row(row._mapping) if row else None

    def list_users(self) -> list[UserRecord]:
        with self._read() as conn:
            rows = conn.execute(select(oauth_user).order_by(oauth_user.c.username)).all()
        return [user_from_row(r._mapping) for r in rows]

    def remove_user(self, username: str) -> bool:
        with self._tx() as conn:
            conn.execute(delete(oauth_refresh).where(oauth_refresh.c.username == username))
            conn.execute(delete(oauth_code).where(oauth_code.c.username == username))
            return conn.execute(delete(oauth_user).where(oauth_user.c.username == username)).rowcount > 0

    def verify_password(self, username: str, password: str) -> UserRecord | None:
        """The user when the password is right; argon2 runs for unknown users too (no timing oracle).

        CPU-bound (tens of milliseconds): call it from a worker thread, not the event loop."""
        user = self.get_user(username)
        if not passwords.verify_password(user.password_hash if user else None, password) or user is None:
            return None
        if passwords.needs_rehash(user.password_hash):
            # Only now is the plaintext at hand to bring an old hash up to the current parameters.
            upgraded = passwords.hash_password(password)
            with self._tx() as conn:
                conn.execute(update(oauth_user).where(oauth_user.c.username == username)
                             .values(password_hash=upgraded))
        return user

    def verify_totp(self, username: str, code: str) -> bool:
        """False as well for users without TOTP enrolment: callers ask only when a second factor is due."""
        user = self.get_user(username)
        return bool(user and user.totp_secret and passwords.verify_totp(user.totp_secret, code))

    # -- authorization codes -----------------------------------------------------------------
    def save_code(
        self,
        code: str,
        *,
        client_id: str,
        username: str,
        scope: str,
        expires_ms: int,
        redirect_uri: str | None = None,
        code_challenge: str | None = None,
        code_challenge_method: str | None = None,
        nonce: str | None = None,
        patient: str | None = None,
        encounter: str | None = None,
    ) -> None:
        with self._tx() as conn:
            conn.execute(insert(oauth_code).values(
                code_hash=passwords.hash_token(code), client_id=client_id, username=username,
                redirect_uri=redirect_uri, scope=scope, code_challenge=code_challenge,
                code_challenge_method=code_challenge_method, nonce=nonce, patient=patient,
                encounter=encounter, expires_ms=expires_ms, used=False,
            ))

    def consume_code(self, code: str, *, client_id: str | None = None) -> CodeConsumption:
        """Redeem a code once.  Concurrent callers race on one conditional UPDATE: exactly one wins.

        With client_id, a code issued to another client is neither redeemed nor burnt."""
        digest = passwords.hash_token(code)
        c = oauth_code.c
        claim = (update(oauth_code)
                 .where(c.code_hash == digest, c.used.is_(False), c.expires_ms > now_ms())
                 .values(used=True).returning(*oauth_code.c))
        if client_id is not None:
            claim = claim.where(c.client_id == client_id)
        with self._tx() as conn:
            row = conn.execute(claim).first()
            if row is not None:
                return CodeConsumption(code_from_row(row._mapping))
            stored = conn.execute(select(oauth_code).where(c.code_hash == digest)).first()
        if stored is not None and stored.used and (client_id is None or stored.client_id == client_id):
            return CodeConsumption(None, reused=True, previous=code_from_row(stored._mapping))
        return CodeConsumption(None)

    # -- refresh tokens ----------------------------------------------------------------------
    def save_refresh(
        self,
        token: str,
        *,
        client_id: str,
        scope: str,
        expires_ms: int,
        username: str | None = None,
        patient: str | None = None,
        encounter: str | None = None,
        fhir_user: str | None = None,
    ) -> RefreshRecord:
        values = {
            "token_hash": passwords.hash_token(token), "client_id": client_id, "username": username,
            "scope": scope, "patient": patient, "encounter": encounter, "fhir_user": fhir_user,
            "expires_ms": expires_ms, "revoked": False, "replaced_by": None,
        }
        with self._tx() as conn:
            conn.execute(insert(oauth_refresh).values(values))
        return refresh_from_row(values)

    def get_refresh(self, token: str) -> RefreshRecord | None:
        """The token's grant while it is usable (neither revoked nor expired)."""
        c = oauth_refresh.c
        with self._read() as conn:
            row = conn.execute(select(oauth_refresh).where(
                c.token_hash == passwords.hash_token(token), c.revoked.is_(False), c.expires_ms > now_ms(),
            )).first()
        return refresh_from_row(row._mapping) if row else None

    def rotate_refresh(
        self,
        old: str,
        new: str,
        *,
        client_id: str | None = None,
        expires_ms: int | None = None,
        scope: str | None = None,
    ) -> RefreshRotation:
        """Exchange old for new atomically: old is revoked and points at new, new inherits the grant.

        expires_ms None keeps the old expiry (a fixed session length); scope may narrow the grant.
        Presenting an already exchanged token revokes every token descended from it (RFC 9700 §4.14)."""
        old_hash, new_hash = passwords.hash_token(old), passwords.hash_token(new)
        c = oauth_refresh.c
        claim = (update(oauth_refresh)
                 .where(c.token_hash == old_hash, c.revoked.is_(False), c.expires_ms > now_ms())
                 .values(revoked=True, replaced_by=new_hash).returning(*oauth_refresh.c))
        if client_id is not None:
            claim = claim.where(c.client_id == client_id)
        with self._tx() as conn:
            row = conn.execute(claim).first()
            if row is not None:
                prev = refresh_from_row(row._mapping)
                values = {
                    **row._mapping, "token_hash": new_hash, "revoked": False, "replaced_by": None,
                    "expires_ms": prev.expires_ms if expires_ms is None else expires_ms,
                    "scope": prev.scope if scope is None else scope,
                }
                conn.execute(insert(oauth_refresh).values(values))
                return RefreshRotation(refresh_from_row(values))
            stored = conn.execute(select(oauth_refresh).where(c.token_hash == old_hash)).first()
            if stored is None or stored.replaced_by is None or (client_id and stored.client_id != client_id):
                return RefreshRotation(None)
            self._revoke_descendants(conn, stored.replaced_by)
        return RefreshRotation(None, reused=True, previous=refresh_from_row(stored._mapping))

    def _revoke_descendants(self, conn: Connection, token_hash: str | None) -> None:
        c = oauth_refresh.c
        for _ in range(_MAX_CHAIN):
            if token_hash is None:
                return
            conn.execute(update(oauth_refresh).where(c.token_hash == token_hash).values(revoked=True))
            token_hash = conn.execute(select(c.replaced_by).where(c.token_hash == token_hash)).scalar()

    def revoke_refresh(self, token: str) -> bool:
        c = oauth_refresh.c
        with self._tx() as conn:
            return conn.execute(update(oauth_refresh).where(
                c.token_hash == passwords.hash_token(token), c.revoked.is_(False)).values(revoked=True)).rowcount > 0

    def revoke_all_for(self, client_id: str, username: str | None = None) -> int:
        """Revoke the refresh tokens of one client and user; username None: all of the client's."""
        c = oauth_refresh.c
        stmt = update(oauth_refresh).where(c.client_id == client_id, c.revoked.is_(False)).values(revoked=True)
        if username is not None:
            stmt = stmt.where(c.username == username)
        with self._tx() as conn:
            return int(conn.execute(stmt).rowcount)

    # -- access-token revocation list --------------------------------------------------------
    def revoke_jti(self, jti: str, exp_ms: int) -> None:
        """Deny an access token until it would have expired anyway; revoking twice is harmless."""
        with self._tx() as conn:
            self._insert_new(conn, oauth_revoked, {"jti": jti, "expires_ms": exp_ms, "revoked_ms": now_ms()})

    def revoked_since(self, ms: int) -> list[tuple[str, int]]:
        """(jti, revoked_ms) of unexpired revocations made at or after ms, oldest first."""
        c = oauth_revoked.c
        with self._read() as conn:
            rows = conn.execute(select(c.jti, c.revoked_ms)
                                .where(c.revoked_ms >= ms, c.expires_ms > now_ms())
                                .order_by(c.revoked_ms)).all()
        return [(r.jti, int(r.revoked_ms)) for r in rows]

    def is_revoked(self, jti: str) -> bool:
        with self._read() as conn:
            return conn.execute(select(oauth_revoked.c.jti).where(oauth_revoked.c.jti == jti)).first() is not None

    def purge_expired(self) -> int:
        """Delete rows whose time is over: revocations, seen assertions, codes, refresh tokens, launches."""
        now = now_ms()
        removed = 0
        with self._tx() as conn:
            for table in (oauth_revoked, oauth_assertion_jti, oauth_code, oauth_refresh, oauth_launch):
                removed += int(conn.execute(delete(table).where(table.c.expires_ms <= now)).rowcount)
        return removed

    # -- private_key_jwt assertion ids -------------------------------------------------------
    def use_assertion_jti(self, client_id: str, jti: str, exp_ms: int) -> bool:
        """Remember an assertion id; False when this client used it before (a replay)."""
        c = oauth_assertion_jti.c
        with self._tx() as conn:
            if self._insert_new(conn, oauth_assertion_jti, {"client_id": client_id, "jti": jti, "expires_ms": exp_ms}):
                return True
            # A row left over after its assertion expired (not yet purged) no longer proves a replay.
            return conn.execute(update(oauth_assertion_jti)
                                .where(c.client_id == client_id, c.jti == jti, c.expires_ms <= now_ms())
                                .values(expires_ms=exp_ms)).rowcount == 1

    # -- signing keys ------------------------------------------------------------------------
    def _lock_keys(self, conn: Connection) -> None:
        # Serialises key creation across sessions (SQLite writers already are, by BEGIN IMMEDIATE).
        # Advisory locks are per database: the key names the schema so other stores do not wait.
        if self._dialect == "postgresql":
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtext(current_schema() || ':oauth_signing_key'))")

    def active_signing_key(self) -> SigningKeyRecord | None:
        with self._read() as conn:
            return self._active_key(conn)

    def _active_key(self, conn: Connection) -> SigningKeyRecord | None:
        c = oauth_signing_key.c
        row = conn.execute(select(oauth_signing_key).where(c.active.is_(True))
                           .order_by(c.created_ms.desc(), c.kid.desc()).limit(1)).first()
        return signing_key_from_row(row._mapping) if row else None

    def signing_keys(self) -> list[SigningKeyRecord]:
        """Every stored key, newest first."""
        c = oauth_signing_key.c
        with self._read() as conn:
            rows = conn.execute(select(oauth_signing_key).order_by(c.created_ms.desc(), c.kid.desc())).all()
        return [signing_key_from_row(r._mapping) for r in rows]

    def ensure_signing_key(self, make: Callable[[], tuple[str, str]], alg: str = "RS256") -> SigningKeyRecord:
        """The active key; when there is none, make() -> (kid, private PEM) creates it (once, across workers)."""
        with self._tx() as conn:
            self._lock_keys(conn)
            key = self._active_key(conn)
            if key is None:
                key = self._insert_active_key(conn, *make(), alg)
        return key

    def add_signing_key(self, kid: str, private_pem: str, alg: str = "RS256") -> SigningKeyRecord:
        """Store a key and make it the one that signs; earlier keys stay to verify what they signed."""
        with self._tx() as conn:
            self._lock_keys(conn)
            return self._insert_active_key(conn, kid, private_pem, alg)

    def _insert_active_key(self, conn: Connection, kid: str, private_pem: str, alg: str) -> SigningKeyRecord:
        c = oauth_signing_key.c
        conn.execute(update(oauth_signing_key).where(c.active.is_(True)).values(active=False))
        # Strictly newer than every stored key, so "newest" stays well defined when clocks disagree.
        newest = conn.execute(select(func.max(c.created_ms))).scalar()
        values = {"kid": kid, "private_pem": private_pem, "alg": alg, "active": True,
                  "created_ms": max(now_ms(), int(newest or 0) + 1)}
        conn.execute(insert(oauth_signing_key).values(values))
        return signing_key_from_row(values)

    # -- API keys ----------------------------------------------------------------------------
    def create_api_key(self, client_id: str, scopes: str | None = None) -> str:
        """A new API key for a client; the plaintext is returned once and only its digest is kept."""
        key = API_KEY_PREFIX + secrets.token_urlsafe(32)
        with self._tx() as conn:
            if conn.execute(select(oauth_client.c.client_id).where(oauth_client.c.client_id == client_id)).first() is None:
                raise UnknownClient(f"no client {client_id!r}")
            conn.execute(insert(oauth_api_key).values(
                key_hash=passwords.hash_token(key), prefix=key[:_API_KEY_SHOWN], client_id=client_id,
                scopes=" ".join(scopes.split()) if scopes else None, created_ms=now_ms(), revoked=False,
            ))
        return key

    def lookup_api_key(self, key: str) -> ApiKeyRecord | None:
        """The key's record while it is not revoked."""
        digest = passwords.hash_token(key)
        with self._read() as conn:
            row = conn.execute(select(oauth_api_key).where(
                oauth_api_key.c.key_hash == digest, oauth_api_key.c.revoked.is_(False))).first()
        # The database compared digests with memcmp; repeat it in constant time for good measure.
        if row is None or not passwords.digests_equal(row.key_hash, digest):
            return None
        return api_key_from_row(row._mapping)

    def list_api_keys(self) -> list[ApiKeyRecord]:
        c = oauth_api_key.c
        with self._read() as conn:
            rows = conn.execute(select(oauth_api_key).order_by(c.client_id, c.created_ms)).all()
        return [api_key_from_row(r._mapping) for r in rows]

    def revoke_api_key(self, key_or_prefix: str) -> bool:
        """Revoke by the full key or by the prefix a listing shows.  Raises ValueError when a prefix is ambiguous."""
        c = oauth_api_key.c
        if len(key_or_prefix) > _API_KEY_SHOWN:
            match = c.key_hash == passwords.hash_token(key_or_prefix)
        else:
            match = c.prefix == key_or_prefix
        with self._tx() as conn:
            hashes = conn.execute(select(c.key_hash).where(match, c.revoked.is_(False))).scalars().all()
            if len(hashes) > 1:
                raise ValueError(f"prefix {key_or_prefix!r} matches {len(hashes)} keys; give the full key")
            if not hashes:
                return False
            conn.execute(update(oauth_api_key).where(c.key_hash == hashes[0]).values(revoked=True))
        return True

    # -- EHR launch contexts -----------------------------------------------------------------
    def create_launch(self, *, expires_ms: int, patient: str | None = None, encounter: str | None = None) -> str:
        launch_id = secrets.token_urlsafe(24)
        with self._tx() as conn:
            conn.execute(insert(oauth_launch).values(
                launch_id=launch_id, patient=patient, encounter=encounter, expires_ms=expires_ms))
        return launch_id

    def get_launch(self, launch_id: str) -> LaunchRecord | None:
        c = oauth_launch.c
        with self._read() as conn:
            row = conn.execute(select(oauth_launch).where(c.launch_id == launch_id, c.expires_ms > now_ms())).first()
        return launch_from_row(row._mapping) if row else None
