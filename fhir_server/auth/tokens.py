"""Access tokens (RFC 9068 JWTs) and OpenID Connect id_tokens, signed RS256 by the KeyRing.

Verification needs no database on the happy path: keys are cached by the KeyRing, and revoked
token ids are mirrored in memory, refreshed from the shared revocation list at most every
revocation_poll_s, so a revocation made by any worker takes effect everywhere within about that
interval.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import GuestProtocol, RSAKey

from fhir_server.auth.keys import ALG, KeyRing
from fhir_server.auth.store import AuthStore
from fhir_server.auth.urls import issuer
from fhir_server.model.instant import now_ms

if TYPE_CHECKING:
    from fhir_server.config import Settings

log = logging.getLogger(__name__)

ACCESS_TOKEN_TYPE = "at+jwt"  # RFC 9068: an id_token or foreign JWT cannot pass as an access token
DEFAULT_LEEWAY_S = 30
DEFAULT_ACCESS_LIFETIME_S = 3600
DEFAULT_REFRESH_LIFETIME_S = 30 * 24 * 3600
DEFAULT_CODE_LIFETIME_S = 60  # RFC 6749 §4.1.2 recommends at most ten minutes
# Revocations are re-read with this overlap: rows committed late or stamped by a node whose clock
# lags would otherwise fall before the point the previous poll reached.
_POLL_OVERLAP_MS = 30_000


@dataclass(frozen=True)
class AccessClaims:
    jti: str
    client_id: str
    sub: str  # the username, or the client id for client_credentials and API-key grants
    scope: str
    patient: str | None
    encounter: str | None
    fhir_user: str | None
    exp: int
    iat: int
    iss: str
    aud: str

    @property
    def scopes(self) -> tuple[str, ...]:
        return tuple(self.scope.split())


class _Revocations:
    """In-memory mirror of oauth_revoked, polled from the database."""

    def __init__(self, store: AuthStore, poll_s: float, keep_ms: int) -> None:
        self._store = store
        self._poll_s = poll_s
        self._keep_ms = keep_ms  # a revocation older than a token's whole life can no longer matter
        self._revoked: dict[str, int] = {}  # jti -> revoked_ms
        self._polled_ms: int | None = None
        self._polled_at = float("-inf")
        self._lock = threading.Lock()

    def is_revoked(self, jti: str) -> bool:
        if time.monotonic() - self._polled_at >= self._poll_s:
            self.refresh(wait=self._polled_ms is None)
        return jti in self._revoked

    def add(self, jti: str) -> None:
        self._revoked[jti] = now_ms()

    def refresh(self, *, wait: bool = True) -> None:
        # One thread polls; the others go on with the set as it is, at most one poll interval old.
        if not self._lock.acquire(blocking=wait):
            return
        try:
            started = now_ms()
            since = 0 if self._polled_ms is None else self._polled_ms - _POLL_OVERLAP_MS
            try:
                rows = self._store.revoked_since(since)
            except Exception:  # noqa: BLE001 - tokens must keep verifying while the database is away
                log.warning("could not refresh the token revocation list", exc_info=True)
                self._polled_at = time.monotonic()
                return
            # Mutated in place, never replaced: a concurrent add() must not be lost.
            self._revoked.update(rows)
            horizon = started - self._keep_ms
            for jti, ms in self._revoked.copy().items():
                if ms < horizon:
                    self._revoked.pop(jti, None)
            self._polled_ms = started
            self._polled_at = time.monotonic()
        finally:
            self._lock.release()


class TokenService:
    def __init__(
        self,
        store: AuthStore,
        keyring: KeyRing,
        issuer: str,
        audience: str,
        access_lifetime_s: int = DEFAULT_ACCESS_LIFETIME_S,
        *,
        id_token_lifetime_s: int | None = None,
        refresh_lifetime_s: int = DEFAULT_REFRESH_LIFETIME_S,
        code_lifetime_s: int = DEFAULT_CODE_LIFETIME_S,
        revocation_poll_s: float = 1.0,
        leeway_s: int = DEFAULT_LEEWAY_S,
    ) -> None:
        """refresh_lifetime_s and code_lifetime_s are not used here; they travel with the service
        so the endpoints that store refresh tokens and codes find every lifetime in one place."""
        self._store = store
        self.keyring = keyring
        self.issuer = issuer
        self.audience = audience
        self.access_lifetime_s = access_lifetime_s
        self.id_token_lifetime_s = id_token_lifetime_s or access_lifetime_s
        self.refresh_lifetime_s = refresh_lifetime_s
        self.code_lifetime_s = code_lifetime_s
        self._registry = jwt.JWTClaimsRegistry(
            leeway=leeway_s,
            iss={"essential": True, "value": issuer},
            aud={"essential": True, "value": audience},
            exp={"essential": True},
            iat={"essential": True},
            sub={"essential": True},
            jti={"essential": True},
            client_id={"essential": True},
        )
        self._revocations = _Revocations(store, revocation_poll_s, (access_lifetime_s + 2 * leeway_s) * 1000)

    @classmethod
    def from_settings(cls, store: AuthStore, keyring: KeyRing, settings: Settings) -> TokenService:
        """Issuer and audience are the public FHIR base (SMART's aud); lifetimes from FHIR_* settings."""
        base = settings.fhir_base
        return cls(
            store, keyring, issuer(base), base,
            getattr(settings, "access_token_lifetime", DEFAULT_ACCESS_LIFETIME_S),
            refresh_lifetime_s=getattr(settings, "refresh_token_lifetime", DEFAULT_REFRESH_LIFETIME_S),
            code_lifetime_s=getattr(settings, "authorization_code_lifetime", DEFAULT_CODE_LIFETIME_S),
            revocation_poll_s=getattr(settings, "token_revocation_poll_seconds", 1.0),
        )

    # -- access tokens -----------------------------------------------------------------------
    def issue_access(
        self,
        *,
        client_id: str,
        sub: str,
        scope: str,
        patient: str | None = None,
        encounter: str | None = None,
        fhir_user: str | None = None,
    ) -> tuple[str, AccessClaims]:
        iat = int(time.time())
        claims = AccessClaims(
            jti=secrets.token_urlsafe(18), client_id=client_id, sub=sub, scope=" ".join(scope.split()),
            patient=patient, encounter=encounter, fhir_user=fhir_user, exp=iat + self.access_lifetime_s,
            iat=iat, iss=self.issuer, aud=self.audience,
        )
        payload: dict[str, Any] = {
            "iss": claims.iss, "sub": claims.sub, "aud": claims.aud, "exp": claims.exp, "iat": claims.iat,
            "jti": claims.jti, "client_id": claims.client_id, "scope": claims.scope,
        }
        for name, value in (("patient", patient), ("encounter", encounter), ("fhirUser", fhir_user)):
            if value is not None:
                payload[name] = value
        return self._sign(payload, ACCESS_TOKEN_TYPE), claims

    def verify(self, token: str) -> AccessClaims | None:
        """The claims of a valid, unrevoked access token of this server; None for anything else."""
        try:
            decoded = jwt.decode(token, self._verification_key, algorithms=[ALG])
            if decoded.header.get("alg") != ALG or decoded.header.get("typ") != ACCESS_TOKEN_TYPE:
                return None
            self._registry.validate(decoded.claims)
            claims = _access_claims(decoded.claims, self.audience)
        except (JoseError, ValueError, TypeError, KeyError):
            return None
        return None if self._revocations.is_revoked(claims.jti) else claims

    def is_revoked(self, jti: str) -> bool:
        """The in-memory revocation check of verify(), for callers that cache verified claims."""
        return self._revocations.is_revoked(jti)

    def revoke(self, jti: str, exp: int) -> None:
        """Deny a token (exp in epoch seconds) on every worker; on this one at once."""
        self._store.revoke_jti(jti, exp * 1000)
        self._revocations.add(jti)

    def refresh_revocations(self) -> None:
        """Poll the shared revocation list now (e.g. from a background task instead of on request)."""
        self._revocations.refresh()

    # -- OpenID Connect ----------------------------------------------------------------------
    def issue_id_token(
        self,
        client_id: str,
        sub: str,
        fhir_user: str | None = None,
        nonce: str | None = None,
        auth_time: int | None = None,
    ) -> str:
        iat = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer, "sub": sub, "aud": client_id, "exp": iat + self.id_token_lifetime_s, "iat": iat,
        }
        for name, value in (("fhirUser", fhir_user), ("nonce", nonce), ("auth_time", auth_time)):
            if value is not None:
                claims[name] = value
        return self._sign(claims, "JWT")

    # -- opaque secrets ----------------------------------------------------------------------
    @staticmethod
    def new_refresh_token() -> str:
        return secrets.token_urlsafe(32)

    @staticmethod
    def new_code() -> str:
        return secrets.token_urlsafe(32)

    # -- internals ---------------------------------------------------------------------------
    def _sign(self, claims: dict[str, Any], typ: str) -> str:
        kid, key = self.keyring.signing_key()
        return jwt.encode({"alg": ALG, "kid": kid, "typ": typ}, claims, key, algorithms=[ALG])

    def _verification_key(self, token: GuestProtocol) -> RSAKey:
        kid = token.headers().get("kid")
        key = self.keyring.public_key(kid) if isinstance(kid, str) else None
        if key is None:
            raise ValueError("unknown signing key")
        return key


def _access_claims(claims: dict[str, Any], audience: str) -> AccessClaims:
    def text(name: str) -> str | None:
        value = claims.get(name)
        if value is not None and not isinstance(value, str):
            raise TypeError(name)
        return value

    # The registry has checked presence and types of the registered claims, and that aud names us.
    return AccessClaims(
        jti=claims["jti"], client_id=str(text("client_id")), sub=claims["sub"], scope=text("scope") or "",
        patient=text("patient"), encounter=text("encounter"), fhir_user=text("fhirUser"),
        exp=int(claims["exp"]), iat=int(claims["iat"]), iss=claims["iss"], aud=audience,
    )
