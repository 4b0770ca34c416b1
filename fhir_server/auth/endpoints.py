"""HTTP endpoints of the OAuth 2 / SMART on FHIR authorization server (FHIR_AUTH=smart).

- ``GET  /fhir/.well-known/smart-configuration``, ``GET /.well-known/openid-configuration`` (also
  under /fhir, where OpenID discovery looks for it given our issuer), ``GET /oauth/jwks``;
- ``POST /oauth/token``: authorization_code (PKCE S256 required), client_credentials, password,
  refresh_token; rate limited per client id and per client IP (see ratelimit.py: per process);
- ``GET|POST /oauth/authorize``: sign-in page, consent page (scopes as checkboxes, patient
  picker), then the redirect with the code.  The pages keep no server-side session: their state is
  a signed hidden field, so any worker can serve any step;
- ``POST /oauth/introspect`` (RFC 7662) and ``POST /oauth/revoke`` (RFC 7009).

Each handler reads the request on the event loop and hands it to the synchronous Authlib server
(server.py) in a worker thread: every step may query the database or run argon2.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
import time
from typing import Any

import orjson
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749.util import extract_basic_authorization
from fastapi import APIRouter, HTTPException, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response

from fhir_server.auth import pages
from fhir_server.auth.keys import CLIENT_ASSERTION_ALGS
from fhir_server.auth.ratelimit import RateLimiter
from fhir_server.auth.scopes import ScopeSet, parse_scopes
from fhir_server.auth.server import (
    CONFIDENTIAL_AUTH_METHODS,
    FormRequest,
    LaunchContext,
    RequestData,
    SmartAuthorizationServer,
    audit,
)
from fhir_server.auth.store import UserRecord
from fhir_server.auth.urls import authorize_url, introspect_url, issuer, jwks_url, revoke_url, token_url
from fhir_server.interactions.common import Context
from fhir_server.search.parse import parse_search

log = logging.getLogger(__name__)

FHIR_PREFIX = "/fhir"  # where ServerApp mounts the FHIR API (its /.well-known/ comes here)
GRANT_TYPES = ["authorization_code", "client_credentials", "password", "refresh_token"]
SCOPES_SUPPORTED = [
    "openid", "fhirUser", "profile", "launch", "launch/patient", "offline_access", "online_access",
    *(f"{level}/*.{access}" for level in ("patient", "user", "system") for access in ("cruds", "rs")),
    *(f"{level}/*.{access}" for level in ("patient", "user", "system") for access in ("read", "write", "*")),
]
CAPABILITIES = [
    "launch-ehr", "launch-standalone", "client-public", "client-confidential-symmetric",
    "client-confidential-asymmetric", "context-ehr-patient", "context-ehr-encounter", "context-standalone-patient",
    "sso-openid-connect", "permission-offline", "permission-online", "permission-patient", "permission-user",
    "permission-v1", "permission-v2", "authorize-post",
]
PATIENT_PICKER_SIZE = 20
_PATIENT_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_CORS = {"Access-Control-Allow-Origin": "*"}
_CORS_PREFLIGHT = {
    **_CORS, "Access-Control-Allow-Methods": "POST, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type", "Access-Control-Max-Age": "600",
}
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def smart_configuration(base: str) -> dict[str, Any]:
    """SMART App Launch's discovery document (/.well-known/smart-configuration)."""
    return {
        "issuer": issuer(base),
        "jwks_uri": jwks_url(base),
        "authorization_endpoint": authorize_url(base),
        "token_endpoint": token_url(base),
        "introspection_endpoint": introspect_url(base),
        "revocation_endpoint": revoke_url(base),
        "token_endpoint_auth_methods_supported": list(CONFIDENTIAL_AUTH_METHODS),
        "token_endpoint_auth_signing_alg_values_supported": list(CLIENT_ASSERTION_ALGS),
        "introspection_endpoint_auth_methods_supported": list(CONFIDENTIAL_AUTH_METHODS),
        "revocation_endpoint_auth_methods_supported": [*CONFIDENTIAL_AUTH_METHODS, "none"],
        "grant_types_supported": list(GRANT_TYPES),
        "scopes_supported": list(SCOPES_SUPPORTED),
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "capabilities": list(CAPABILITIES),
    }


