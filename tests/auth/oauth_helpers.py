"""Shared pieces of the OAuth endpoint tests: a SMART-mode app, clients, keys, the authorize pages."""

from __future__ import annotations

import base64
import hashlib
import itertools
import secrets
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pyotp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey

from fhir_server.app import ServerApp, create_app
from fhir_server.auth.services import AuthServices
from fhir_server.auth.store import AuthStore, UserRecord
from fhir_server.config import Settings
from fhir_server.interactions.common import stamp
from fhir_server.storage.base import WriteRequest

BASE = "http://testserver/fhir"
TOKEN_URL = "http://testserver/oauth/token"
REDIRECT = "https://app.example.org/callback"
PASSWORD = "correct horse battery staple"

_ids = itertools.count(1)


def new_id(prefix: str) -> str:
    """Ids unique within a test session: tests share one server per module."""
    return f"{prefix}-{next(_ids)}"


@dataclass
class Server:
    app: ServerApp
    http: TestClient

    @property
    def auth(self) -> AuthServices:
        assert self.app.ctx.auth is not None
        return self.app.ctx.auth

    @property
    def store(self) -> AuthStore:
        return AuthStore(self.auth.store.engine)

    def client(self, *, grant_types: Sequence[str], scopes: str, secret: str | None = None,
               redirect_uris: Sequence[str] = (REDIRECT,), jwks: dict[str, Any] | None = None,
               jwks_url: str | None = None, client_id: str | None = None) -> str:
        client_id = client_id or new_id("client")
        self.store.add_client(client_id, grant_types=grant_types, scopes=scopes, secret=secret,
                              redirect_uris=redirect_uris, jwks=jwks, jwks_url=jwks_url, name=f"App {client_id}")
        return client_id

    def user(self, *, fhir_user: str | None = None, patient: str | None = None, totp: bool = False) -> UserRecord:
        return self.store.add_user(new_id("user"), PASSWORD, fhir_user=fhir_user, patient=patient, totp=totp)

    def token(self, data: dict[str, str], auth: tuple[str, str] | None = None) -> httpx.Response:
        return self.http.post("/oauth/token", data=data, auth=auth)

    def put_patient(self, patient_id: str, family: str, given: str) -> None:
        resource = {"resourceType": "Patient", "id": patient_id, "name": [{"family": family, "given": [given]}]}
        self.app.ctx.backend.update(WriteRequest("Patient", resource, id=patient_id), stamp)


@contextmanager
def make_server(path: Path, **settings: Any) -> Iterator[Server]:
    options: dict[str, Any] = {"token_rate_limit_per_minute": 0, **settings}
    app = create_app(Settings(database_url=f"sqlite:///{path}/auth.db", base_url=BASE, auth="smart", **options))
    with TestClient(app, follow_redirects=False) as http:
        yield Server(app, http)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with make_server(tmp_path_factory.mktemp("oauth")) as srv:
        yield srv


# -- keys and assertions -------------------------------------------------------------------------
def rsa_key(kid: str | None = None) -> RSAKey:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return RSAKey.import_key(pem, {"kid": kid or new_id("rsa"), "alg": "RS384", "use": "sig"})


def ec_key(kid: str | None = None) -> ECKey:
    private = ec.generate_private_key(ec.SECP384R1())
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return ECKey.import_key(pem, {"kid": kid or new_id("ec"), "alg": "ES384", "use": "sig"})


def public_jwks(*keys: RSAKey | ECKey) -> dict[str, Any]:
    return dict(KeySet(list(keys)).as_dict(private=False))


def assertion(key: RSAKey | ECKey, client_id: str, *, alg: str | None = None, aud: str = TOKEN_URL,
              exp_in: int | None = 240, jti: str | None = None, iss: str | None = None,
              kid: str | None = None) -> str:
    alg = alg or ("RS384" if isinstance(key, RSAKey) else "ES384")
    now = int(time.time())
    claims: dict[str, Any] = {"iss": iss or client_id, "sub": client_id, "aud": aud,
                              "jti": jti or secrets.token_urlsafe(12), "iat": now}
    if exp_in is not None:
        claims["exp"] = now + exp_in
    header = {"alg": alg, "kid": kid or key.kid, "typ": "JWT"}
    return jwt.encode(header, claims, key, algorithms=[alg])


