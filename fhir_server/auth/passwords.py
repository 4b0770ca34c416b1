"""Hashing and checking of secrets: argon2 for what people choose, SHA-256 for random tokens, TOTP.

Passwords and client secrets can be guessed, so they get a slow, salted argon2 hash.  Codes,
refresh tokens and API keys carry 256 random bits: a fast SHA-256 digest is enough and lets the
database find them by primary key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_hasher = PasswordHasher()

TOTP_ISSUER = "fhir-server"


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """True when password matches; an absent hash costs as much as a wrong password."""
    try:
        return _hasher.verify(password_hash or _dummy_hash(), password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """True when the hash was made with weaker parameters than the current ones."""
    try:
        return _hasher.check_needs_rehash(password_hash)
    except InvalidHashError:
        return False


_dummy: tuple[PasswordHasher, str] | None = None


def _dummy_hash() -> str:
    # Unknown users are checked against this, so response time does not reveal which names exist.
    # Made by the current hasher, so it costs what a real check costs.
    global _dummy
    if _dummy is None or _dummy[0] is not _hasher:
        _dummy = (_hasher, _hasher.hash(secrets.token_urlsafe(16)))
    return _dummy[1]


def hash_token(token: str) -> str:
    """SHA-256 hex digest of a high-entropy bearer secret (code, refresh token, API key)."""
    return hashlib.sha256(token.encode()).hexdigest()


def digests_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def new_secret(nbytes: int = 32) -> str:
    return secrets.token_urlsafe(nbytes)


def new_totp_secret() -> str:
    return pyotp.random_base32()


def totp_provisioning_uri(secret: str, username: str, issuer: str = TOTP_ISSUER) -> str:
    """The otpauth:// URI an authenticator app enrols from (usually shown as a QR code)."""
    return pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=issuer)


def verify_totp(secret: str, code: str) -> bool:
    # One step either side tolerates a phone clock off by up to 30 s.
    code = code.strip()
    return code.isdigit() and pyotp.TOTP(secret).verify(code, valid_window=1)