def openid_configuration(base: str) -> dict[str, Any]:
    """OpenID Connect discovery: what a relying party needs to verify our id_tokens."""
    return {
        "issuer": issuer(base),
        "jwks_uri": jwks_url(base),
        "authorization_endpoint": authorize_url(base),
        "token_endpoint": token_url(base),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": list(SCOPES_SUPPORTED),
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nonce", "fhirUser"],
        "grant_types_supported": list(GRANT_TYPES),
        "token_endpoint_auth_methods_supported": list(CONFIDENTIAL_AUTH_METHODS),
        "code_challenge_methods_supported": ["S256"],
    }


async def capture(request: Request, endpoint: str) -> RequestData:
    """Everything the synchronous server needs from the request, read on the event loop."""
    form: tuple[tuple[str, str], ...] = ()
    if request.method == "POST":
        content_type = request.headers.get("content-type", "").lower()
        if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            fields = await request.form()
            form = tuple((k, v) for k, v in fields.multi_items() if isinstance(v, str))
    return RequestData(
        endpoint=endpoint, method=request.method, url=str(request.url), headers=request.headers,
        query=tuple(request.query_params.multi_items()), form=form,
        client_ip=request.client.host if request.client else None,
    )


def claimed_client_id(data: RequestData) -> str | None:
    """The client a token request says it comes from, unverified: a rate-limit key, nothing more."""
    basic_id, _ = extract_basic_authorization(data.headers)
    if basic_id:
        return str(basic_id)
    named = data.form_value("client_id")
    if named:
        return named
    assertion = data.form_value("client_assertion")
    if assertion.count(".") == 2:
        try:
            segment = assertion.split(".")[1]
            claims = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
            subject = claims.get("sub") if isinstance(claims, dict) else None
            return subject if isinstance(subject, str) else None
        except (ValueError, binascii.Error):
            return None
    return None


def _with(response: Response, headers: dict[str, str]) -> Response:
    for name, value in headers.items():
        response.headers[name] = value
    return response


