"""The OAuth 2 / SMART on FHIR authorization server, built on Authlib's server core.

Authlib runs the protocol: grant selection, client authentication, PKCE, redirect and error
responses.  This module supplies what it leaves to the application:

- models over AuthStore records (``OAuthClient``, ``StoredCode``, ``IssuedToken``);
- the four grants SMART needs, with SMART's rules (PKCE S256 for every client, scopes narrowed to
  the client's registration, launch context, refresh-token rotation, TOTP on the password grant);
- ``private_key_jwt`` client authentication (RFC 7523, SMART Backend Services: RS384/ES384);
- introspection (RFC 7662) and revocation (RFC 7009) endpoints;
- a framework adapter: ``endpoints.py`` reads each HTTP request on the event loop into a
  ``RequestData`` and hands it to this synchronous server in a worker thread (every step here may
  touch the database or run argon2).

Nothing lives only in this process except caches: a request may reach any worker.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast
from urllib.parse import urlsplit

from authlib.oauth2 import AuthorizationServer, OAuth2Error
from authlib.oauth2.rfc6749 import (
    AuthorizationCodeMixin,
    ClientMixin,
    InvalidClientError,
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    JsonPayload,
    JsonRequest,
    OAuth2Payload,
    OAuth2Request,
    TokenMixin,
    UnauthorizedClientError,
    grants,
)
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7636 import CodeChallenge, create_s256_code_challenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, GuestProtocol, Key, KeySet, KeySetSerialization, RSAKey
from starlette.responses import Response

from fhir_server.auth import passwords
from fhir_server.auth.keys import CLIENT_ASSERTION_ALGS
from fhir_server.auth.scopes import ScopeError, ScopeSet, parse_scopes
from fhir_server.auth.services import AuthServices
from fhir_server.auth.store import (
    AuthStore,
    ClientRecord,
    CodeRecord,
    LaunchRecord,
    RefreshRecord,
    UserRecord,
)
from fhir_server.auth.tokens import DEFAULT_LEEWAY_S, TokenService
from fhir_server.auth.urls import token_url
from fhir_server.model.instant import now_ms

log = logging.getLogger(__name__)
audit_log = logging.getLogger("fhir_server.auth.audit")

# Client authentication methods, in the order they are tried.  "none" (a public client naming
# itself) comes last so that a confidential client is never let through on its client_id alone.
CONFIDENTIAL_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt"]
ANY_CLIENT_AUTH_METHODS = [*CONFIDENTIAL_AUTH_METHODS, "none"]
BEARER_AUTH = "bearer_access_token"  # introspection only: the caller shows an active access token

ASSERTION_MAX_AHEAD_S = 300  # SMART Backend Services: exp no more than five minutes in the future
# online_access: we keep no sign-in session, so "as long as the user is online" becomes a fixed
# window from sign-in that rotation never extends (offline_access tokens slide instead).
ONLINE_ACCESS_LIFETIME_S = 12 * 3600
FORM_LIFETIME_S = 600  # how long a sign-in or consent page may stay open
_MAX_NONCE = 255  # the oauth_code.nonce column
_MAX_JTI = 255  # the oauth_assertion_jti.jti column
_JWKS_MAX_BYTES = 64 * 1024


# -- audit ---------------------------------------------------------------------------------------
def audit(event: str, **fields: Any) -> None:
    """Record a security event (grant, refusal, token use) on the ``fhir_server.auth.audit`` logger.

    The one hook every auth event goes through, so that writing AuditEvent resources later is a
    change here only.  Callers pass names and outcomes, never secrets, passwords or tokens; the
    fields also travel as ``record.audit`` for structured log handlers."""
    shown = {k: v for k, v in fields.items() if v is not None and v != ""}
    audit_log.info("%s %s", event, " ".join(f"{k}={_audit_value(v)}" for k, v in shown.items()),
                   extra={"audit": {"event": event, **shown}})


def _audit_value(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (not text or any(c.isspace() or c in '"=' for c in text)) else text


# -- requests ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RequestData:
    """An HTTP request as read by the async endpoint, before the synchronous server sees it."""

    endpoint: str  # authorize | token | introspect | revoke
    method: str
    url: str
    headers: Mapping[str, str]  # case-insensitive (Starlette's Headers)
    query: tuple[tuple[str, str], ...] = ()
    form: tuple[tuple[str, str], ...] = ()
    client_ip: str | None = None
    json: Any = None

    def form_values(self, name: str) -> list[str]:
        return [v for k, v in self.form if k == name]

    def form_value(self, name: str, default: str = "") -> str:
        values = self.form_values(name)
        return values[0] if values else default


class _Params(OAuth2Payload):
    def __init__(self, pairs: Sequence[tuple[str, str]]) -> None:
        self._data: dict[str, str] = {}
        self._datalist: defaultdict[str, list[str]] = defaultdict(list)
        for name, value in pairs:
            self._data.setdefault(name, value)
            self._datalist[name].append(value)

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> defaultdict[str, list[str]]:
        return self._datalist


class FormRequest(OAuth2Request):
    """Authlib's view of one request: the parameters (form for POST, query for GET, or those of the
    original authorization request when a sign-in or consent page posts back) and the headers."""

    def __init__(self, data: RequestData, params: Sequence[tuple[str, str]] | None = None) -> None:
        # Authlib refuses to build a request whose URI is not https (or loopback).  Behind a
        # TLS-terminating proxy this process only ever sees http, so that check cannot see the
        # truth; transport security is the deployment's job (its public base URL says https).
        super().__init__(data.method, "https://localhost/", headers=data.headers)
        self.uri = data.url
        self.data_in = data
        if params is None:
            params = data.form if data.method == "POST" else data.query
        self.payload = _Params(params)
        # Set by the authorize flow: what the user consented to and the launch context it chose.
        self.granted_scope: str | None = None
        self.launch_context: LaunchContext | None = None
        self.launch: LaunchRecord | None = None  # the EHR launch named by the request's launch=

    @property
    def endpoint(self) -> str:
        return self.data_in.endpoint

    @property
    def form(self) -> dict[str, str]:
        return self.payload.data

    @property
    def args(self) -> dict[str, str]:
        return self.payload.data


class _JsonBody(JsonPayload):
    def __init__(self, body: Any) -> None:
        self._body = body

    @property
    def data(self) -> Any:
        return self._body


# -- models --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LaunchContext:
    patient: str | None = None
    encounter: str | None = None


class OAuthClient(ClientMixin):
    def __init__(self, record: ClientRecord) -> None:
        self.record = record
        self.client_id = record.client_id

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        # Only an unambiguous registration may stand in for a missing redirect_uri (RFC 6749 §3.1.2.3).
        uris = self.record.redirect_uris
        return uris[0] if len(uris) == 1 else None

    @property
    def allowed_scopes(self) -> ScopeSet:
        return parse_scopes(self.record.scopes)

    def get_allowed_scope(self, scope: str | None) -> str | None:
        """The requested scopes this client is registered for; none requested: all of them.

        None when nothing is left, which Authlib answers with invalid_scope."""
        allowed = self.allowed_scopes
        granted = parse_scopes(scope).restrict_to(allowed) if scope and scope.strip() else allowed
        return str(granted) if len(granted) else None

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        # Exact string comparison, as RFC 9700 §4.1.3 asks: no prefix or pattern matching.
        return redirect_uri in self.record.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return passwords.verify_password(self.record.secret_hash, client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if method == BEARER_AUTH:
            return endpoint == "introspection"
        return method in self.record.token_endpoint_auth_methods

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in self.record.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.record.grant_types


class StoredCode(AuthorizationCodeMixin):
    def __init__(self, record: CodeRecord) -> None:
        self.record = record
        self.code_challenge = record.code_challenge
        self.code_challenge_method = record.code_challenge_method

    def get_redirect_uri(self) -> str | None:
        return self.record.redirect_uri

    def get_scope(self) -> str:
        return self.record.scope


@dataclass(frozen=True)
class IssuedToken(TokenMixin):
    """An access or refresh token found for introspection or revocation."""

    kind: Literal["access_token", "refresh_token"]
    client_id: str
    scope: str
    sub: str | None
    username: str | None
    exp: int
    iat: int | None = None
    jti: str | None = None
    patient: str | None = None
    encounter: str | None = None
    fhir_user: str | None = None
    value: str = field(default="", repr=False)

    def check_client(self, client: OAuthClient) -> bool:
        return self.client_id == client.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return max(0, self.exp - int(time.time()))

    def is_expired(self) -> bool:
        # Strict: the verifier's leeway for clock skew between servers is no reason to call an
        # expired token active.
        return self.exp <= time.time()

    def is_revoked(self) -> bool:
        return False  # only live tokens are ever looked up


# -- client keys for private_key_jwt -------------------------------------------------------------
def fetch_jwks(url: str) -> Any:
    """GET a client's JWK set.  A module function so that tests can stand in for the network."""
    if urlsplit(url).scheme not in ("https", "http"):
        raise ValueError(f"jwks_url must be http(s), got {url!r}")
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - scheme checked above
        body = response.read(_JWKS_MAX_BYTES + 1)
    if len(body) > _JWKS_MAX_BYTES:
        raise ValueError("JWK set too large")
    return json.loads(body)


