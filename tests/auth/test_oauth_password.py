"""The password grant: users, TOTP, client authentication, scope narrowing, errors, rate limit, audit."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import httpx
import pytest

from fhir_server.auth.ratelimit import RateLimiter
from tests.auth.oauth_helpers import (
    BASE,
    PASSWORD,
    Server,
    decode,
    make_server,
    new_id,
    server,  # noqa: F401 - the module-scoped server fixture
    server_jwks,
    totp_now,
    wrong_totp,
)

SCOPES = "openid fhirUser offline_access launch/patient patient/*.rs user/*.rs"
SECRET = "s3cret-client"


@pytest.fixture(scope="module")
def app_client(server: Server) -> str:  # noqa: F811
    return server.client(grant_types=["password", "refresh_token"], scopes=SCOPES, secret=SECRET)


def _password(srv: Server, client_id: str, username: str, password: str = PASSWORD, **extra: str) -> httpx.Response:
    return srv.token({"grant_type": "password", "username": username, "password": password, **extra},
                     auth=(client_id, SECRET))


def test_right_password_gets_tokens_with_the_users_context(server: Server, app_client: str) -> None:  # noqa: F811
    user = server.user(fhir_user="Patient/p7", patient="p7")
    response = _password(server, app_client, user.username, scope="openid fhirUser offline_access patient/*.rs")
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == server.auth.tokens.access_lifetime_s
    assert body["scope"] == "openid fhirUser offline_access patient/*.rs"
    assert body["patient"] == "p7" and body["need_patient_banner"] is True
    assert body["refresh_token"]
    claims = server.auth.tokens.verify(body["access_token"])
    assert claims is not None
    assert (claims.sub, claims.client_id, claims.patient, claims.fhir_user) == (user.username, app_client, "p7",
                                                                               "Patient/p7")
    id_token = decode(body["id_token"], server_jwks(server))
    assert id_token["fhirUser"] == f"{BASE}/Patient/p7" and id_token["aud"] == app_client and id_token["sub"] == user.username


def test_scopes_are_narrowed_to_the_clients_registration(server: Server, app_client: str) -> None:  # noqa: F811
    user = server.user()
    body = _password(server, app_client, user.username, scope="patient/*.cruds system/*.rs user/Patient.rs").json()
    # cruds is cut down to the registered rs; system/ is not registered at all.
    assert body["scope"] == "patient/*.rs user/Patient.rs"
    assert "refresh_token" not in body and "id_token" not in body  # neither offline_access nor openid


def test_no_scope_requested_gives_the_registered_scopes(server: Server, app_client: str) -> None:  # noqa: F811
    user = server.user()
    body = _password(server, app_client, user.username).json()
    assert set(body["scope"].split()) == set(SCOPES.split())


def test_only_unregistered_or_invalid_scopes_are_refused(server: Server, app_client: str) -> None:  # noqa: F811
    user = server.user()
    response = _password(server, app_client, user.username, scope="system/*.rs")
    assert response.status_code == 400 and response.json()["error"] == "invalid_scope"
    response = _password(server, app_client, user.username, scope="patient/Nonsense.rs")
    assert response.status_code == 400 and response.json()["error"] == "invalid_scope"


@pytest.mark.parametrize("case", ["wrong password", "unknown user"])
def test_wrong_password_or_unknown_user_is_invalid_grant(server: Server, app_client: str, case: str) -> None:  # noqa: F811
    user = server.user()
    username, password = (user.username, "nope") if case == "wrong password" else ("nobody-" + new_id("u"), PASSWORD)
    response = _password(server, app_client, username, password)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"
    assert response.headers["cache-control"] == "no-store"


def test_totp_is_required_when_enrolled(server: Server, app_client: str) -> None:  # noqa: F811
    user = server.user(totp=True)
    missing = _password(server, app_client, user.username)
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_grant"
    wrong = _password(server, app_client, user.username, totp=wrong_totp(user))
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    wrong_password = _password(server, app_client, user.username, "nope", totp=totp_now(user))
    assert wrong_password.status_code == 400 and wrong_password.json()["error"] == "invalid_grant"
    right = _password(server, app_client, user.username, totp=totp_now(user))
    assert right.status_code == 200, right.text


def test_client_secret_post_and_public_clients(server: Server, app_client: str) -> None:  # noqa: F811
    user = server.user()
    form = {"grant_type": "password", "username": user.username, "password": PASSWORD}
    posted = server.token({**form, "client_id": app_client, "client_secret": SECRET})
    assert posted.status_code == 200, posted.text
    public = server.client(grant_types=["password"], scopes="user/*.rs")
    response = server.token({**form, "client_id": public})
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == "user/*.rs"


def test_client_authentication_failures(server: Server, app_client: str) -> None:  # noqa: F811
    user = server.user()
    form = {"grant_type": "password", "username": user.username, "password": PASSWORD}
    wrong_secret = server.token(form, auth=(app_client, "wrong"))
    assert wrong_secret.status_code == 401
    assert wrong_secret.json()["error"] == "invalid_client"
    assert wrong_secret.headers["www-authenticate"].startswith("Basic ")
    # A confidential client naming itself without its secret is not let through as a public one.
    no_secret = server.token({**form, "client_id": app_client})
    assert no_secret.status_code == 401 and no_secret.json()["error"] == "invalid_client"
    unknown = server.token(form, auth=("no-such-client", "x"))
    assert unknown.status_code == 401 and unknown.json()["error"] == "invalid_client"
    anonymous = server.token(form)
    assert anonymous.status_code in (400, 401) and anonymous.json()["error"] == "invalid_client"


def test_grant_type_not_registered_for_the_client(server: Server) -> None:  # noqa: F811
    client_id = server.client(grant_types=["client_credentials"], scopes="system/*.rs", secret=SECRET)
    user = server.user()
    response = _password(server, client_id, user.username)
    assert response.status_code == 400 and response.json()["error"] == "unauthorized_client"


def test_malformed_requests(server: Server, app_client: str) -> None:  # noqa: F811
    unsupported = server.token({"grant_type": "urn:example:magic"}, auth=(app_client, SECRET))
    assert unsupported.status_code == 400 and unsupported.json()["error"] == "unsupported_grant_type"
    missing = server.token({"grant_type": "password", "username": "x"}, auth=(app_client, SECRET))
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_request"
    repeated = server.http.post("/oauth/token", content="grant_type=password&username=a&username=b&password=p",
                                headers={"Content-Type": "application/x-www-form-urlencoded"},
                                auth=(app_client, SECRET))
    assert repeated.status_code == 400 and repeated.json()["error"] == "invalid_request"


def test_audit_log_records_grants_and_refusals_without_secrets(server: Server, app_client: str,  # noqa: F811
                                                               caplog: pytest.LogCaptureFixture) -> None:
    user = server.user()
    with caplog.at_level(logging.INFO, logger="fhir_server.auth.audit"):
        ok = _password(server, app_client, user.username, scope="user/*.rs")
        _password(server, app_client, user.username, "wrong-password-123")
    records = [r for r in caplog.records if r.name == "fhir_server.auth.audit"]
    issued = next(r for r in records if r.audit["event"] == "token.issued")  # type: ignore[attr-defined]
    assert issued.audit["client_id"] == app_client and issued.audit["username"] == user.username  # type: ignore[attr-defined]
    assert issued.audit["scopes"] == "user/*.rs" and issued.audit["outcome"] == "success"  # type: ignore[attr-defined]
    refused = next(r for r in records if r.audit["event"] == "token.refused")  # type: ignore[attr-defined]
    assert refused.audit["outcome"] == "invalid_grant"  # type: ignore[attr-defined]
    text = " ".join(r.getMessage() for r in records)
    for secret in (PASSWORD, "wrong-password-123", SECRET, ok.json()["access_token"]):
        assert secret not in text


def test_rate_limit_per_client_and_per_ip(tmp_path: Path) -> None:
    with make_server(tmp_path, token_rate_limit_per_minute=2) as srv:
        first = srv.client(grant_types=["password"], scopes="user/*.rs", secret=SECRET)
        second = srv.client(grant_types=["password"], scopes="user/*.rs", secret=SECRET)
        user = srv.user()
        assert _password(srv, first, user.username).status_code == 200
        assert _password(srv, first, user.username, "wrong").status_code == 400  # refusals count too
        limited = _password(srv, first, user.username)
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert limited.headers["cache-control"] == "no-store"
        # Another client from the same address has used up the address's share as well.
        assert _password(srv, second, user.username).status_code == 429
        # The limit keys on what the request claims, so a made-up Basic user counts against itself.
        basic = base64.b64encode(b"made-up:x").decode()
        made_up = srv.http.post("/oauth/token", data={"grant_type": "password"},
                                headers={"Authorization": f"Basic {basic}"})
        assert made_up.status_code == 429


def test_sliding_window() -> None:
    now = [1000.0]
    limiter = RateLimiter(3, 60, clock=lambda: now[0])
    assert [limiter.hit("a") for _ in range(3)] == [None, None, None]
    assert limiter.hit("a") == 60
    assert limiter.hit("b") is None  # keys are independent
    now[0] += 30
    assert limiter.hit("a") == 30  # refused requests are not counted
    now[0] += 30.5
    assert limiter.hit("a") is None  # the first three have left the window
    assert limiter.hit("a", "c") is None and limiter.hit("a", "c") is None
    assert limiter.hit("a", "c") is not None and limiter.hit("c") is None  # refused as a pair, c not counted
    assert RateLimiter(0).hit("a") is None and not RateLimiter(0).enabled
