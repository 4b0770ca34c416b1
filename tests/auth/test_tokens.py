"""Access and id tokens: what verifies, what must not, and how revocation and key rotation
reach other workers (each "worker" here has its own engine, store, key ring and token service)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, OctKey, RSAKey

from fhir_server.auth.keys import KeyRing, client_jwks
from fhir_server.auth.store import AuthStore
from fhir_server.auth.tokens import AccessClaims, TokenService
from fhir_server.config import Settings
from fhir_server.storage.sql.backend import SqlBackend
from fhir_server.storage.sql.dialect import create_engine
from tests.storage.conftest import backend  # noqa: F401 - SQLite file, SQLite memory, PostgreSQL

BASE = "http://127.0.0.1:8080/fhir"


@pytest.fixture
def store(backend: SqlBackend) -> AuthStore:  # noqa: F811 - the imported fixture
    return AuthStore(backend.engine)


@pytest.fixture
def other_store(backend: SqlBackend) -> Iterator[AuthStore]:  # noqa: F811
    """The same database seen through another engine, as another worker process sees it."""
    url = backend.engine.url
    if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        yield AuthStore(backend.engine)  # a memory database exists only behind its one engine
        return
    engine = create_engine(url.render_as_string(hide_password=False), pool_size=2, timeout_s=10)
    try:
        yield AuthStore(engine)
    finally:
        engine.dispose()


def _service(store: AuthStore, **kwargs: Any) -> TokenService:
    ring = KeyRing(store, unknown_kid_reload_s=0.0)
    return TokenService(store, ring, BASE, BASE, **kwargs)


def _b64(data: bytes | dict[str, Any]) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _part(token: str, index: int) -> dict[str, Any]:
    segment = token.split(".")[index]
    return dict(json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))))


def _issue(svc: TokenService, **kwargs: Any) -> tuple[str, AccessClaims]:
    args: dict[str, Any] = {"client_id": "app", "sub": "alice", "scope": "openid  patient/*.rs"}
    args.update(kwargs)
    return svc.issue_access(**args)


# -- the happy path ---------------------------------------------------------------------------

def test_issue_and_verify(store: AuthStore) -> None:
    svc = _service(store)
    token, claims = _issue(svc, patient="123", fhir_user="Practitioner/9")
    assert svc.verify(token) == claims
    assert claims.scope == "openid patient/*.rs" and claims.scopes == ("openid", "patient/*.rs")
    assert (claims.iss, claims.aud, claims.exp - claims.iat) == (BASE, BASE, 3600)

    header, payload = _part(token, 0), _part(token, 1)
    assert header["alg"] == "RS256" and header["typ"] == "at+jwt"
    assert header["kid"] in {k["kid"] for k in svc.keyring.jwks()["keys"]}
    assert payload["fhirUser"] == "Practitioner/9" and payload["patient"] == "123"
    assert payload["client_id"] == "app" and payload["sub"] == "alice" and "encounter" not in payload

    other, other_claims = _issue(svc)
    assert other_claims.jti != claims.jti and svc.verify(other) == other_claims


def test_signing_key_is_persisted(store: AuthStore, other_store: AuthStore) -> None:
    first = KeyRing(store).signing_key()[0]
    assert KeyRing(other_store).signing_key()[0] == first
    jwks = KeyRing(other_store).jwks()
    assert [(k["kid"], k["alg"], k["use"], k["kty"]) for k in jwks["keys"]] == [(first, "RS256", "sig", "RSA")]
    assert not any(name in jwks["keys"][0] for name in ("d", "p", "q", "dp", "dq", "qi"))


# -- what must not verify ---------------------------------------------------------------------

def test_tampered_tokens_are_rejected(store: AuthStore) -> None:
    svc = _service(store)
    token, _ = _issue(svc)
    header, payload, signature = token.split(".")
    widened = _b64({**_part(token, 1), "scope": "system/*.*"})
    assert svc.verify(f"{header}.{widened}.{signature}") is None
    flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    assert svc.verify(f"{header}.{payload}.{flipped}") is None
    unknown_kid = _b64({**_part(token, 0), "kid": "not-ours"})
    assert svc.verify(f"{unknown_kid}.{payload}.{signature}") is None
    for garbage in ("", "abc", "a.b", "a.b.c", "...", token + ".x", token[:-10], "é.é.é", "Bearer " + token):
        assert svc.verify(garbage) is None


def test_only_rs256_is_accepted(store: AuthStore) -> None:
    svc = _service(store)
    token, _ = _issue(svc)
    kid, key = svc.keyring.signing_key()
    claims = _part(token, 1)

    unsigned = f"{_b64({'alg': 'none', 'typ': 'at+jwt', 'kid': kid})}.{_b64(claims)}."
    assert svc.verify(unsigned) is None

    # The classic confusion: an HMAC keyed with the (public) RSA key.
    head = _b64({"alg": "HS256", "typ": "at+jwt", "kid": kid})
    mac = hmac.new(key.as_pem(private=False), f"{head}.{_b64(claims)}".encode(), hashlib.sha256).digest()
    assert svc.verify(f"{head}.{_b64(claims)}.{_b64(mac)}") is None

    # Even our own key may only sign RS256.
    rs384 = jwt.encode({"alg": "RS384", "kid": kid, "typ": "at+jwt"}, claims, key, algorithms=["RS384"])
    assert svc.verify(rs384) is None

    stranger = RSAKey.generate_key(2048, private=True)
    forged = jwt.encode({"alg": "RS256", "kid": kid, "typ": "at+jwt"}, claims, stranger, algorithms=["RS256"])
    assert svc.verify(forged) is None


def test_expiry_with_leeway(store: AuthStore) -> None:
    ring = KeyRing(store)
    expired, _ = TokenService(store, ring, BASE, BASE, access_lifetime_s=-60).issue_access(
        client_id="app", sub="alice", scope="x")
    just_expired, _ = TokenService(store, ring, BASE, BASE, access_lifetime_s=-5).issue_access(
        client_id="app", sub="alice", scope="x")
    verifier = TokenService(store, ring, BASE, BASE)
    assert verifier.verify(expired) is None
    assert verifier.verify(just_expired) is not None  # within the 30 s allowed for clock skew


def test_audience_issuer_and_token_type(store: AuthStore) -> None:
    ring = KeyRing(store)
    svc = TokenService(store, ring, BASE, BASE)
    token, _ = svc.issue_access(client_id="app", sub="alice", scope="x")
    assert TokenService(store, ring, BASE, "https://other.example/fhir").verify(token) is None
    assert TokenService(store, ring, "https://other.example/fhir", BASE).verify(token) is None
    # An id_token is signed by the same key but is no access token, even with our audience.
    assert svc.verify(svc.issue_id_token(BASE, "alice")) is None
    kid, key = ring.signing_key()
    untyped = jwt.encode({"alg": "RS256", "kid": kid}, _part(token, 1), key, algorithms=["RS256"])
    assert svc.verify(untyped) is None
    missing_jti = {k: v for k, v in _part(token, 1).items() if k != "jti"}
    no_jti = jwt.encode({"alg": "RS256", "kid": kid, "typ": "at+jwt"}, missing_jti, key, algorithms=["RS256"])
    assert svc.verify(no_jti) is None


def test_id_token(store: AuthStore) -> None:
    svc = _service(store)
    id_token = svc.issue_id_token("app", "alice", fhir_user="Practitioner/9", nonce="n-1", auth_time=1_700_000_000)
    header = _part(id_token, 0)
    keys = KeySet.import_key_set(svc.keyring.jwks())  # type: ignore[arg-type]
    decoded = jwt.decode(id_token, keys, algorithms=["RS256"])
    assert header["alg"] == "RS256" and header["kid"] == svc.keyring.signing_key()[0]
    c = decoded.claims
    assert (c["iss"], c["sub"], c["aud"], c["fhirUser"], c["nonce"], c["auth_time"]) == (
        BASE, "alice", "app", "Practitioner/9", "n-1", 1_700_000_000)
    assert c["exp"] > c["iat"]
    plain = _part(svc.issue_id_token("app", "alice"), 1)
    assert "nonce" not in plain and "fhirUser" not in plain


def test_from_settings(store: AuthStore) -> None:
    settings = Settings(base_url="https://ehr.example/fhir/")
    svc = TokenService.from_settings(store, KeyRing(store), settings)
    assert (svc.issuer, svc.audience) == ("https://ehr.example/fhir", "https://ehr.example/fhir")
    assert (svc.access_lifetime_s, svc.refresh_lifetime_s, svc.code_lifetime_s) == (3600, 30 * 24 * 3600, 60)
    token, claims = _issue(svc)
    assert svc.verify(token) == claims


def test_opaque_secrets() -> None:
    values = {TokenService.new_refresh_token() for _ in range(50)} | {TokenService.new_code() for _ in range(50)}
    assert len(values) == 100 and min(len(v) for v in values) >= 43


# -- revocation across workers ----------------------------------------------------------------

def test_revocation_reaches_another_worker(store: AuthStore, other_store: AuthStore) -> None:
    a = _service(store, revocation_poll_s=0.2)
    b = _service(other_store, revocation_poll_s=0.2)
    token, claims = _issue(a)
    assert a.verify(token) is not None and b.verify(token) is not None

    started = time.monotonic()
    a.revoke(claims.jti, claims.exp)
    assert a.verify(token) is None  # the revoking worker knows at once
    while b.verify(token) is not None:
        assert time.monotonic() - started < 3.0, "the other worker never saw the revocation"
        time.sleep(0.05)
    assert time.monotonic() - started < 1.5
    assert store.is_revoked(claims.jti)

    # A worker starting later loads the whole list.
    late = _service(other_store)
    assert late.verify(token) is None
    fresh, _ = _issue(a)
    assert late.verify(fresh) is not None


def test_verify_does_not_touch_the_database(backend: SqlBackend) -> None:  # noqa: F811
    svc = _service(AuthStore(backend.engine), revocation_poll_s=60)
    token, _ = _issue(svc)
    assert svc.verify(token) is not None  # first use loads keys and the revocation list
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(args[2])

    sa.event.listen(backend.engine, "before_cursor_execute", count)
    try:
        for _ in range(200):
            assert svc.verify(token) is not None
    finally:
        sa.event.remove(backend.engine, "before_cursor_execute", count)
    assert statements == []


def test_verify_survives_a_database_outage(store: AuthStore, monkeypatch: pytest.MonkeyPatch) -> None:
    svc = _service(store, revocation_poll_s=0.0)
    token, _ = _issue(svc)
    assert svc.verify(token) is not None

    def down(ms: int) -> list[tuple[str, int]]:
        raise sa.exc.OperationalError("SELECT", {}, Exception("connection refused"))

    monkeypatch.setattr(store, "revoked_since", down)
    assert svc.verify(token) is not None


# -- key rotation -----------------------------------------------------------------------------

def test_rotation_keeps_old_tokens_valid(store: AuthStore, other_store: AuthStore) -> None:
    a = _service(store)
    old_token, _ = _issue(a)
    old_kid = _part(old_token, 0)["kid"]

    b_ring = KeyRing(other_store)
    new_kid = b_ring.rotate()  # another worker, or `fhir-server signing-keys rotate`
    assert new_kid != old_kid
    b = TokenService(other_store, b_ring, BASE, BASE)
    new_token, _ = _issue(b)
    assert _part(new_token, 0)["kid"] == new_kid

    assert a.verify(old_token) is not None and b.verify(old_token) is not None
    assert a.verify(new_token) is not None  # unknown kid: a reloads the keys
    assert {k["kid"] for k in a.keyring.jwks()["keys"]} == {old_kid, new_kid}
    assert {k["kid"] for k in b_ring.jwks()["keys"]} == {old_kid, new_kid}
    assert [k.kid for k in store.signing_keys() if k.active] == [new_kid]


def test_signing_key_change_reaches_other_workers(store: AuthStore, other_store: AuthStore) -> None:
    ring = KeyRing(store, refresh_s=0.0)
    first = ring.signing_key()[0]
    rotated = KeyRing(other_store).rotate()
    assert ring.signing_key()[0] == rotated != first


def test_retired_keys_leave_the_jwks(store: AuthStore) -> None:
    ring = KeyRing(store, retire_after_s=0, unknown_kid_reload_s=0.0)
    svc = TokenService(store, ring, BASE, BASE)
    old_token, _ = _issue(svc)
    new_kid = ring.rotate()
    time.sleep(0.01)
    ring.rotate()
    newest = ring.signing_key()[0]
    assert {k["kid"] for k in ring.jwks()["keys"]} == {newest}
    assert new_kid != newest and svc.verify(old_token) is None
    keep = KeyRing(store, retire_after_s=3600)
    assert len(keep.jwks()["keys"]) == 3


# -- client key sets (private_key_jwt) --------------------------------------------------------

@pytest.mark.filterwarnings("ignore::joserfc.errors.SecurityWarning")  # the 1024-bit key, refused below
def test_client_jwks_validation() -> None:
    rsa = RSAKey.generate_key(2048, private=True, parameters={"alg": "RS384", "kid": "r1"})
    ec = ECKey.generate_key("P-384", private=True, parameters={"kid": "e1"})
    checked = client_jwks({"keys": [rsa.as_dict(private=True), ec.as_dict(private=False)]})
    assert [k["kid"] for k in checked["keys"]] == ["r1", "e1"]
    assert all("d" not in k for k in checked["keys"])  # private members given by mistake are dropped

    refused: list[Any] = [
        None, [], {}, {"keys": []}, {"keys": [{"kty": "RSA"}]},
        {"keys": [RSAKey.generate_key(2048, parameters={"alg": "RS256"}).as_dict()]},
        {"keys": [RSAKey.generate_key(1024).as_dict()]},
        {"keys": [ECKey.generate_key("P-256").as_dict()]},
        {"keys": [OctKey.generate_key(256).as_dict()]},
        {"keys": [RSAKey.generate_key(2048, parameters={"use": "enc"}).as_dict()]},
    ]
    for data in refused:
        with pytest.raises(ValueError):
            client_jwks(data)