class ClientKeyCache:
    """Client public keys: registered sets as stored, jwks_url sets fetched and kept for ttl_s.

    A kid not in the cached set triggers a refetch (the client may have rotated its key), at most
    every refetch_s per URL so that made-up kids cannot turn us into a request amplifier."""

    def __init__(self, ttl_s: float = 300.0, refetch_s: float = 10.0) -> None:
        self._ttl_s = ttl_s
        self._refetch_s = refetch_s
        self._fetched: dict[str, tuple[float, KeySet]] = {}
        self._lock = threading.Lock()

    def find(self, client: ClientRecord, kid: str | None, alg: str) -> Key | None:
        if client.jwks is not None:
            return _pick_key(KeySet.import_key_set(cast(KeySetSerialization, client.jwks)), kid, alg)
        if client.jwks_url is None:
            return None
        url = client.jwks_url
        cached = self._fetched.get(url)
        now = time.monotonic()
        if cached is None or now - cached[0] > self._ttl_s:
            cached = self._load(url)
        key = _pick_key(cached[1], kid, alg)
        if key is None and time.monotonic() - cached[0] >= self._refetch_s:
            key = _pick_key(self._load(url)[1], kid, alg)
        return key

    def _load(self, url: str) -> tuple[float, KeySet]:
        with self._lock:
            try:
                data = fetch_jwks(url)
                if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
                    raise ValueError("not a JWK set")
                # Keys we cannot use (encryption keys, other algorithms) are left out, not fatal:
                # the set may serve other purposes of the client too.
                usable = [k for k in data["keys"] if isinstance(k, dict) and k.get("kty") in ("RSA", "EC")]
                keys = KeySet.import_key_set(KeySetSerialization(keys=usable))
            except Exception as exc:  # noqa: BLE001 - any failure means: no keys for this client now
                log.warning("could not fetch the JWK set at %s: %s", url, exc)
                raise InvalidClientError(description="The client's JWK set could not be fetched.") from None
            entry = (time.monotonic(), keys)
            self._fetched[url] = entry
            return entry