def assertion_form(token: str, **extra: str) -> dict[str, str]:
    return {"client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": token, **extra}


def server_jwks(srv: Server) -> KeySet:
    return KeySet.import_key_set(srv.http.get("/oauth/jwks").json())


def decode(token: str, keys: KeySet) -> dict[str, Any]:
    return dict(jwt.decode(token, keys, algorithms=["RS256"]).claims)


# -- PKCE and the authorize pages ----------------------------------------------------------------
def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


@dataclass
class Input:
    name: str
    type: str
    value: str
    checked: bool


@dataclass
class Form:
    inputs: list[Input] = field(default_factory=list)

    def hidden(self, name: str) -> str:
        return next(i.value for i in self.inputs if i.name == name and i.type == "hidden")

    def values(self, name: str) -> list[str]:
        return [i.value for i in self.inputs if i.name == name]

    def checked(self, name: str) -> list[str]:
        return [i.value for i in self.inputs if i.name == name and i.checked]


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.form = Form()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "input":
            return
        a = dict(attrs)
        self.form.inputs.append(Input(a.get("name") or "", a.get("type") or "text", a.get("value") or "",
                                      "checked" in a))


def parse_form(html: str) -> Form:
    parser = _FormParser()
    parser.feed(html)
    return parser.form


def authorize_params(client_id: str, challenge: str | None, *, scope: str, state: str = "st-1",
                     redirect_uri: str = REDIRECT, aud: str = BASE, **extra: str) -> dict[str, str]:
    params = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri, "scope": scope,
              "state": state, "aud": aud, **extra}
    if challenge is not None:
        params.update(code_challenge=challenge, code_challenge_method="S256")
    return params


def login(srv: Server, params: dict[str, str], username: str, password: str = PASSWORD,
          totp: str = "") -> httpx.Response:
    """GET the authorize page and sign in: the consent page (or the refusal)."""
    page = srv.http.get("/oauth/authorize", params=params)
    assert page.status_code == 200, page.text
    session = parse_form(page.text).hidden("auth_session")
    return srv.http.post("/oauth/authorize", data={"auth_session": session, "username": username,
                                                   "password": password, "totp": totp, "action": "login"})


def consent(srv: Server, page: httpx.Response, *, scopes: Sequence[str] | None = None, action: str = "approve",
            **fields: str) -> httpx.Response:
    """Post the consent page back; scopes None keeps every box as it was ticked."""
    form = parse_form(page.text)
    data: dict[str, Any] = {"auth_session": form.hidden("auth_session"), "action": action,
                            "scope": list(form.checked("scope") if scopes is None else scopes), **fields}
    return srv.http.post("/oauth/authorize", data=data)


def redirect_params(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(REDIRECT)
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def get_code(srv: Server, client_id: str, user: UserRecord, challenge: str, *, scope: str,
             scopes: Sequence[str] | None = None, **extra: str) -> str:
    """The whole browser leg: authorize, sign in, consent; the code from the redirect."""
    page = login(srv, authorize_params(client_id, challenge, scope=scope, **extra), user.username)
    assert page.status_code == 200, page.text
    params = redirect_params(consent(srv, page, scopes=scopes))
    assert params["state"] == extra.get("state", "st-1")
    return params["code"]


def exchange(srv: Server, client_id: str, code: str, verifier: str | None, *,
             redirect_uri: str = REDIRECT, auth: tuple[str, str] | None = None) -> httpx.Response:
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
    if auth is None:
        data["client_id"] = client_id
    if verifier is not None:
        data["code_verifier"] = verifier
    return srv.token(data, auth)


def totp_now(user: UserRecord) -> str:
    assert user.totp_secret is not None
    return pyotp.TOTP(user.totp_secret).now()


def wrong_totp(user: UserRecord) -> str:
    right = {pyotp.TOTP(user.totp_secret or "").at(time.time() + d) for d in (-30, 0, 30)}
    return next(c for c in (f"{n:06d}" for n in range(1_000_000)) if c not in right)
