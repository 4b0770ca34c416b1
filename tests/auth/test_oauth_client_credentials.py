"""client_credentials: SMART Backend Services (private_key_jwt, RS384/ES384) and client secrets."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from fhir_server.auth import server as oauth_server
from tests.auth.oauth_helpers import (
    TOKEN_URL,
    Server,
    assertion,
    assertion_form,
    ec_key,
    public_jwks,
    rsa_key,
    server,  # noqa: F401 - the module-scoped server fixture
)

SCOPES = "system/*.rs system/Observation.cruds"


def _backend_client(srv: Server, *keys: RSAKey | ECKey, scopes: str = SCOPES) -> str:
    return srv.client(grant_types=["client_credentials"], scopes=scopes, jwks=public_jwks(*keys))


def _request(srv: Server, token: str, scope: str | None = "system/*.rs", **extra: str) -> httpx.Response:
    form = assertion_form(token, grant_type="client_credentials", **extra)
    if scope is not None:
        form["scope"] = scope
    return srv.token(form)


def _refused(response: httpx.Response, error: str = "invalid_client") -> dict[str, Any]:
    assert response.status_code in (400, 401), response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == error, body
    assert "access_token" not in body
    return body


@pytest.mark.parametrize("make_key", [rsa_key, ec_key], ids=["RS384", "ES384"])
def test_signed_assertion_gets_a_system_token(server: Server, make_key: Any) -> None:  # noqa: F811
    key = make_key()
    client_id = _backend_client(server, key)
    response = _request(server, assertion(key, client_id))
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "Bearer" and body["scope"] == "system/*.rs"
    assert "refresh_token" not in body and "id_token" not in body and "patient" not in body
    claims = server.auth.tokens.verify(body["access_token"])
    assert claims is not None and claims.sub == client_id and claims.client_id == client_id


def test_client_id_in_the_form_must_match(server: Server) -> None:  # noqa: F811
    key = rsa_key()
    client_id = _backend_client(server, key)
    assert _request(server, assertion(key, client_id), client_id=client_id).status_code == 200
    _refused(_request(server, assertion(key, client_id), client_id="someone-else"))


def test_only_system_scopes_are_granted(server: Server) -> None:  # noqa: F811
    key = rsa_key()
    client_id = _backend_client(server, key, scopes="system/*.rs patient/*.rs launch openid")
    body = _request(server, assertion(key, client_id), scope="system/*.rs patient/*.rs openid").json()
    assert body["scope"] == "system/*.rs"
    everything = _request(server, assertion(key, client_id), scope=None).json()
    assert everything["scope"] == "system/*.rs"
    _refused(_request(server, assertion(key, client_id), scope="patient/*.rs"), "invalid_scope")


def test_jwks_url_is_fetched_and_cached(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    key = ec_key()
    url = "https://backend.example.org/.well-known/jwks.json"
    fetched: list[str] = []

    def fake_fetch(where: str) -> dict[str, Any]:
        fetched.append(where)
        return public_jwks(key)

    monkeypatch.setattr(oauth_server, "fetch_jwks", fake_fetch)
    client_id = server.client(grant_types=["client_credentials"], scopes=SCOPES, jwks_url=url)
    for _ in range(2):
        assert _request(server, assertion(key, client_id)).status_code == 200
    assert fetched == [url]


def test_jwks_url_that_cannot_be_fetched(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    def failing_fetch(where: str) -> dict[str, Any]:
        raise OSError("connection refused")

    monkeypatch.setattr(oauth_server, "fetch_jwks", failing_fetch)
    key = rsa_key()
    client_id = server.client(grant_types=["client_credentials"], scopes=SCOPES,
                              jwks_url="https://down.example.org/jwks.json")
    _refused(_request(server, assertion(key, client_id)))


def test_replayed_jti_is_refused(server: Server) -> None:  # noqa: F811
    key = rsa_key()
    client_id = _backend_client(server, key)
    token = assertion(key, client_id, jti="once-only")
    assert _request(server, token).status_code == 200
    _refused(_request(server, token))
    _refused(_request(server, assertion(key, client_id, jti="once-only")))


def test_assertion_claims_are_checked(server: Server) -> None:  # noqa: F811
    key = rsa_key()
    client_id = _backend_client(server, key)
    _refused(_request(server, assertion(key, client_id, aud="https://elsewhere.example.org/token")))
    _refused(_request(server, assertion(key, client_id, aud=TOKEN_URL.replace("/token", "/introspect"))))
    _refused(_request(server, assertion(key, client_id, exp_in=600)))  # more than five minutes ahead
    _refused(_request(server, assertion(key, client_id, exp_in=None)))
    _refused(_request(server, assertion(key, client_id, exp_in=-120)))  # expired, beyond the leeway
    _refused(_request(server, assertion(key, client_id, iss="someone-else")))
    claims = {"iss": client_id, "sub": client_id, "aud": TOKEN_URL, "exp": int(time.time()) + 60}
    no_jti = jwt.encode({"alg": "RS384", "kid": key.kid}, claims, key, algorithms=["RS384"])
    _refused(_request(server, no_jti))


def test_wrong_key_or_algorithm_is_refused(server: Server) -> None:  # noqa: F811
    key = rsa_key()
    client_id = _backend_client(server, key)
    impostor = rsa_key(kid=key.kid)  # same kid, other key
    _refused(_request(server, assertion(impostor, client_id)))
    same_key_any_alg = RSAKey.import_key({k: v for k, v in key.as_dict(private=True).items() if k != "alg"})
    _refused(_request(server, assertion(same_key_any_alg, client_id, alg="RS256", kid=key.kid)))
    _refused(_request(server, assertion(same_key_any_alg, client_id, alg="RS512", kid=key.kid)))
    _refused(_request(server, assertion(key, client_id, kid="unknown-kid")))
    ec = ec_key()
    ec_client = _backend_client(server, ec)
    _refused(_request(server, assertion(key, ec_client, kid=ec.kid)))  # an RS384 signature for an EC key
    unregistered = server.client(grant_types=["client_credentials"], scopes=SCOPES, secret="shh")
    _refused(_request(server, assertion(key, unregistered)))
    _refused(_request(server, assertion(key, "no-such-client")))
    _refused(_request(server, "not.a.jwt"))


def test_client_secret_for_symmetric_clients(server: Server) -> None:  # noqa: F811
    client_id = server.client(grant_types=["client_credentials"], scopes=SCOPES, secret="shh")
    form = {"grant_type": "client_credentials", "scope": "system/Observation.rs"}
    response = server.token(form, auth=(client_id, "shh"))
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == "system/Observation.rs"
    assert server.token({**form, "client_id": client_id, "client_secret": "shh"}).status_code == 200
    assert server.token(form, auth=(client_id, "wrong")).status_code == 401


def test_public_clients_cannot_use_client_credentials(server: Server) -> None:  # noqa: F811
    client_id = server.client(grant_types=["client_credentials"], scopes=SCOPES)
    _refused(server.token({"grant_type": "client_credentials", "client_id": client_id}))