def _pick_key(keys: KeySet, kid: str | None, alg: str) -> Key | None:
    def fits(key: Key) -> bool:
        if key.get("use") not in (None, "sig") or key.get("alg") not in (None, alg):
            return False
        if alg == "RS384":
            return isinstance(key, RSAKey)
        return isinstance(key, ECKey) and key.curve_name == "P-384"

    candidates = [k for k in keys.keys if fits(k) and (kid is None or k.kid == kid)]
    # Without a kid only an unambiguous key will do: trying each would be an oracle.
    return candidates[0] if len(candidates) == 1 or (kid is not None and candidates) else None


class PrivateKeyJwtAuth(JWTBearerClientAssertion):
    """``private_key_jwt`` (RFC 7523 §2.2) as SMART Backend Services profiles it: RS384 or ES384,
    iss = sub = client_id, aud = the token URL, exp at most five minutes ahead, jti never reused."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self, server: SmartAuthorizationServer) -> None:
        super().__init__(validate_jti=True, leeway=DEFAULT_LEEWAY_S)
        self._server = server

    def __call__(self, query_client: Callable[[str], Any], request: FormRequest) -> OAuthClient | None:
        client: OAuthClient | None = super().__call__(query_client, request)
        named = request.form.get("client_id")
        if client is not None and named and named != client.client_id:
            raise InvalidClientError(description="client_id does not match the assertion's subject.")
        return client

    def get_audiences(self) -> list[str]:
        return [token_url(self._server.base)]

    def resolve_client_public_key(self, client: OAuthClient) -> Callable[[GuestProtocol], Key]:
        record = client.record
        if record.jwks is None and record.jwks_url is None:
            raise InvalidClientError(description="The client has no registered public keys.")

        def resolve(token: GuestProtocol) -> Key:
            headers = token.headers()
            alg, kid = headers.get("alg"), headers.get("kid")
            if alg not in CLIENT_ASSERTION_ALGS:
                raise InvalidClientError(description="Client assertions must be signed with RS384 or ES384.")
            key = self._server.client_keys.find(record, kid if isinstance(kid, str) else None, alg)
            if key is None:
                raise InvalidClientError(description="No registered key of the client matches the assertion's kid and alg.")
            return key

        return resolve

    def process_assertion_claims(self, assertion: str, resolve_key: Any) -> dict[str, Any]:
        try:
            # Explicit algorithms: joserfc's default set leaves out RS384 and ES384.
            token = jwt.decode(assertion, resolve_key, algorithms=list(CLIENT_ASSERTION_ALGS))
        except JoseError as exc:
            raise InvalidClientError(description=f"Invalid client assertion: {exc.error}.") from exc
        claims = token.claims
        exp = claims.get("exp")
        if not isinstance(exp, int) or isinstance(exp, bool):
            raise InvalidClientError(description="The client assertion needs a numeric exp.")
        if exp > time.time() + ASSERTION_MAX_AHEAD_S + self.leeway:
            raise InvalidClientError(description="The client assertion expires more than five minutes ahead.")
        self.verify_claims(claims)
        return claims

    def validate_jti(self, claims: dict[str, Any], jti: Any) -> bool:
        if not isinstance(jti, str) or not jti or len(jti) > _MAX_JTI:
            return False
        # Remembered while the assertion could still pass (exp plus leeway); sooner would let a replay in.
        return self._server.store.use_assertion_jti(
            str(claims["sub"]), jti, (int(claims["exp"]) + self.leeway) * 1000)


def bearer_client_auth(tokens: TokenService) -> Callable[[Callable[[str], Any], FormRequest], Any]:
    """Client authentication by an active access token (Authorization: Bearer), for introspection
    only (RFC 7662 §2.1 allows a separate access token): the caller is that token's client."""

    def authenticate(query_client: Callable[[str], Any], request: FormRequest) -> Any:
        scheme, _, value = str(request.headers.get("Authorization", "")).partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return None
        claims = tokens.verify(value.strip())
        return query_client(claims.client_id) if claims is not None else None

    return authenticate


