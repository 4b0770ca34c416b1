"""AuthStore on SQLite (file and memory) and PostgreSQL: records round-trip, single-use and
replay guarantees hold under concurrency, bootstrap runs once."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import pyotp
import pytest
from argon2 import PasswordHasher, profiles
from sqlalchemy.exc import IntegrityError

from fhir_server.auth import passwords
from fhir_server.auth.bootstrap import DEMO_USER, SANDBOX_CLIENT, ensure_sandbox
from fhir_server.auth.store import AlreadyExists, AuthStore, UnknownClient
from fhir_server.auth.urls import authorize_url, introspect_url, issuer, jwks_url, revoke_url, token_url
from fhir_server.model.instant import now_ms
from fhir_server.storage.sql.backend import SqlBackend
from tests.storage.conftest import backend  # noqa: F401 - SQLite file, SQLite memory, PostgreSQL

T = TypeVar("T")
HOUR_MS = 3_600_000


@pytest.fixture(autouse=True)
def cheap_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    # Production parameters cost about 0.3 s a hash on a small machine; the logic is the same.
    monkeypatch.setattr(passwords, "_hasher", PasswordHasher.from_parameters(profiles.CHEAPEST))


@pytest.fixture
def store(backend: SqlBackend) -> Iterator[AuthStore]:  # noqa: F811 - the imported fixture
    yield AuthStore(backend.engine)


def _race(n: int, call: Callable[[], T]) -> list[T]:
    """Run call in n threads released at the same instant."""
    barrier = threading.Barrier(n)
    results: list[T] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run() -> None:
        barrier.wait()
        try:
            result = call()
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
            return
        with lock:
            results.append(result)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


def _code(store: AuthStore, code: str, **overrides: object) -> None:
    values: dict[str, object] = {
        "client_id": "app", "username": "alice", "scope": "openid patient/*.rs", "expires_ms": now_ms() + 60_000,
        "redirect_uri": "http://localhost/cb", "code_challenge": "x" * 43, "code_challenge_method": "S256",
        "nonce": "n-1", "patient": "123",
    }
    values.update(overrides)
    store.save_code(code, **values)  # type: ignore[arg-type]


# -- clients ----------------------------------------------------------------------------------

def test_clients_round_trip(store: AuthStore) -> None:
    assert store.count_clients() == 0
    conf = store.add_client("conf", secret="s3cret", grant_types=["client_credentials"], scopes="system/*.rs")
    pub = store.add_client("pub", grant_types=["authorization_code"], scopes="launch  patient/*.rs",
                           redirect_uris=["http://localhost/cb", "http://localhost/cb2"])
    jwks = {"keys": [{"kty": "EC", "crv": "P-384", "x": "a", "y": "b", "kid": "k1"}]}
    jwt_client = store.add_client("jwt", grant_types=["client_credentials"], scopes="system/*.rs", jwks=jwks)

    assert (conf.public, pub.public, jwt_client.public) == (False, True, False)
    assert conf.token_endpoint_auth_methods == ("client_secret_basic", "client_secret_post")
    assert pub.token_endpoint_auth_methods == ("none",)
    assert jwt_client.token_endpoint_auth_methods == ("private_key_jwt",)
    assert "s3cret" not in repr(conf) and conf.secret_hash is not None and "s3cret" not in conf.secret_hash

    got = store.get_client("pub")
    assert got == pub
    assert got is not None and got.redirect_uris == ("http://localhost/cb", "http://localhost/cb2")
    assert got.scopes == "launch patient/*.rs"
    assert store.get_client("jwt") == jwt_client and jwt_client.jwks == jwks
    assert [c.client_id for c in store.list_clients()] == ["conf", "jwt", "pub"]
    assert store.count_clients() == 3

    assert store.verify_client_secret("conf", "s3cret")
    assert not store.verify_client_secret("conf", "wrong")
    assert not store.verify_client_secret("pub", "")
    assert not store.verify_client_secret("nobody", "s3cret")

    with pytest.raises(AlreadyExists):
        store.add_client("conf", grant_types=["password"], scopes="x")
    with pytest.raises(ValueError, match="implicit"):
        store.add_client("bad", grant_types=["implicit"], scopes="x")

    assert store.remove_client("pub")
    assert not store.remove_client("pub")
    assert store.get_client("pub") is None and store.count_clients() == 2


def test_remove_client_takes_its_grants_along(store: AuthStore) -> None:
    store.add_client("app", secret="s", grant_types=["authorization_code", "refresh_token"], scopes="x",
                     redirect_uris=["http://localhost/cb"])
    store.save_refresh("rt", client_id="app", username="alice", scope="x", expires_ms=now_ms() + HOUR_MS)
    key = store.create_api_key("app")
    _code(store, "c1")
    assert store.remove_client("app")
    assert store.get_refresh("rt") is None
    assert store.lookup_api_key(key) is None
    assert store.consume_code("c1").record is None


# -- users ------------------------------------------------------------------------------------

def test_password_verification(store: AuthStore) -> None:
    user = store.add_user("alice", "correct horse", fhir_user="Practitioner/1", patient="123")
    assert user.password_hash.startswith("$argon2id$") and "correct horse" not in repr(user)
    ok = store.verify_password("alice", "correct horse")
    assert ok is not None and (ok.fhir_user, ok.patient) == ("Practitioner/1", "123")
    assert store.verify_password("alice", "Correct horse") is None
    assert store.verify_password("alice", "") is None
    assert store.verify_password("bob", "correct horse") is None
    with pytest.raises(AlreadyExists):
        store.add_user("alice", "other")
    assert [u.username for u in store.list_users()] == ["alice"]
    assert store.remove_user("alice") and store.get_user("alice") is None
    assert not store.remove_user("alice")


def test_weak_password_hash_is_upgraded_at_login(store: AuthStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.add_user("old", "pw")
    monkeypatch.setattr(passwords, "_hasher", PasswordHasher())
    assert store.verify_password("old", "pw") is not None
    user = store.get_user("old")
    assert user is not None and "m=65536" in user.password_hash
    assert store.verify_password("old", "pw") is not None


def test_totp(store: AuthStore) -> None:
    user = store.add_user("carol", "pw", totp=True)
    assert user.totp_enabled and user.totp_secret is not None
    now = pyotp.TOTP(user.totp_secret).now()
    assert store.verify_totp("carol", now)
    wrong = f"{(int(now) + 1) % 1_000_000:06d}"
    assert not store.verify_totp("carol", wrong)
    assert not store.verify_totp("carol", "abcdef")
    store.add_user("dave", "pw")
    assert not store.verify_totp("dave", now)
    uri = passwords.totp_provisioning_uri(user.totp_secret, "carol")
    assert uri.startswith("otpauth://totp/") and user.totp_secret in uri


# -- authorization codes ----------------------------------------------------------------------

def test_code_is_single_use(store: AuthStore) -> None:
    _code(store, "code-1")
    first = store.consume_code("code-1", client_id="app")
    assert first.record is not None and not first.reused
    r = first.record
    assert (r.client_id, r.username, r.scope, r.nonce, r.patient, r.code_challenge_method) == (
        "app", "alice", "openid patient/*.rs", "n-1", "123", "S256")
    assert r.code_hash == passwords.hash_token("code-1") and r.code_hash != "code-1"

    again = store.consume_code("code-1", client_id="app")
    assert again.record is None and again.reused
    assert again.previous is not None and (again.previous.client_id, again.previous.username) == ("app", "alice")

    assert store.consume_code("never-issued") == store.consume_code("never-issued")
    assert store.consume_code("never-issued").record is None and not store.consume_code("never-issued").reused


def test_code_expired_or_other_client(store: AuthStore) -> None:
    _code(store, "old", expires_ms=now_ms() - 1)
    assert store.consume_code("old").record is None and not store.consume_code("old").reused
    _code(store, "mine")
    stolen = store.consume_code("mine", client_id="evil")
    assert stolen.record is None and not stolen.reused
    assert store.consume_code("mine", client_id="app").record is not None  # not burnt by the wrong client


def test_concurrent_code_redemption_has_one_winner(store: AuthStore) -> None:
    _code(store, "contested")
    results = _race(12, lambda: store.consume_code("contested", client_id="app"))
    assert sum(r.record is not None for r in results) == 1
    assert sum(r.reused for r in results) == 11


# -- refresh tokens ---------------------------------------------------------------------------

def test_refresh_rotation(store: AuthStore) -> None:
    exp = now_ms() + HOUR_MS
    saved = store.save_refresh("rt-1", client_id="app", username="alice", scope="openid offline_access patient/*.rs",
                               patient="123", fhir_user="Patient/123", expires_ms=exp)
    assert store.get_refresh("rt-1") == saved

    rotated = store.rotate_refresh("rt-1", "rt-2", client_id="app")
    assert rotated.record is not None and not rotated.reused
    assert (rotated.record.scope, rotated.record.patient, rotated.record.expires_ms) == (saved.scope, "123", exp)
    assert store.get_refresh("rt-1") is None
    assert store.get_refresh("rt-2") == rotated.record

    narrowed = store.rotate_refresh("rt-2", "rt-3", scope="patient/*.rs", expires_ms=exp + 1)
    assert narrowed.record is not None and (narrowed.record.scope, narrowed.record.expires_ms) == ("patient/*.rs", exp + 1)

    # Presenting a token that was already exchanged smells of theft: its descendants die too.
    replay = store.rotate_refresh("rt-1", "rt-x")
    assert replay.record is None and replay.reused and replay.previous is not None
    assert store.get_refresh("rt-3") is None and store.get_refresh("rt-x") is None


def test_refresh_wrong_client_expired_and_revocation(store: AuthStore) -> None:
    store.save_refresh("a", client_id="app", username="alice", scope="x", expires_ms=now_ms() + HOUR_MS)
    assert store.rotate_refresh("a", "b", client_id="other") == store.rotate_refresh("nope", "b")
    assert store.get_refresh("a") is not None
    store.save_refresh("old", client_id="app", scope="x", expires_ms=now_ms() - 1)
    assert store.get_refresh("old") is None and store.rotate_refresh("old", "new").record is None

    assert store.revoke_refresh("a") and not store.revoke_refresh("a")
    assert store.get_refresh("a") is None

    for token, user in (("u1", "alice"), ("u2", "alice"), ("u3", "bob"), ("s1", None)):
        store.save_refresh(token, client_id="app", username=user, scope="x", expires_ms=now_ms() + HOUR_MS)
    assert store.revoke_all_for("app", "alice") == 2
    assert store.get_refresh("u3") is not None
    assert store.revoke_all_for("app") == 3  # u3, s1 and the expired "old"
    assert store.get_refresh("u3") is None and store.get_refresh("s1") is None


def test_failed_rotation_changes_nothing(store: AuthStore) -> None:
    # The new token's insert fails (its hash exists): the old token's revocation must roll back with it.
    store.save_refresh("a", client_id="app", scope="x", expires_ms=now_ms() + HOUR_MS)
    store.save_refresh("b", client_id="app", scope="x", expires_ms=now_ms() + HOUR_MS)
    with pytest.raises(IntegrityError):
        store.rotate_refresh("a", "b")
    assert store.get_refresh("a") is not None


def test_concurrent_refresh_rotation_has_one_winner(store: AuthStore) -> None:
    store.save_refresh("shared", client_id="app", scope="x", expires_ms=now_ms() + HOUR_MS)
    counter = iter(range(100))
    results = _race(10, lambda: store.rotate_refresh("shared", f"next-{next(counter)}"))
    assert sum(r.record is not None for r in results) == 1


# -- private_key_jwt assertion ids ------------------------------------------------------------

def test_assertion_jti_replay_is_refused(store: AuthStore) -> None:
    exp = now_ms() + 300_000
    assert store.use_assertion_jti("app", "jti-1", exp)
    assert not store.use_assertion_jti("app", "jti-1", exp)
    assert store.use_assertion_jti("other-app", "jti-1", exp)  # ids are per client
    assert store.use_assertion_jti("app", "stale", now_ms() - 1)
    assert store.use_assertion_jti("app", "stale", exp)  # its first use had expired


def test_concurrent_assertion_jti_has_one_winner(store: AuthStore) -> None:
    results = _race(12, lambda: store.use_assertion_jti("app", "raced", now_ms() + 300_000))
    assert sorted(results) == [False] * 11 + [True]


# -- access-token revocation list -------------------------------------------------------------

def test_revocation_list_and_purge(store: AuthStore) -> None:
    start = now_ms()
    store.revoke_jti("j1", start + HOUR_MS)
    store.revoke_jti("j1", start + HOUR_MS)  # idempotent
    store.revoke_jti("gone", start - 1)  # already expired: nothing to deny
    since = store.revoked_since(start - 1000)
    assert [jti for jti, _ in since] == ["j1"] and since[0][1] >= start
    assert store.revoked_since(now_ms() + 10_000) == []
    assert store.is_revoked("j1") and not store.is_revoked("j2")

    store.use_assertion_jti("app", "old", start - 1)
    _code(store, "expired", expires_ms=start - 1)
    store.save_refresh("expired", client_id="app", scope="x", expires_ms=start - 1)
    store.create_launch(expires_ms=start - 1)
    assert store.purge_expired() == 5
    assert store.is_revoked("j1") and not store.is_revoked("gone")


# -- signing keys -----------------------------------------------------------------------------

def test_signing_key_created_once_and_rotated(store: AuthStore) -> None:
    assert store.active_signing_key() is None
    made = iter(range(100))
    keys = _race(6, lambda: store.ensure_signing_key(lambda: (f"kid-{next(made)}", "PEM")))
    assert len({k.kid for k in keys}) == 1 and len(store.signing_keys()) == 1
    first = keys[0]
    second = store.add_signing_key("kid-new", "PEM2")
    assert store.active_signing_key() == second and second.created_ms > first.created_ms
    assert [(k.kid, k.active) for k in store.signing_keys()] == [("kid-new", True), (first.kid, False)]
    assert store.ensure_signing_key(lambda: ("never", "")).kid == "kid-new"
    assert "PEM2" not in repr(second)


# -- API keys ---------------------------------------------------------------------------------

def test_api_keys(store: AuthStore) -> None:
    store.add_client("svc", secret="s", grant_types=["client_credentials"], scopes="system/*.rs")
    key = store.create_api_key("svc", "system/Patient.rs")
    other = store.create_api_key("svc")
    assert key.startswith("fhk_") and len(key) > 40 and key != other
    record = store.lookup_api_key(key)
    assert record is not None and (record.client_id, record.scopes) == ("svc", "system/Patient.rs")
    assert record.key_hash == passwords.hash_token(key) and key not in repr(record)
    assert record.prefix == key[:12]
    assert store.lookup_api_key(key + "x") is None and store.lookup_api_key("") is None
    assert {k.prefix for k in store.list_api_keys()} == {key[:12], other[:12]}

    assert store.revoke_api_key(key[:12])
    assert store.lookup_api_key(key) is None and store.lookup_api_key(other) is not None
    assert not store.revoke_api_key(key[:12])
    assert store.revoke_api_key(other) and store.lookup_api_key(other) is None
    with pytest.raises(UnknownClient):
        store.create_api_key("nobody")


# -- launch contexts --------------------------------------------------------------------------

def test_launch_contexts(store: AuthStore) -> None:
    launch = store.create_launch(patient="123", encounter="e1", expires_ms=now_ms() + 60_000)
    got = store.get_launch(launch)
    assert got is not None and (got.patient, got.encounter) == ("123", "e1")
    assert store.get_launch("unknown") is None
    old = store.create_launch(patient="1", expires_ms=now_ms() - 1)
    assert store.get_launch(old) is None


# -- bootstrap and URLs -----------------------------------------------------------------------

def test_sandbox_is_created_once(store: AuthStore) -> None:
    message = ensure_sandbox(store, "http://127.0.0.1:8080/fhir")
    assert message is not None
    secret = next(line.split()[-1] for line in message.splitlines() if "client_secret:" in line)
    password = next(line.split()[-1] for line in message.splitlines() if "password:" in line)
    assert store.verify_client_secret(SANDBOX_CLIENT, secret)
    assert store.verify_password(DEMO_USER, password) is not None
    assert "http://127.0.0.1:8080/oauth/token" in message and "grant_type=password" in message
    client = store.get_client(SANDBOX_CLIENT)
    assert client is not None and not client.public
    assert set(client.grant_types) == {"password", "client_credentials", "authorization_code", "refresh_token"}
    assert {"openid", "fhirUser", "offline_access", "user/*.cruds", "system/*.rs"} <= set(client.scopes.split())
    assert ensure_sandbox(store, "http://127.0.0.1:8080/fhir") is None
    assert store.count_clients() == 1


def test_sandbox_keeps_an_existing_demo_user(store: AuthStore) -> None:
    store.add_user(DEMO_USER, "mine")
    message = ensure_sandbox(store, "http://h/fhir")
    assert message is not None and "unchanged" in message
    assert store.verify_password(DEMO_USER, "mine") is not None


def test_concurrent_bootstrap_creates_one_sandbox(store: AuthStore) -> None:
    messages = _race(4, lambda: ensure_sandbox(store, "http://h/fhir"))
    assert sum(m is not None for m in messages) == 1 and store.count_clients() == 1


def test_urls() -> None:
    base = "http://127.0.0.1:8080/fhir"
    assert token_url(base) == "http://127.0.0.1:8080/oauth/token"
    assert token_url(base + "/") == "http://127.0.0.1:8080/oauth/token"
    assert authorize_url(base) == "http://127.0.0.1:8080/oauth/authorize"
    assert introspect_url(base) == "http://127.0.0.1:8080/oauth/introspect"
    assert revoke_url(base) == "http://127.0.0.1:8080/oauth/revoke"
    assert jwks_url(base) == "http://127.0.0.1:8080/oauth/jwks"
    assert issuer(base + "/") == base
    assert token_url("https://example.org/r4") == "https://example.org/r4/oauth/token"
