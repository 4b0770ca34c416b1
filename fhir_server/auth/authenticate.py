"""Who is calling: the bearer token (or API key) of a request, turned into its AccessPolicy.

The one place the FHIR API authenticates.  Access tokens are JWTs verified without a database
hit; verified claims are cached per token until they expire, but every use still consults the
revocation list (in memory, refreshed from the database), so a revoked token stops working
within the revocation poll interval on every worker.  API keys are looked up in the database
and cached for a few seconds (a revoked key works at most that long on other workers).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict

from fhir_server.auth.policy import AccessPolicy, Principal
from fhir_server.auth.scopes import ScopeError, parse_scopes
from fhir_server.auth.services import AuthServices
from fhir_server.auth.store import API_KEY_PREFIX
from fhir_server.errors import FhirError

log = logging.getLogger("fhir_server.auth.audit")

_CACHE_SIZE = 4096
_API_KEY_TTL_S = 5.0


def _unauthorised(message: str, *, invalid: bool) -> FhirError:
    challenge = 'Bearer realm="fhir"' + (', error="invalid_token"' if invalid else "")
    return FhirError(401, message, code="login", headers={"WWW-Authenticate": challenge})


class Authenticator:
    def __init__(self, services: AuthServices) -> None:
        self.services = services
        self._lock = threading.Lock()
        # token -> (policy, jti or None for API keys, valid until epoch seconds)
        self._cache: OrderedDict[str, tuple[AccessPolicy | None, str | None, float]] = OrderedDict()

    def policy(self, headers: dict[str, str]) -> AccessPolicy:
        """The caller's policy; 401 (with WWW-Authenticate) when there is no valid credential."""
        token = self._credential(headers)
        now = time.time()
        with self._lock:
            hit = self._cache.get(token)
            if hit is not None:
                self._cache.move_to_end(token)
        if hit is not None and hit[2] > now:
            policy, jti, _ = hit
            if policy is not None and (jti is None or not self.services.tokens.is_revoked(jti)):
                return policy
            if policy is None:
                raise _unauthorised("The API key is not valid", invalid=True)
        policy, jti, until = self._verify(token, now)
        with self._lock:
            self._cache[token] = (policy, jti, until)
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        if policy is None:
            log.info("token refused: invalid, expired or revoked credential")
            raise _unauthorised("The access token is not valid (expired, revoked or not issued here)", invalid=True)
        return policy

    @staticmethod
    def _credential(headers: dict[str, str]) -> str:
        auth = headers.get("authorization")
        if auth:
            scheme, _, value = auth.strip().partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise _unauthorised("Authorization must be 'Bearer <access token>'", invalid=True)
            return value.strip()
        key = headers.get("x-api-key")
        if key:
            return key.strip()
        raise _unauthorised("This server needs an access token: Authorization: Bearer <token>", invalid=False)

    def _verify(self, token: str, now: float) -> tuple[AccessPolicy | None, str | None, float]:
        base = self.services.base
        if token.startswith(API_KEY_PREFIX):
            record = self.services.store.lookup_api_key(token)
            until = now + _API_KEY_TTL_S
            if record is None:
                return None, None, until
            client = self.services.store.get_client(record.client_id)
            if client is None:
                return None, None, until
            scopes = parse_scopes(record.scopes if record.scopes is not None else client.scopes)
            return AccessPolicy(Principal(client.client_id, None, scopes, None, None, None), base), None, until
        claims = self.services.tokens.verify(token)
        if claims is None:
            # Remember the refusal briefly: a client retrying a bad token must not cost a verify each time.
            return None, None, now + 1.0
        try:
            scopes = parse_scopes(claims.scope)
        except ScopeError:
            return None, None, now + 1.0
        principal = Principal(claims.client_id, claims.sub, scopes, claims.patient, claims.encounter, claims.fhir_user)
        return AccessPolicy(principal, base), claims.jti, float(claims.exp)