# -- PKCE and SMART launch parameters ------------------------------------------------------------
class S256CodeChallenge(CodeChallenge):
    """PKCE as SMART App Launch 2 requires it: S256 only, for every client, confidential ones too."""

    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    CODE_CHALLENGE_METHODS = {
        "S256": lambda verifier, challenge: hmac.compare_digest(create_s256_code_challenge(verifier), challenge),
    }

    def validate_code_challenge(self, grant: Any, redirect_uri: Any) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: send code_challenge with code_challenge_method=S256.")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("code_challenge_method must be S256.")
        super().validate_code_challenge(grant, redirect_uri)

    def validate_code_verifier(self, grant: Any, result: Any) -> None:
        # Authlib insists on a verifier from public clients only; here every code carries a challenge.
        if not grant.request.form.get("code_verifier"):
            raise InvalidRequestError("Missing 'code_verifier'.")
        super().validate_code_verifier(grant, result)


class SmartLaunchParameters:
    """Authorization-request checks SMART adds: aud names this FHIR server, launch= names a live EHR
    launch (whose context is kept on the request), nonce fits its column."""

    def __init__(self, server: SmartAuthorizationServer) -> None:
        self._server = server

    def __call__(self, grant: Any) -> None:
        grant.register_hook("after_validate_authorization_request_payload", self.validate)

    def validate(self, grant: Any, result: Any) -> None:
        request: FormRequest = grant.request
        data = request.payload.data
        aud = data.get("aud")
        if not aud or aud.rstrip("/") != self._server.base.rstrip("/"):
            raise InvalidRequestError(f"aud must be this FHIR server's base URL, {self._server.base}.")
        if len(data.get("nonce") or "") > _MAX_NONCE:
            raise InvalidRequestError("nonce is too long.")
        request.launch = None
        launch = data.get("launch")
        if launch:
            record = self._server.store.get_launch(launch)
            if record is None:
                raise InvalidRequestError("Unknown or expired launch.")
            request.launch = record


# -- grants --------------------------------------------------------------------------------------
class AuthorizationCodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ANY_CLIENT_AUTH_METHODS

    def generate_authorization_code(self) -> str:
        return TokenService.new_code()

    def save_authorization_code(self, code: str, request: FormRequest) -> None:
        server: SmartAuthorizationServer = self.server
        data = request.payload.data
        context = request.launch_context or LaunchContext()
        scope = request.granted_scope if request.granted_scope is not None else request.scope
        user: UserRecord = request.user
        server.store.save_code(
            code, client_id=request.client.client_id, username=user.username, scope=scope,
            expires_ms=now_ms() + server.tokens.code_lifetime_s * 1000, redirect_uri=data.get("redirect_uri"),
            code_challenge=data.get("code_challenge"), code_challenge_method=data.get("code_challenge_method"),
            nonce=data.get("nonce"), patient=context.patient, encounter=context.encounter,
        )
        audit("authorize.code_issued", client_id=request.client.client_id, username=user.username, scopes=scope,
              patient=context.patient, encounter=context.encounter, outcome="success")

    def query_authorization_code(self, code: str, client: OAuthClient) -> StoredCode | None:
        server: SmartAuthorizationServer = self.server
        # Redeemed here, atomically, rather than looked up and deleted later: two concurrent
        # requests with one code must not both get tokens.  A failed PKCE check afterwards burns it.
        outcome = server.store.consume_code(code, client_id=client.client_id)
        if outcome.record is not None:
            return StoredCode(outcome.record)
        if outcome.reused and outcome.previous is not None:
            # RFC 6749 §4.1.2: a replayed code may be stolen; withdraw what it (and its user's
            # session with this client) led to.  Access tokens run out on their own.
            revoked = server.store.revoke_all_for(client.client_id, outcome.previous.username)
            audit("token.code_reused", client_id=client.client_id, username=outcome.previous.username,
                  outcome="refused", refresh_tokens_revoked=revoked)
        return None

    def delete_authorization_code(self, authorization_code: StoredCode) -> None:
        pass  # consumed when it was looked up

    def authenticate_user(self, authorization_code: StoredCode) -> UserRecord | None:
        server: SmartAuthorizationServer = self.server
        return server.store.get_user(authorization_code.record.username)

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        server: SmartAuthorizationServer = self.server
        code: StoredCode = self.request.authorization_code
        user = self.authenticate_user(code)
        if user is None:
            raise InvalidGrantError("The user of this code no longer exists.")
        self.request.user = user
        record = code.record
        token = server.issue_tokens(
            self.request, grant_type=self.GRANT_TYPE, client=self.request.client, scope=record.scope, user=user,
            context=LaunchContext(record.patient, record.encounter), nonce=record.nonce,
        )
        return 200, token, self.TOKEN_RESPONSE_HEADER