class _Runtime:
    """The per-process pieces, made on first use: ctx.auth only exists once startup has run."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        limit = ctx.settings.token_rate_limit_per_minute
        self.token_limiter = RateLimiter(limit)
        self.login_limiter = RateLimiter(limit)  # sign-in form posts, per IP and per username
        self._server: SmartAuthorizationServer | None = None
        self._lock = threading.Lock()

    def server(self) -> SmartAuthorizationServer:
        auth = self.ctx.auth
        if auth is None:
            raise HTTPException(503, "The authorization server is not started")
        server = self._server
        if server is None or server.services is not auth:
            with self._lock:
                if self._server is None or self._server.services is not auth:
                    self._server = SmartAuthorizationServer(auth)
                server = self._server
        return server


def oauth_router(ctx: Context) -> APIRouter:
    """The authorization server's routes, for FastAPI's app (ServerApp routes them there)."""
    router = APIRouter(include_in_schema=False)
    runtime = _Runtime(ctx)
    flow = _AuthorizeFlow(runtime)

    @router.get(f"{FHIR_PREFIX}/.well-known/smart-configuration")
    async def smart_config() -> Response:
        return JSONResponse(smart_configuration(ctx.base), headers=_CORS)

    @router.get("/.well-known/openid-configuration")
    @router.get(f"{FHIR_PREFIX}/.well-known/openid-configuration")
    async def openid_config() -> Response:
        return JSONResponse(openid_configuration(ctx.base), headers=_CORS)

    @router.get("/oauth/jwks")
    async def jwks() -> Response:
        server = runtime.server()
        keys = await run_in_threadpool(server.services.keyring.jwks)
        return JSONResponse(keys, headers=_CORS)

    @router.post("/oauth/token")
    async def token(request: Request) -> Response:
        data = await capture(request, "token")
        client_id = claimed_client_id(data)
        retry = runtime.token_limiter.hit(f"client:{client_id}" if client_id else None,
                                          f"ip:{data.client_ip}" if data.client_ip else None)
        if retry is not None:
            audit("token.refused", client_id=client_id, grant_type=data.form_value("grant_type"),
                  outcome="rate_limited", ip=data.client_ip)
            body = {"error": "temporarily_unavailable",
                    "error_description": f"Too many token requests; retry in {retry} seconds."}
            return JSONResponse(body, status_code=429, headers={**_NO_STORE, **_CORS, "Retry-After": str(retry)})
        server = runtime.server()
        return _with(await run_in_threadpool(server.create_token_response, data), _CORS)

    @router.post("/oauth/introspect")
    async def introspect(request: Request) -> Response:
        data = await capture(request, "introspect")
        server = runtime.server()
        return _with(await run_in_threadpool(server.create_endpoint_response, "introspection", data), _CORS)

    @router.post("/oauth/revoke")
    async def revoke(request: Request) -> Response:
        data = await capture(request, "revoke")
        server = runtime.server()
        return _with(await run_in_threadpool(server.create_endpoint_response, "revocation", data), _CORS)

    @router.options("/oauth/token")
    @router.options("/oauth/introspect")
    @router.options("/oauth/revoke")
    async def preflight() -> Response:
        # Browser apps (public clients) call these cross-origin with an Authorization header.
        return Response(status_code=204, headers=_CORS_PREFLIGHT)

    @router.api_route("/oauth/authorize", methods=["GET", "POST"])
    async def authorize(request: Request) -> Response:
        data = await capture(request, "authorize")
        if data.method == "POST" and data.form_value(pages.SESSION_FIELD):
            return await run_in_threadpool(flow.resume, data)
        return await run_in_threadpool(flow.start, data)

    return router


class _AuthorizeFlow:
    """The authorization endpoint's steps: request -> sign-in -> consent (+ patient) -> redirect.

    Each step re-validates the original authorization request through Authlib (carried, signed,
    in the pages), so a client whose registration changed mid-flow is caught at the last step too."""

    def __init__(self, runtime: _Runtime) -> None:
        self._runtime = runtime
        self._ctx = runtime.ctx

    def start(self, data: RequestData) -> Response:
        server = self._runtime.server()
        request = FormRequest(data)
        grant = self._grant(server, request)
        if isinstance(grant, Response):
            return grant
        pairs = [[k, v] for k, v in (data.form if data.method == "POST" else data.query)]
        session = server.forms.sign("login", {"p": pairs})
        return pages.login_page(client_name=grant.client.record.name, session=session)

    def resume(self, data: RequestData) -> Response:
        server = self._runtime.server()
        value = data.form_value(pages.SESSION_FIELD)
        for step in ("login", "consent"):
            state = server.forms.verify(step, value)
            if state is not None:
                break
        else:
            audit("authorize.refused", outcome="invalid_session", ip=data.client_ip)
            return pages.error_page(error="invalid_request",
                                    description="This page has expired or was altered; return to the app and start again.")
        params = [(str(k), str(v)) for k, v in state["p"]]
        grant = self._grant(server, FormRequest(data, params=params))
        if isinstance(grant, Response):
            return grant
        if step == "login":
            return self._login(server, grant, state, value, data)
        return self._consent(server, grant, state, value, data)

    @staticmethod
    def _grant(server: SmartAuthorizationServer, request: FormRequest) -> Any:
        """The validated authorization grant, or the response refusing the request."""
        try:
            return server.get_consent_grant(request)
        except OAuth2Error as error:
            if error.redirect_uri:
                # The client and its redirect_uri are verified: the error goes back to the app.
                return server.handle_error_response(request, error)
            audit("authorize.refused", client_id=request.payload.data.get("client_id"), outcome=error.error,
                  description=error.description, ip=request.data_in.client_ip)
            return pages.error_page(error=error.error, description=error.description)

    def _login(self, server: SmartAuthorizationServer, grant: Any, state: dict[str, Any], value: str,
               data: RequestData) -> Response:
        client = grant.client
        username = data.form_value("username").strip()
        password = data.form_value("password")
        code = data.form_value("totp").strip()
        retry = self._runtime.login_limiter.hit(f"ip:{data.client_ip}" if data.client_ip else None,
                                                f"user:{username.lower()}" if username else None)
        if retry is not None:
            audit("authorize.login", client_id=client.client_id, username=username, outcome="rate_limited",
                  ip=data.client_ip)
            return pages.login_page(client_name=client.record.name, session=value, username=username,
                                    error="Too many sign-in attempts; wait a minute and try again.",
                                    status=429, retry_after=retry)
        user = server.store.verify_password(username, password) if username and password else None
        if user is not None and user.totp_enabled and not (code and server.store.verify_totp(username, code)):
            user = None
        if user is None:
            # One message for every failure: which part was wrong would help a guesser.
            audit("authorize.login", client_id=client.client_id, username=username, outcome="failure",
                  ip=data.client_ip)
            return pages.login_page(client_name=client.record.name, session=value, username=username,
                                    error="Wrong username, password or one-time code.")
        audit("authorize.login", client_id=client.client_id, username=user.username, outcome="success",
              ip=data.client_ip)
        session = server.forms.sign("consent", {"p": state["p"], "u": user.username, "t": int(time.time())})
        return self._consent_page(grant, user, session)

    def _consent(self, server: SmartAuthorizationServer, grant: Any, state: dict[str, Any], value: str,
                 data: RequestData) -> Response:
        request: FormRequest = grant.request
        user = server.store.get_user(str(state.get("u")))
        if user is None:
            return pages.error_page(error="access_denied", description="The signed-in user no longer exists.")
        action = data.form_value("action", "approve")
        if action == "deny":
            audit("authorize.denied", client_id=grant.client.client_id, username=user.username, outcome="denied")
            return server.create_authorization_response(request, grant_user=None, grant=grant)
        selected = data.form_values("scope")
        granted = ScopeSet(t for t in parse_scopes(request.scope).tokens if t in selected)
        patient_query = data.form_value("patient_query").strip()
        chosen = (data.form_value("patient_id").strip() or data.form_value("patient").strip()).removeprefix("Patient/")
        def again(error: str | None = None, *, force_picker: bool = False) -> Response:
            # The page once more, as the user left it.
            return self._consent_page(grant, user, value, checked=selected, patient_query=patient_query,
                                      patient=chosen, error=error, status=400 if error else 200,
                                      force_picker=force_picker)

        if action == "search":
            return again()
        if not len(granted):
            return again("Tick at least one permission, or choose Deny.")
        context = self._context(request, user, granted)
        if granted.has("launch/patient") and context.patient is None:
            if not chosen:
                return again("Choose a patient.", force_picker=True)
            if not self._patient_exists(chosen):
                return again(f"There is no Patient with id {chosen}.", force_picker=True)
            context = LaunchContext(chosen, context.encounter)
        request.granted_scope = str(granted)
        request.launch_context = context
        return server.create_authorization_response(request, grant_user=user, grant=grant)

    @staticmethod
    def _context(request: FormRequest, user: UserRecord, granted: ScopeSet) -> LaunchContext:
        patient = encounter = None
        if granted.has("launch") and request.launch is not None:
            patient, encounter = request.launch.patient, request.launch.encounter
        if user.patient is not None:
            # A user who is a patient acts in their own compartment whatever the EHR launched with;
            # an encounter of some other patient would make no sense next to it.
            if patient != user.patient:
                encounter = None
            patient = user.patient
        return LaunchContext(patient, encounter)

    def _consent_page(
        self,
        grant: Any,
        user: UserRecord,
        session: str,
        *,
        checked: list[str] | None = None,
        patient_query: str = "",
        patient: str = "",
        error: str | None = None,
        status: int = 200,
        force_picker: bool = False,
    ) -> Response:
        request: FormRequest = grant.request
        requested = parse_scopes(request.scope)
        need_patient = force_picker or (
            requested.has("launch/patient") and self._context(request, user, requested).patient is None)
        patients = self._find_patients(patient_query) if need_patient else []
        return pages.consent_page(
            client_name=grant.client.record.name, username=user.username, scopes=requested.tokens,
            session=session, checked=checked, need_patient=need_patient, patients=patients,
            patient_query=patient_query, patient=patient, error=error, status=status,
        )

    def _find_patients(self, name: str) -> list[tuple[str, str]]:
        params = [("_count", str(PATIENT_PICKER_SIZE)), ("_total", "none")]
        if name:
            params.append(("name", name))
        try:
            query = parse_search(["Patient"], params, default_count=PATIENT_PICKER_SIZE,
                                 max_count=PATIENT_PICKER_SIZE, base_url=self._ctx.base)
            page = self._ctx.backend.search(query, max_include=0)
        except Exception:  # noqa: BLE001 - the picker still works with a typed-in id
            log.warning("patient picker search failed", exc_info=True)
            return []
        return [(item.id, _patient_label(item.body)) for item in page.items if item.body is not None]

    def _patient_exists(self, patient_id: str) -> bool:
        if not _PATIENT_ID.fullmatch(patient_id):
            return False
        try:
            stored = self._ctx.backend.read("Patient", patient_id)
        except Exception:  # noqa: BLE001 - an unreadable patient cannot be chosen
            log.warning("patient lookup failed", exc_info=True)
            return False
        return stored is not None and not stored.deleted


def _patient_label(body: bytes) -> str:
    try:
        patient = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "(unreadable)"
    label = "(no name)"
    names = patient.get("name")
    if isinstance(names, list) and names and isinstance(names[0], dict):
        name = names[0]
        given = name.get("given")
        parts = [str(p) for p in (given if isinstance(given, list) else [])] + ([str(name["family"])] if name.get("family") else [])
        label = str(name.get("text") or " ".join(parts) or label)
    born = patient.get("birthDate")
    return f"{label} (born {born})" if isinstance(born, str) else label
