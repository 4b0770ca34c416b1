"""authorization_code with PKCE: the sign-in and consent pages, EHR and standalone launch, refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fhir_server.model.instant import now_ms
from tests.auth.oauth_helpers import (
    BASE,
    PASSWORD,
    REDIRECT,
    Server,
    authorize_params,
    consent,
    decode,
    exchange,
    get_code,
    login,
    make_server,
    parse_form,
    pkce,
    redirect_params,
    server,  # noqa: F401 - the module-scoped server fixture
    server_jwks,
    totp_now,
    wrong_totp,
)

SCOPES = ("openid fhirUser profile launch launch/patient offline_access online_access "
          "patient/*.rs user/*.rs patient/*.read")
SECRET = "confidential-secret"


@pytest.fixture(scope="module")
def public_app(server: Server) -> str:  # noqa: F811
    return server.client(grant_types=["authorization_code", "refresh_token"], scopes=SCOPES)


@pytest.fixture(scope="module")
def confidential_app(server: Server) -> str:  # noqa: F811
    return server.client(grant_types=["authorization_code", "refresh_token"], scopes=SCOPES, secret=SECRET)


def _error_redirect(response: Any, error: str) -> dict[str, str]:
    params = redirect_params(response)
    assert params["error"] == error, params
    assert "code" not in params
    return params


def test_full_flow_with_scope_narrowing_and_id_token(server: Server, public_app: str) -> None:  # noqa: F811
    user = server.user(fhir_user="Practitioner/dr-1")
    verifier, challenge = pkce()
    params = authorize_params(public_app, challenge, scope="openid fhirUser offline_access user/*.rs patient/*.rs",
                              state="af0ifjsldkj", nonce="n-0S6_WzA2Mj")

    page = server.http.get("/oauth/authorize", params=params)
    assert page.status_code == 200
    assert page.headers["x-frame-options"] == "DENY" and page.headers["cache-control"] == "no-store"
    assert f"App {public_app}" in page.text and 'name="password"' in page.text and 'name="totp"' in page.text

    wrong = server.http.post("/oauth/authorize", data={"auth_session": parse_form(page.text).hidden("auth_session"),
                                                       "username": user.username, "password": "nope"})
    assert wrong.status_code == 200 and "Wrong username, password" in wrong.text
    assert 'name="scope"' not in wrong.text

    consent_page = login(server, params, user.username)
    assert consent_page.status_code == 200
    form = parse_form(consent_page.text)
    assert form.checked("scope") == ["openid", "fhirUser", "offline_access", "user/*.rs", "patient/*.rs"]
    assert 'name="patient"' not in consent_page.text  # launch/patient was not asked for

    redirected = consent(server, consent_page, scopes=["openid", "fhirUser", "offline_access", "user/*.rs"])
    query = redirect_params(redirected)
    assert query["state"] == "af0ifjsldkj"

    response = exchange(server, public_app, query["code"], verifier)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store" and response.headers["pragma"] == "no-cache"
    body = response.json()
    assert body["scope"] == "openid fhirUser offline_access user/*.rs"
    assert body["token_type"] == "Bearer" and body["refresh_token"]
    claims = server.auth.tokens.verify(body["access_token"])
    assert claims is not None and claims.fhir_user == "Practitioner/dr-1" and claims.sub == user.username
    id_token = decode(body["id_token"], server_jwks(server))
    assert id_token["iss"] == BASE and id_token["aud"] == public_app and id_token["sub"] == user.username
    assert id_token["fhirUser"] == f"{BASE}/Practitioner/dr-1" and id_token["nonce"] == "n-0S6_WzA2Mj"


def test_authorize_by_post_and_confidential_client(server: Server, confidential_app: str) -> None:  # noqa: F811
    user = server.user()
    verifier, challenge = pkce()
    page = server.http.post("/oauth/authorize", data=authorize_params(confidential_app, challenge, scope="user/*.rs"))
    assert page.status_code == 200
    session = parse_form(page.text).hidden("auth_session")
    consent_page = server.http.post("/oauth/authorize", data={"auth_session": session, "username": user.username,
                                                              "password": PASSWORD})
    code = redirect_params(consent(server, consent_page))["code"]
    # A confidential client must authenticate, and still present its PKCE verifier.
    assert exchange(server, confidential_app, code, verifier, auth=(confidential_app, "wrong")).status_code == 401
    code = get_code(server, confidential_app, user, challenge, scope="user/*.rs")
    missing = exchange(server, confidential_app, code, None, auth=(confidential_app, SECRET))
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_request"
    code = get_code(server, confidential_app, user, challenge, scope="user/*.rs")
    ok = exchange(server, confidential_app, code, verifier, auth=(confidential_app, SECRET))
    assert ok.status_code == 200, ok.text
    assert "id_token" not in ok.json() and "refresh_token" not in ok.json()


@pytest.mark.parametrize("pkce_params", [
    {},
    {"code_challenge_method": "S256"},
    {"code_challenge": "", "code_challenge_method": "S256"},
    {"code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM", "code_challenge_method": "plain"},
    {"code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"},
    {"code_challenge": "too-short", "code_challenge_method": "S256"},
], ids=["none", "method only", "blank", "plain", "no method", "malformed"])
def test_pkce_is_required_at_the_authorization_endpoint(server: Server, public_app: str,  # noqa: F811
                                                        pkce_params: dict[str, str]) -> None:
    params = {**authorize_params(public_app, None, scope="user/*.rs", state="s-pkce"), **pkce_params}
    refused = _error_redirect(server.http.get("/oauth/authorize", params=params), "invalid_request")
    assert refused["state"] == "s-pkce"


@pytest.mark.parametrize("verifier", [None, "", "plain-text-is-not-the-verifier", "x" * 50],
                         ids=["missing", "blank", "malformed", "wrong"])
def test_bad_code_verifier_is_refused(server: Server, public_app: str, verifier: str | None) -> None:  # noqa: F811
    user = server.user()
    _, challenge = pkce()
    code = get_code(server, public_app, user, challenge, scope="user/*.rs")
    response = exchange(server, public_app, code, verifier)
    assert response.status_code == 400
    assert response.json()["error"] == ("invalid_grant" if verifier == "x" * 50 else "invalid_request")
    assert "access_token" not in response.json()


def test_plain_verifier_equal_to_the_challenge_fails(server: Server, public_app: str) -> None:  # noqa: F811
    user = server.user()
    _, challenge = pkce()
    code = get_code(server, public_app, user, challenge, scope="user/*.rs")
    response = exchange(server, public_app, code, challenge)
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


def test_code_is_single_use_and_reuse_revokes(server: Server, public_app: str) -> None:  # noqa: F811
    user = server.user()
    verifier, challenge = pkce()
    code = get_code(server, public_app, user, challenge, scope="offline_access user/*.rs")
    first = exchange(server, public_app, code, verifier)
    assert first.status_code == 200
    refresh = first.json()["refresh_token"]
    again = exchange(server, public_app, code, verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    # What the code led to is withdrawn: its refresh token no longer works.
    assert server.store.get_refresh(refresh) is None
    refreshed = server.token({"grant_type": "refresh_token", "refresh_token": refresh, "client_id": public_app})
    assert refreshed.status_code == 400 and refreshed.json()["error"] == "invalid_grant"


def test_code_bound_to_client_redirect_and_lifetime(server: Server, public_app: str) -> None:  # noqa: F811
    user = server.user()
    verifier, challenge = pkce()
    other_app = server.client(grant_types=["authorization_code"], scopes=SCOPES)
    code = get_code(server, public_app, user, challenge, scope="user/*.rs")
    stolen = exchange(server, other_app, code, verifier)
    assert stolen.status_code == 400 and stolen.json()["error"] == "invalid_grant"
    assert exchange(server, public_app, code, verifier).status_code == 200  # not burnt by the other client

    code = get_code(server, public_app, user, challenge, scope="user/*.rs")
    mismatch = exchange(server, public_app, code, verifier, redirect_uri="https://app.example.org/other")
    assert mismatch.status_code == 400 and mismatch.json()["error"] == "invalid_grant"

    server.store.save_code("expired-code", client_id=public_app, username=user.username, scope="user/*.rs",
                           expires_ms=now_ms() - 1000, redirect_uri=REDIRECT, code_challenge=challenge,
                           code_challenge_method="S256")
    expired = exchange(server, public_app, "expired-code", verifier)
    assert expired.status_code == 400 and expired.json()["error"] == "invalid_grant"
    assert server.auth.tokens.code_lifetime_s == server.auth.settings.authorization_code_lifetime


def test_unregistered_redirect_uri_is_not_followed(server: Server, public_app: str) -> None:  # noqa: F811
    _, challenge = pkce()
    params = authorize_params(public_app, challenge, scope="user/*.rs", redirect_uri="https://evil.example.com/cb")
    response = server.http.get("/oauth/authorize", params=params)
    assert response.status_code == 400 and "location" not in response.headers
    assert "invalid_request" in response.text
    unknown = server.http.get("/oauth/authorize", params=authorize_params("no-such-app", challenge, scope="x"))
    assert unknown.status_code == 400 and "invalid_client" in unknown.text


def test_aud_must_be_this_fhir_server(server: Server, public_app: str) -> None:  # noqa: F811
    _, challenge = pkce()
    for aud in ("https://other.example.org/fhir", ""):
        params = authorize_params(public_app, challenge, scope="user/*.rs", aud=aud, state="s-aud")
        refused = _error_redirect(server.http.get("/oauth/authorize", params=params), "invalid_request")
        assert refused["state"] == "s-aud"
    ok = server.http.get("/oauth/authorize", params=authorize_params(public_app, challenge, scope="user/*.rs",
                                                                     aud=BASE + "/"))
    assert ok.status_code == 200


def test_other_authorization_request_refusals(server: Server, public_app: str) -> None:  # noqa: F811
    _, challenge = pkce()
    token_type = {**authorize_params(public_app, challenge, scope="user/*.rs"), "response_type": "token"}
    _error_redirect(server.http.get("/oauth/authorize", params=token_type), "unsupported_response_type")
    unregistered = authorize_params(public_app, challenge, scope="system/*.rs")
    _error_redirect(server.http.get("/oauth/authorize", params=unregistered), "invalid_scope")
    backend_only = server.client(grant_types=["client_credentials"], scopes="system/*.rs", secret="x")
    _error_redirect(server.http.get("/oauth/authorize", params=authorize_params(backend_only, challenge,
                                                                                 scope="system/*.rs")),
                    "unauthorized_client")


def test_ehr_launch_context_reaches_the_token(server: Server, public_app: str) -> None:  # noqa: F811
    user = server.user(fhir_user="Practitioner/dr-2")
    verifier, challenge = pkce()
    launch = server.store.create_launch(expires_ms=now_ms() + 60_000, patient="pat-ehr", encounter="enc-1")
    page = login(server, authorize_params(public_app, challenge, scope="launch openid fhirUser patient/*.rs",
                                          launch=launch), user.username)
    assert 'name="patient"' not in page.text  # the EHR chose the patient
    body = exchange(server, public_app, redirect_params(consent(server, page))["code"], verifier).json()
    assert body["patient"] == "pat-ehr" and body["encounter"] == "enc-1"
    claims = server.auth.tokens.verify(body["access_token"])
    assert claims is not None and claims.patient == "pat-ehr" and claims.encounter == "enc-1"

    # Without the launch scope the app gets no context from the launch.
    page = login(server, authorize_params(public_app, challenge, scope="launch patient/*.rs", launch=launch),
                 user.username)
    body = exchange(server, public_app, redirect_params(consent(server, page, scopes=["patient/*.rs"]))["code"],
                    verifier).json()
    assert "patient" not in body

    unknown = authorize_params(public_app, challenge, scope="launch patient/*.rs", launch="no-such-launch")
    _error_redirect(server.http.get("/oauth/authorize", params=unknown), "invalid_request")


def test_standalone_launch_patient_picker(server: Server, public_app: str) -> None:  # noqa: F811
    server.put_patient("pick-1", "Picker", "Alice")
    server.put_patient("pick-2", "Chooser", "Bob")
    user = server.user(fhir_user="Practitioner/dr-3")
    verifier, challenge = pkce()
    params = authorize_params(public_app, challenge, scope="launch/patient openid fhirUser patient/*.rs")
    page = login(server, params, user.username)
    assert "Alice Picker" in page.text and "Bob Chooser" in page.text
    assert set(parse_form(page.text).values("patient")) >= {"pick-1", "pick-2"}

    found = consent(server, page, action="search", patient_query="Chooser")
    assert found.status_code == 200 and "Bob Chooser" in found.text and "Alice Picker" not in found.text

    none_chosen = consent(server, page)
    assert none_chosen.status_code == 400 and "Choose a patient" in none_chosen.text
    missing = consent(server, page, patient_id="does-not-exist")
    assert missing.status_code == 400 and "no Patient with id" in missing.text

    body = exchange(server, public_app, redirect_params(consent(server, page, patient="pick-2"))["code"],
                    verifier).json()
    assert body["patient"] == "pick-2"
    page = login(server, params, user.username)
    body = exchange(server, public_app,
                    redirect_params(consent(server, page, patient_id="Patient/pick-1"))["code"], verifier).json()
    assert body["patient"] == "pick-1"


def test_patient_user_gets_their_own_patient_without_a_picker(server: Server, public_app: str) -> None:  # noqa: F811
    user = server.user(fhir_user="Patient/self-1", patient="self-1")
    verifier, challenge = pkce()
    page = login(server, authorize_params(public_app, challenge, scope="launch/patient patient/*.rs"), user.username)
    assert 'name="patient"' not in page.text
    body = exchange(server, public_app, redirect_params(consent(server, page))["code"], verifier).json()
    assert body["patient"] == "self-1"


def test_totp_on_the_sign_in_page(server: Server, public_app: str) -> None:  # noqa: F811
    user = server.user(totp=True)
    _, challenge = pkce()
    params = authorize_params(public_app, challenge, scope="user/*.rs")
    for code in ("", wrong_totp(user)):
        page = login(server, params, user.username, totp=code)
        assert "Wrong username, password or one-time code" in page.text and 'name="scope"' not in page.text
    page = login(server, params, user.username, totp=totp_now(user))
    assert 'name="scope"' in page.text


def test_deny_and_empty_consent(server: Server, public_app: str) -> None:  # noqa: F811
    user = server.user()
    _, challenge = pkce()
    page = login(server, authorize_params(public_app, challenge, scope="user/*.rs", state="s-deny"), user.username)
    nothing = consent(server, page, scopes=[])
    assert nothing.status_code == 400 and "at least one permission" in nothing.text
    denied = _error_redirect(consent(server, page, action="deny"), "access_denied")
    assert denied["state"] == "s-deny"


def test_tampered_or_foreign_page_state_is_refused(server: Server, public_app: str) -> None:  # noqa: F811
    user = server.user()
    _, challenge = pkce()
    params = authorize_params(public_app, challenge, scope="user/*.rs")
    page = server.http.get("/oauth/authorize", params=params)
    session = parse_form(page.text).hidden("auth_session")
    payload, mac = session.split(".")
    forged = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB") + "." + mac
    refused = server.http.post("/oauth/authorize", data={"auth_session": forged, "username": user.username,
                                                         "password": PASSWORD})
    assert refused.status_code == 400 and "invalid_request" in refused.text
    # A sign-in page's state cannot be posted as a consent (it names no signed-in user).
    skipped = server.http.post("/oauth/authorize", data={"auth_session": session, "action": "approve",
                                                         "scope": "user/*.rs"})
    assert skipped.status_code == 200 and "Wrong username" in skipped.text and "location" not in skipped.headers


def test_sign_in_attempts_are_rate_limited(tmp_path: Path) -> None:
    with make_server(tmp_path, token_rate_limit_per_minute=2) as srv:
        app = srv.client(grant_types=["authorization_code"], scopes=SCOPES)
        user = srv.user()
        _, challenge = pkce()
        params = authorize_params(app, challenge, scope="user/*.rs")
        for _ in range(2):
            assert "Wrong username" in login(srv, params, user.username, "guess").text
        limited = login(srv, params, user.username)  # even the right password waits now
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        assert 'name="scope"' not in limited.text