class PasswordGrant(grants.ResourceOwnerPasswordCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ANY_CLIENT_AUTH_METHODS

    def validate_token_request(self) -> None:
        server: SmartAuthorizationServer = self.server
        client = self.authenticate_token_endpoint_client()
        if not client.check_grant_type(self.GRANT_TYPE):
            raise UnauthorizedClientError(f"The client may not use grant_type={self.GRANT_TYPE}.")
        self.request.client = client
        form = self.request.form
        username, password = form.get("username"), form.get("password")
        if not username or password is None:
            raise InvalidRequestError("username and password are required.")
        scope = server.allowed_scope(client, self.request.payload.scope)
        user = server.store.verify_password(username, password)
        if user is not None and user.totp_enabled:
            code = form.get("totp")
            if not code or not server.store.verify_totp(username, code):
                user = None
        if user is None:
            # One answer for a wrong password, an unknown user and a missing or wrong code: which
            # of them it was would tell a guesser what to try next.
            raise InvalidGrantError("Invalid username, password or one-time code (totp).")
        self.request.user = user
        self.request.scope = scope

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        server: SmartAuthorizationServer = self.server
        user: UserRecord = self.request.user
        token = server.issue_tokens(self.request, grant_type=self.GRANT_TYPE, client=self.request.client,
                                    scope=self.request.scope, user=user, context=LaunchContext(user.patient))
        return 200, token, self.TOKEN_RESPONSE_HEADER


class ClientCredentialsGrant(grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = CONFIDENTIAL_AUTH_METHODS

    def validate_token_request(self) -> None:
        server: SmartAuthorizationServer = self.server
        client = self.authenticate_token_endpoint_client()
        if not client.check_grant_type(self.GRANT_TYPE):
            raise UnauthorizedClientError(f"The client may not use grant_type={self.GRANT_TYPE}.")
        self.request.client = client
        # Without a user there is no patient or user context: only system/ scopes mean anything.
        allowed = parse_scopes(server.allowed_scope(client, self.request.payload.scope))
        system = ScopeSet(s for s in allowed.resource_scopes if s.context == "system")
        if not len(system):
            raise InvalidScopeError("client_credentials grants system/ scopes only, and none of the requested are registered for this client.")
        self.request.scope = str(system)

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        server: SmartAuthorizationServer = self.server
        token = server.issue_tokens(self.request, grant_type=self.GRANT_TYPE, client=self.request.client,
                                    scope=self.request.scope, user=None)
        return 200, token, self.TOKEN_RESPONSE_HEADER


class RefreshTokenGrant(grants.RefreshTokenGrant):
    """Rotation: each use returns a new refresh token and kills the old one; presenting a rotated
    token again revokes its descendants (the store does that) and is refused."""

    TOKEN_ENDPOINT_AUTH_METHODS = ANY_CLIENT_AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True

    def validate_token_request(self) -> None:
        server: SmartAuthorizationServer = self.server
        client = self._validate_request_client()
        self.request.client = client
        presented = self.request.form.get("refresh_token")
        if not presented:
            raise InvalidRequestError("Missing 'refresh_token' in request.")
        record = server.store.get_refresh(presented)
        if record is None or record.client_id != client.client_id:
            # Not live for this client.  A rotation attempt is what detects the replay of an
            # already rotated token (and revokes what descends from it); it cannot succeed here.
            outcome = server.store.rotate_refresh(presented, TokenService.new_refresh_token(),
                                                  client_id=client.client_id)
            if outcome.reused and outcome.previous is not None:
                audit("token.refresh_reused", client_id=client.client_id, username=outcome.previous.username,
                      outcome="refused")
            raise InvalidGrantError("The refresh token is invalid, expired, revoked or already used.")
        requested = self.request.payload.scope
        if requested and requested.strip():
            server.validate_requested_scope(requested)
            if not parse_scopes(record.scope).covers(parse_scopes(requested)):
                raise InvalidScopeError("A refresh may narrow the scope of the grant, never widen it.")
            self.request.scope = str(parse_scopes(requested))
        else:
            self.request.scope = record.scope
        user = server.store.get_user(record.username) if record.username else None
        if record.username and user is None:
            raise InvalidGrantError("The user of this refresh token no longer exists.")
        self.request.refresh_token = record
        self.request.user = user
        self._presented = presented

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        server: SmartAuthorizationServer = self.server
        record: RefreshRecord = self.request.refresh_token
        new = TokenService.new_refresh_token()
        # offline_access slides with use; online_access keeps the end its first issue gave it.
        expires_ms = (now_ms() + server.tokens.refresh_lifetime_s * 1000
                      if parse_scopes(record.scope).has("offline_access") else None)
        # The new token keeps the grant's whole scope (RFC 6749 §6); only this access token is narrower.
        outcome = server.store.rotate_refresh(self._presented, new, client_id=record.client_id, expires_ms=expires_ms)
        if outcome.record is None:
            raise InvalidGrantError("The refresh token was used concurrently.")
        token = server.issue_tokens(
            self.request, grant_type=self.GRANT_TYPE, client=self.request.client, scope=self.request.scope,
            user=self.request.user, context=LaunchContext(record.patient, record.encounter), rotated_refresh=new,
        )
        return 200, token, self.TOKEN_RESPONSE_HEADER


# -- introspection and revocation ----------------------------------------------------------------
def _find_token(server: SmartAuthorizationServer, value: str, hint: str | None) -> IssuedToken | None:
    lookups = (server.refresh_token_info, server.access_token_info)
    if hint != "refresh_token":
        lookups = lookups[::-1]
    for lookup in lookups:
        token = lookup(value)
        if token is not None:
            return token
    return None


class IntrospectEndpoint(IntrospectionEndpoint):
    """RFC 7662.  Callers authenticate as a confidential client (secret or private_key_jwt) or with
    an active access token of this server as Bearer; either may introspect any token, since the
    caller must already hold the token string, which is itself the credential."""

    CLIENT_AUTH_METHODS = [*CONFIDENTIAL_AUTH_METHODS, BEARER_AUTH]

    def query_token(self, token_string: str, token_type_hint: str | None) -> IssuedToken | None:
        return _find_token(self.server, token_string, token_type_hint)

    def check_permission(self, token: IssuedToken, client: OAuthClient, request: FormRequest) -> bool:
        return True

    def create_endpoint_response(self, request: FormRequest) -> tuple[int, Any, list[tuple[str, str]]]:
        status, body, headers = super().create_endpoint_response(request)
        audit("token.introspected", client_id=request.client.client_id if request.client else None,
              active=bool(body.get("active")), outcome="success")
        return status, body, headers

    def introspect_token(self, token: IssuedToken) -> dict[str, Any]:
        server: SmartAuthorizationServer = self.server
        body: dict[str, Any] = {
            "active": True, "scope": token.scope, "client_id": token.client_id, "sub": token.sub,
            "username": token.username, "exp": token.exp, "iat": token.iat, "iss": server.tokens.issuer,
            "token_type": "Bearer" if token.kind == "access_token" else "refresh_token",
            "patient": token.patient, "encounter": token.encounter, "fhirUser": token.fhir_user,
        }
        if token.kind == "access_token":
            body["aud"] = server.tokens.audience
        return {k: v for k, v in body.items() if v is not None}


class RevokeEndpoint(RevocationEndpoint):
    """RFC 7009: unknown, expired and already revoked tokens are answered 200 like the others."""

    CLIENT_AUTH_METHODS = ANY_CLIENT_AUTH_METHODS

    def query_token(self, token_string: str, token_type_hint: str | None) -> IssuedToken | None:
        return _find_token(self.server, token_string, token_type_hint)

    def revoke_token(self, token: IssuedToken, request: FormRequest) -> None:
        server: SmartAuthorizationServer = self.server
        if token.kind == "access_token" and token.jti is not None:
            server.tokens.revoke(token.jti, token.exp)  # this worker denies it at once, others within a poll
        else:
            # A live refresh token is the newest of its rotation chain (the older ones are revoked
            # already), so revoking it ends the whole family.
            server.store.revoke_refresh(token.value)


# -- state carried by the sign-in and consent pages ----------------------------------------------
class FormSigner:
    """HMAC-signed, expiring state for hidden form fields: the pages keep no server-side session.

    The MAC key is derived from the active token-signing key, the one secret every worker already
    shares through the database; the kid travels with the state so that a form opened before a key
    rotation still verifies afterwards."""

    _CONTEXT = b"fhir-server authorize form state v1"

    def __init__(self, store: AuthStore, signing_kid: Callable[[], str]) -> None:
        self._store = store
        self._signing_kid = signing_kid
        self._keys: dict[str, bytes] = {}

    def sign(self, purpose: str, data: Mapping[str, Any], lifetime_s: int = FORM_LIFETIME_S) -> str:
        kid = self._signing_kid()
        key = self._key(kid)
        if key is None:
            raise RuntimeError(f"signing key {kid} is not in the database")
        body = {**data, "kid": kid, "exp": int(time.time()) + lifetime_s, "n": secrets.token_urlsafe(6)}
        payload = _b64(json.dumps(body, separators=(",", ":")).encode())
        return f"{payload}.{_b64(self._mac(key, purpose, payload))}"

    def verify(self, purpose: str, value: str) -> dict[str, Any] | None:
        """The signed data when the value is intact, made for this purpose and unexpired."""
        payload, _, mac = value.partition(".")
        try:
            body = json.loads(_unb64(payload))
            kid = body["kid"]
            key = self._key(kid) if isinstance(kid, str) else None
            if key is None or not hmac.compare_digest(_unb64(mac), self._mac(key, purpose, payload)):
                return None
        except (ValueError, KeyError, TypeError, binascii.Error):
            return None
        if not isinstance(body, dict) or not isinstance(body.get("exp"), int) or body["exp"] < time.time():
            return None
        return body

    @staticmethod
    def _mac(key: bytes, purpose: str, payload: str) -> bytes:
        return hmac.new(key, f"{purpose}.{payload}".encode(), hashlib.sha256).digest()

    def _key(self, kid: str) -> bytes | None:
        key = self._keys.get(kid)
        if key is None:
            record = next((r for r in self._store.signing_keys() if r.kid == kid), None)
            if record is None:
                return None
            key = hmac.new(record.private_pem.encode(), self._CONTEXT, hashlib.sha256).digest()
            self._keys[kid] = key
        return key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# -- the server ----------------------------------------------------------------------------------
class SmartAuthorizationServer(AuthorizationServer):
    """Authlib's AuthorizationServer for one process's AuthServices, answering Starlette Responses."""

    def __init__(self, services: AuthServices) -> None:
        super().__init__()
        self.services = services
        self.store = services.store
        self.tokens = services.tokens
        self.base = services.base
        self.client_keys = ClientKeyCache()
        self.forms = FormSigner(services.store, lambda: services.keyring.signing_key()[0])
        self.register_client_auth_method("private_key_jwt", PrivateKeyJwtAuth(self))
        self.register_client_auth_method(BEARER_AUTH, bearer_client_auth(services.tokens))
        self.register_grant(AuthorizationCodeGrant, [S256CodeChallenge(required=True), SmartLaunchParameters(self)])
        self.register_grant(PasswordGrant)
        self.register_grant(ClientCredentialsGrant)
        self.register_grant(RefreshTokenGrant)
        self.register_endpoint(IntrospectEndpoint(self))
        self.register_endpoint(RevokeEndpoint(self))

    # -- what Authlib asks of the application ------------------------------------------------------
    def query_client(self, client_id: str) -> OAuthClient | None:
        if not isinstance(client_id, str) or not client_id:
            return None
        record = self.store.get_client(client_id)
        return OAuthClient(record) if record is not None else None

    def save_token(self, token: dict[str, Any], request: FormRequest) -> None:
        pass  # issue_tokens has stored what needs storing (refresh tokens); access tokens are JWTs

    def validate_requested_scope(self, scope: str | None) -> None:
        if scope:
            try:
                parse_scopes(scope)
            except ScopeError as exc:
                raise InvalidScopeError(_ascii(str(exc))) from None

    def allowed_scope(self, client: OAuthClient, requested: str | None) -> str:
        """The requested scopes narrowed to the client's registration (all of them if none asked)."""
        self.validate_requested_scope(requested)
        scope = client.get_allowed_scope(requested)
        if scope is None:
            raise InvalidScopeError("None of the requested scopes is registered for this client.")
        return scope

    # -- framework adapter -------------------------------------------------------------------------
    def create_oauth2_request(self, request: RequestData | FormRequest) -> FormRequest:
        return request if isinstance(request, FormRequest) else FormRequest(request)

    def create_json_request(self, request: RequestData) -> JsonRequest:
        json_request = JsonRequest(request.method, request.url, request.headers)
        json_request.payload = _JsonBody(request.json)
        return json_request

    def handle_response(self, status: int, body: Any, headers: Sequence[tuple[str, str]]) -> Response:
        content = json.dumps(body).encode() if isinstance(body, dict) else (body or b"")
        response = Response(content, status_code=status)
        for name, value in headers:
            response.headers.append(name, value)
        return response

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        if name == "after_revoke_token":
            token: IssuedToken = kwargs["token"]
            client = kwargs.get("client")
            audit("token.revoked", client_id=client.client_id if client else token.client_id,
                  username=token.username, token_type=token.kind, outcome="success")

    def handle_error_response(self, request: FormRequest, error: OAuth2Error) -> Response:
        data = request.payload.data
        client = request.client
        audit(f"{request.endpoint}.refused",
              client_id=client.client_id if client is not None else data.get("client_id"),
              grant_type=data.get("grant_type"), username=data.get("username"), scopes=data.get("scope"),
              outcome=error.error, description=error.description, ip=request.data_in.client_ip)
        return super().handle_error_response(request, error)

    def create_token_response(self, request: RequestData | FormRequest) -> Response:
        oauth_request = self.create_oauth2_request(request)
        repeated = sorted(k for k, v in oauth_request.payload.datalist.items() if len(v) > 1)
        if repeated:
            # RFC 6749 §3.2: parameters must not repeat; which copy counts would be a guess.
            error = InvalidRequestError(f"Repeated parameter: {', '.join(repeated)}.")
            return self.handle_error_response(oauth_request, error)
        return super().create_token_response(oauth_request)

    # -- token issue -------------------------------------------------------------------------------
    def issue_tokens(
        self,
        request: FormRequest,
        *,
        grant_type: str,
        client: OAuthClient,
        scope: str,
        user: UserRecord | None,
        context: LaunchContext | None = None,
        nonce: str | None = None,
        rotated_refresh: str | None = None,
    ) -> dict[str, Any]:
        """The token response of a granted request: access token, and as the scopes say a refresh
        token (offline_access / online_access), an id_token (openid) and the launch context."""
        context = context or LaunchContext()
        scopes = parse_scopes(scope)
        fhir_user = user.fhir_user if user is not None else None
        sub = user.username if user is not None else client.client_id
        access, claims = self.tokens.issue_access(
            client_id=client.client_id, sub=sub, scope=str(scopes), patient=context.patient,
            encounter=context.encounter, fhir_user=fhir_user,
        )
        body: dict[str, Any] = {
            "access_token": access, "token_type": "Bearer", "expires_in": claims.exp - claims.iat,
            "scope": claims.scope,
        }
        if rotated_refresh is not None:
            body["refresh_token"] = rotated_refresh
        elif user is not None and client.check_grant_type("refresh_token"):
            lifetime_s = self.refresh_lifetime(scopes)
            if lifetime_s:
                refresh = TokenService.new_refresh_token()
                self.store.save_refresh(
                    refresh, client_id=client.client_id, scope=str(scopes), expires_ms=now_ms() + lifetime_s * 1000,
                    username=user.username, patient=context.patient, encounter=context.encounter,
                    fhir_user=fhir_user,
                )
                body["refresh_token"] = refresh
        if user is not None and scopes.has("openid"):
            # fhirUser is the SMART claim for the fhirUser scope (profile was its SMART v1 name).
            shown = self.absolute_reference(fhir_user) if scopes.has("fhirUser") or scopes.has("profile") else None
            body["id_token"] = self.tokens.issue_id_token(client.client_id, user.username, shown, nonce)
        if context.patient is not None:
            body["patient"] = context.patient
            # This server has no EHR screen around the app that could show whose record is open.
            body["need_patient_banner"] = True
        if context.encounter is not None:
            body["encounter"] = context.encounter
        audit("token.issued", grant_type=grant_type, client_id=client.client_id,
              username=user.username if user is not None else None, scopes=claims.scope,
              patient=context.patient, refresh="refresh_token" in body, outcome="success",
              ip=request.data_in.client_ip)
        return body

    def absolute_reference(self, reference: str | None) -> str | None:
        """A user's FHIR reference as a full URL: SMART v1 clients (and Inferno) resolve the id_token's
        fhirUser without knowing which base a relative one would be relative to."""
        if reference is None or "://" in reference:
            return reference
        return f"{self.base.rstrip('/')}/{reference.lstrip('/')}"

    def refresh_lifetime(self, scopes: ScopeSet) -> int:
        """Seconds a new refresh token lives for these scopes; 0: none is issued."""
        if scopes.has("offline_access"):
            return self.tokens.refresh_lifetime_s
        if scopes.has("online_access"):
            return min(self.tokens.refresh_lifetime_s, ONLINE_ACCESS_LIFETIME_S)
        return 0

    # -- token lookup (introspection, revocation) --------------------------------------------------
    def access_token_info(self, value: str) -> IssuedToken | None:
        claims = self.tokens.verify(value)
        if claims is None:
            return None
        user = claims.sub if claims.sub != claims.client_id else None
        return IssuedToken("access_token", claims.client_id, claims.scope, claims.sub, user, claims.exp,
                           claims.iat, claims.jti, claims.patient, claims.encounter, claims.fhir_user, value)

    def refresh_token_info(self, value: str) -> IssuedToken | None:
        record = self.store.get_refresh(value)
        if record is None:
            return None
        return IssuedToken("refresh_token", record.client_id, record.scope, record.username or record.client_id,
                           record.username, record.expires_ms // 1000, None, None, record.patient,
                           record.encounter, record.fhir_user, value)


def _ascii(text: str) -> str:
    # OAuth error descriptions allow printable ASCII without '"' and '\\'.
    return "".join(c if 0x20 <= ord(c) <= 0x7E and c not in '"\\' else "'" if c == '"' else "?" for c in text)

