"""Token introspection (RFC 7662) and revocation (RFC 7009)."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from joserfc import jwt

from tests.auth.oauth_helpers import (
    BASE,
    PASSWORD,
    Server,
    assertion,
    assertion_form,
    public_jwks,
    rsa_key,
    server,  # noqa: F401 - the module-scoped server fixture
)

SCOPES = "openid fhirUser offline_access patient/*.rs user/*.rs"
SECRET = "introspect-secret"


@pytest.fixture(scope="module")
def app_client(server: Server) -> str:  # noqa: F811
    return server.client(grant_types=["password", "refresh_token"], scopes=SCOPES, secret=SECRET)


@pytest.fixture(scope="module")
def tokens(server: Server, app_client: str) -> dict[str, Any]:  # noqa: F811
    return _login(server, app_client)


def _login(srv: Server, client_id: str) -> dict[str, Any]:
    user = srv.user(fhir_user="Patient/i1", patient="i1")
    response = srv.token({"grant_type": "password", "username": user.username, "password": PASSWORD,
                          "scope": "fhirUser offline_access patient/*.rs"}, auth=(client_id, SECRET))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    body["username"] = user.username
    return body


def _payload(token: str) -> dict[str, Any]:
    segment = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    return claims


def _introspect(srv: Server, token: str, auth: tuple[str, str] | None = None, **extra: Any) -> Any:
    return srv.http.post("/oauth/introspect", data={"token": token}, auth=auth, **extra)


def test_access_token_introspection(server: Server, app_client: str, tokens: dict[str, Any]) -> None:  # noqa: F811
    response = _introspect(server, tokens["access_token"], (app_client, SECRET))
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["active"] is True
    assert body["scope"] == "fhirUser offline_access patient/*.rs"
    assert body["client_id"] == app_client
    assert body["sub"] == tokens["username"] and body["username"] == tokens["username"]
    assert body["token_type"] == "Bearer" and body["iss"] == BASE and body["aud"] == BASE
    assert body["patient"] == "i1" and body["fhirUser"] == "Patient/i1"
    assert body["exp"] > time.time() and body["iat"] <= time.time()


def test_refresh_token_introspection(server: Server, app_client: str, tokens: dict[str, Any]) -> None:  # noqa: F811
    body = _introspect(server, tokens["refresh_token"], (app_client, SECRET)).json()
    assert body["active"] is True and body["token_type"] == "refresh_token"
    assert body["client_id"] == app_client and body["sub"] == tokens["username"] and body["patient"] == "i1"
    hinted = server.http.post("/oauth/introspect", data={"token": tokens["refresh_token"],
                                                         "token_type_hint": "refresh_token"}, auth=(app_client, SECRET))
    assert hinted.json()["active"] is True


def test_bearer_and_private_key_jwt_callers(server: Server, tokens: dict[str, Any]) -> None:  # noqa: F811
    bearer = _introspect(server, tokens["access_token"], headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert bearer.status_code == 200 and bearer.json()["active"] is True
    key = rsa_key()
    backend = server.client(grant_types=["client_credentials"], scopes="system/*.rs", jwks=public_jwks(key))
    signed = server.http.post("/oauth/introspect", data={"token": tokens["access_token"],
                                                         **assertion_form(assertion(key, backend))})
    assert signed.status_code == 200 and signed.json()["active"] is True


def test_unauthenticated_callers_are_refused(server: Server, tokens: dict[str, Any]) -> None:  # noqa: F811
    anonymous = _introspect(server, tokens["access_token"])
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "invalid_client"
    public = server.client(grant_types=["password"], scopes="user/*.rs")
    as_public = server.http.post("/oauth/introspect", data={"token": tokens["access_token"], "client_id": public})
    assert as_public.status_code == 401
    bad_bearer = _introspect(server, tokens["access_token"], headers={"Authorization": "Bearer not-a-token"})
    assert bad_bearer.status_code == 401
    no_token = server.http.post("/oauth/introspect", data={}, headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert no_token.status_code == 400 and no_token.json()["error"] == "invalid_request"


def test_inactive_tokens(server: Server, app_client: str) -> None:  # noqa: F811
    auth = (app_client, SECRET)
    assert _introspect(server, "unknown-token", auth).json() == {"active": False}
    # An access token past its exp, signed by this server: inactive, even within the verifier's leeway.
    kid, key = server.auth.keyring.signing_key()
    now = int(time.time())
    for exp in (now - 5, now - 3600):
        claims = {"iss": BASE, "aud": BASE, "sub": "u", "client_id": app_client, "scope": "user/*.rs",
                  "jti": f"expired-{exp}", "iat": exp - 60, "exp": exp}
        expired = jwt.encode({"alg": "RS256", "kid": kid, "typ": "at+jwt"}, claims, key, algorithms=["RS256"])
        assert _introspect(server, expired, auth).json() == {"active": False}


def test_revoked_access_token(server: Server, app_client: str) -> None:  # noqa: F811
    issued = _login(server, app_client)
    auth = (app_client, SECRET)
    response = server.http.post("/oauth/revoke", data={"token": issued["access_token"],
                                                       "token_type_hint": "access_token"}, auth=auth)
    assert response.status_code == 200
    assert _introspect(server, issued["access_token"], auth).json() == {"active": False}
    assert server.auth.tokens.verify(issued["access_token"]) is None
    assert server.store.is_revoked(_payload(issued["access_token"])["jti"])  # shared with every worker through the database
    # The refresh token of the same login is a separate credential and stays usable.
    assert _introspect(server, issued["refresh_token"], auth).json()["active"] is True


def test_revoked_refresh_token(server: Server, app_client: str) -> None:  # noqa: F811
    issued = _login(server, app_client)
    auth = (app_client, SECRET)
    assert server.http.post("/oauth/revoke", data={"token": issued["refresh_token"]}, auth=auth).status_code == 200
    assert _introspect(server, issued["refresh_token"], auth).json() == {"active": False}
    again = server.http.post("/oauth/revoke", data={"token": issued["refresh_token"]}, auth=auth)
    assert again.status_code == 200


def test_revocation_rules(server: Server, app_client: str) -> None:  # noqa: F811
    auth = (app_client, SECRET)
    unknown = server.http.post("/oauth/revoke", data={"token": "never-issued"}, auth=auth)
    assert unknown.status_code == 200
    assert unknown.headers["cache-control"] == "no-store"
    issued = _login(server, app_client)
    anonymous = server.http.post("/oauth/revoke", data={"token": issued["access_token"]})
    assert anonymous.status_code in (400, 401) and anonymous.json()["error"] == "invalid_client"
    other = server.client(grant_types=["password"], scopes=SCOPES, secret=SECRET)
    foreign = server.http.post("/oauth/revoke", data={"token": issued["access_token"]}, auth=(other, SECRET))
    assert foreign.status_code == 400  # not its token to revoke
    assert server.auth.tokens.verify(issued["access_token"]) is not None
    public = server.client(grant_types=["password", "refresh_token"], scopes=SCOPES)
    user = server.user()
    mine = server.token({"grant_type": "password", "username": user.username, "password": PASSWORD,
                         "client_id": public, "scope": "offline_access user/*.rs"}).json()
    by_public = server.http.post("/oauth/revoke", data={"token": mine["refresh_token"], "client_id": public})
    assert by_public.status_code == 200
    assert server.store.get_refresh(mine["refresh_token"]) is None
