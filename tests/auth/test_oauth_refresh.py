"""refresh_token: rotation, replay detection, narrowing, revocation, offline and online access."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_server.auth.server import ONLINE_ACCESS_LIFETIME_S
from fhir_server.model.instant import now_ms
from tests.auth.oauth_helpers import (
    BASE,
    PASSWORD,
    Server,
    decode,
    server,  # noqa: F401 - the module-scoped server fixture
    server_jwks,
)

SCOPES = "openid fhirUser offline_access online_access patient/*.rs user/*.rs"
SECRET = "refresh-secret"


@pytest.fixture(scope="module")
def app_client(server: Server) -> str:  # noqa: F811
    return server.client(grant_types=["password", "refresh_token"], scopes=SCOPES, secret=SECRET)


def _login(srv: Server, client_id: str, scope: str, **user: Any) -> dict[str, Any]:
    account = srv.user(**user)
    response = srv.token({"grant_type": "password", "username": account.username, "password": PASSWORD,
                          "scope": scope}, auth=(client_id, SECRET))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _refresh(srv: Server, client_id: str, token: str, scope: str | None = None) -> Any:
    form = {"grant_type": "refresh_token", "refresh_token": token}
    if scope is not None:
        form["scope"] = scope
    return srv.token(form, auth=(client_id, SECRET))


def test_rotation_gives_new_tokens_and_kills_the_old(server: Server, app_client: str) -> None:  # noqa: F811
    first = _login(server, app_client, "openid fhirUser offline_access patient/*.rs",
                   fhir_user="Patient/r1", patient="r1")
    response = _refresh(server, app_client, first["refresh_token"])
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    second = response.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert second["scope"] == first["scope"] and second["patient"] == "r1"
    id_token = decode(second["id_token"], server_jwks(server))
    assert id_token["fhirUser"] == f"{BASE}/Patient/r1" and id_token["aud"] == app_client
    claims = server.auth.tokens.verify(second["access_token"])
    assert claims is not None and claims.patient == "r1" and claims.fhir_user == "Patient/r1"

    replay = _refresh(server, app_client, first["refresh_token"])
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    # The replay of a rotated token means it leaked: its successor is revoked as well.
    descendant = _refresh(server, app_client, second["refresh_token"])
    assert descendant.status_code == 400 and descendant.json()["error"] == "invalid_grant"


def test_narrower_scope_allowed_wider_refused(server: Server, app_client: str) -> None:  # noqa: F811
    first = _login(server, app_client, "offline_access patient/*.rs user/*.rs", patient="r2")
    wider = _refresh(server, app_client, first["refresh_token"], "offline_access patient/*.cruds user/*.rs")
    assert wider.status_code == 400 and wider.json()["error"] == "invalid_scope"
    unknown = _refresh(server, app_client, first["refresh_token"], "offline_access system/*.rs")
    assert unknown.status_code == 400 and unknown.json()["error"] == "invalid_scope"

    narrower = _refresh(server, app_client, first["refresh_token"], "patient/Observation.rs")
    assert narrower.status_code == 200, narrower.text  # the refusals did not burn the token
    body = narrower.json()
    assert body["scope"] == "patient/Observation.rs"
    # The new refresh token keeps the whole grant (RFC 6749 §6): it can widen back.
    back = _refresh(server, app_client, body["refresh_token"], "offline_access patient/*.rs user/*.rs")
    assert back.status_code == 200 and back.json()["scope"] == "offline_access patient/*.rs user/*.rs"


def test_revoked_refresh_token_is_refused(server: Server, app_client: str) -> None:  # noqa: F811
    first = _login(server, app_client, "offline_access user/*.rs")
    revoked = server.http.post("/oauth/revoke", data={"token": first["refresh_token"]}, auth=(app_client, SECRET))
    assert revoked.status_code == 200
    refused = _refresh(server, app_client, first["refresh_token"])
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"


def test_refresh_token_is_bound_to_its_client(server: Server, app_client: str) -> None:  # noqa: F811
    first = _login(server, app_client, "offline_access user/*.rs")
    other = server.client(grant_types=["password", "refresh_token"], scopes=SCOPES, secret=SECRET)
    stolen = _refresh(server, other, first["refresh_token"])
    assert stolen.status_code == 400 and stolen.json()["error"] == "invalid_grant"
    assert _refresh(server, app_client, first["refresh_token"]).status_code == 200
    junk = _refresh(server, app_client, "not-a-refresh-token")
    assert junk.status_code == 400 and junk.json()["error"] == "invalid_grant"
    missing = server.token({"grant_type": "refresh_token"}, auth=(app_client, SECRET))
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_request"


def test_refresh_tokens_need_offline_or_online_access(server: Server, app_client: str) -> None:  # noqa: F811
    assert "refresh_token" not in _login(server, app_client, "openid user/*.rs")
    no_grant_type = server.client(grant_types=["password"], scopes=SCOPES, secret=SECRET)
    assert "refresh_token" not in _login(server, no_grant_type, "offline_access user/*.rs")

    offline = _login(server, app_client, "offline_access user/*.rs")
    online = _login(server, app_client, "online_access user/*.rs")
    offline_record = server.store.get_refresh(offline["refresh_token"])
    online_record = server.store.get_refresh(online["refresh_token"])
    assert offline_record is not None and online_record is not None
    lifetime_ms = server.auth.tokens.refresh_lifetime_s * 1000
    assert offline_record.expires_ms > now_ms() + lifetime_ms - 60_000
    assert online_record.expires_ms <= now_ms() + ONLINE_ACCESS_LIFETIME_S * 1000

    # online_access keeps its end across rotation; offline_access slides.
    rotated = _refresh(server, app_client, online["refresh_token"]).json()
    rotated_record = server.store.get_refresh(rotated["refresh_token"])
    assert rotated_record is not None and rotated_record.expires_ms == online_record.expires_ms


def test_public_clients_refresh_with_their_client_id(server: Server) -> None:  # noqa: F811
    public = server.client(grant_types=["password", "refresh_token"], scopes=SCOPES)
    user = server.user()
    first = server.token({"grant_type": "password", "username": user.username, "password": PASSWORD,
                          "client_id": public, "scope": "offline_access user/*.rs"}).json()
    refreshed = server.token({"grant_type": "refresh_token", "refresh_token": first["refresh_token"],
                              "client_id": public})
    assert refreshed.status_code == 200, refreshed.text
