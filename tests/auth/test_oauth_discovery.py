"""Discovery documents and the JWKS: what SMART and OpenID Connect clients read before anything else."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import KeySet

from fhir_server.app import create_app
from fhir_server.config import Settings
from tests.auth.oauth_helpers import BASE, Server, server  # noqa: F401 - the module-scoped server fixture

ROOT = "http://testserver"


def test_smart_configuration(server: Server) -> None:  # noqa: F811
    response = server.http.get("/fhir/.well-known/smart-configuration")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    doc = response.json()
    assert doc["issuer"] == BASE
    assert doc["jwks_uri"] == f"{ROOT}/oauth/jwks"
    assert doc["authorization_endpoint"] == f"{ROOT}/oauth/authorize"
    assert doc["token_endpoint"] == f"{ROOT}/oauth/token"
    assert doc["introspection_endpoint"] == f"{ROOT}/oauth/introspect"
    assert doc["revocation_endpoint"] == f"{ROOT}/oauth/revoke"
    assert doc["token_endpoint_auth_methods_supported"] == ["client_secret_basic", "client_secret_post",
                                                            "private_key_jwt"]
    assert doc["token_endpoint_auth_signing_alg_values_supported"] == ["RS384", "ES384"]
    assert set(doc["grant_types_supported"]) == {"authorization_code", "client_credentials", "password",
                                                 "refresh_token"}
    assert doc["response_types_supported"] == ["code"]
    assert doc["code_challenge_methods_supported"] == ["S256"]
    for scope in ("openid", "fhirUser", "launch", "launch/patient", "offline_access", "patient/*.rs",
                  "user/*.rs", "system/*.rs", "patient/*.read"):
        assert scope in doc["scopes_supported"]
    assert set(doc["capabilities"]) >= {
        "launch-ehr", "launch-standalone", "client-public", "client-confidential-symmetric",
        "client-confidential-asymmetric", "context-ehr-patient", "context-standalone-patient",
        "sso-openid-connect", "permission-offline", "permission-patient", "permission-user", "permission-v1",
        "permission-v2", "authorize-post",
    }


def test_discovery_needs_no_token_and_allows_browsers(server: Server) -> None:  # noqa: F811
    response = server.http.get("/fhir/.well-known/smart-configuration", headers={"Authorization": "Bearer junk"})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    preflight = server.http.options("/oauth/token")
    assert preflight.status_code == 204
    assert "Authorization" in preflight.headers["access-control-allow-headers"]


def test_openid_configuration_at_root_and_under_the_issuer(server: Server) -> None:  # noqa: F811
    for path in ("/.well-known/openid-configuration", "/fhir/.well-known/openid-configuration"):
        doc = server.http.get(path).json()
        assert doc["issuer"] == BASE
        assert doc["jwks_uri"] == f"{ROOT}/oauth/jwks"
        assert doc["authorization_endpoint"] == f"{ROOT}/oauth/authorize"
        assert doc["token_endpoint"] == f"{ROOT}/oauth/token"
        assert doc["response_types_supported"] == ["code"]
        assert doc["subject_types_supported"] == ["public"]
        assert doc["id_token_signing_alg_values_supported"] == ["RS256"]
        assert "openid" in doc["scopes_supported"]
        assert "fhirUser" in doc["claims_supported"]


def test_jwks_verifies_the_servers_tokens(server: Server) -> None:  # noqa: F811
    body = server.http.get("/oauth/jwks").json()
    assert body == server.auth.keyring.jwks()
    assert all("d" not in key and key["alg"] == "RS256" for key in body["keys"])
    token, _ = server.auth.tokens.issue_access(client_id="c", sub="c", scope="system/*.rs")
    claims = jwt.decode(token, KeySet.import_key_set(body), algorithms=["RS256"]).claims
    assert claims["scope"] == "system/*.rs"


def test_no_oauth_endpoints_when_auth_is_off(tmp_path: Path) -> None:
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path}/off.db", base_url=BASE, auth="off"))
    with TestClient(app) as http:
        assert http.post("/oauth/token", data={"grant_type": "password"}).status_code == 404
        assert http.get("/fhir/.well-known/smart-configuration").status_code == 404
