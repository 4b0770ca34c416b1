"""Tables of the OAuth 2 / SMART authorization server, on the same MetaData as the FHIR tables.

Everything a worker must agree on with the others lives here, never only in process memory.
Bearer secrets with high entropy (codes, refresh tokens, API keys) are stored as SHA-256 hex
digests; passwords and client secrets as argon2 hashes.  Times are epoch milliseconds, as in the
FHIR tables.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Index, PrimaryKeyConstraint, String, Table, Text

from fhir_server.storage.sql.schema import metadata

_ID = 128  # client ids and usernames
_REF = 255  # references such as Practitioner/123, and nonces
_FHIR_ID = 64  # FHIR logical ids (patient, encounter)
_DIGEST = 64  # SHA-256 hex

oauth_client = Table(
    "oauth_client",
    metadata,
    Column("client_id", String(_ID), primary_key=True),
    Column("secret_hash", String(255), nullable=True),
    Column("name", String(255), nullable=False),
    Column("grant_types", Text, nullable=False),  # space separated, as OAuth writes scopes
    Column("scopes", Text, nullable=False),
    Column("redirect_uris", Text, nullable=False),  # JSON list
    Column("jwks", Text, nullable=True),  # JSON JWK set (public keys only)
    Column("jwks_url", String(2048), nullable=True),
    Column("public", Boolean, nullable=False, default=False),
    Column("created_ms", BigInteger, nullable=False),
)

oauth_user = Table(
    "oauth_user",
    metadata,
    Column("username", String(_ID), primary_key=True),
    Column("password_hash", String(255), nullable=False),
    Column("fhir_user", String(_REF), nullable=True),
    Column("patient", String(_FHIR_ID), nullable=True),
    Column("totp_secret", String(64), nullable=True),
    Column("created_ms", BigInteger, nullable=False),
)

oauth_code = Table(
    "oauth_code",
    metadata,
    Column("code_hash", String(_DIGEST), primary_key=True),
    Column("client_id", String(_ID), nullable=False),
    Column("username", String(_ID), nullable=False),
    Column("redirect_uri", Text, nullable=True),
    Column("scope", Text, nullable=False),
    Column("code_challenge", String(128), nullable=True),
    Column("code_challenge_method", String(16), nullable=True),
    Column("nonce", String(_REF), nullable=True),
    Column("patient", String(_FHIR_ID), nullable=True),
    Column("encounter", String(_FHIR_ID), nullable=True),
    Column("expires_ms", BigInteger, nullable=False),
    Column("used", Boolean, nullable=False, default=False),
)

oauth_refresh = Table(
    "oauth_refresh",
    metadata,
    Column("token_hash", String(_DIGEST), primary_key=True),
    Column("client_id", String(_ID), nullable=False),
    Column("username", String(_ID), nullable=True),
    Column("scope", Text, nullable=False),
    Column("patient", String(_FHIR_ID), nullable=True),
    Column("encounter", String(_FHIR_ID), nullable=True),
    Column("fhir_user", String(_REF), nullable=True),
    Column("expires_ms", BigInteger, nullable=False),
    Column("revoked", Boolean, nullable=False, default=False),
    Column("replaced_by", String(_DIGEST), nullable=True),
    # revoke_all_for (logout, client removal, code replay) must not scan every token.
    Index("ix_oauth_refresh_client_user", "client_id", "username"),
)

# Revoked access-token ids; workers poll by revoked_ms to keep their in-memory deny list current.
oauth_revoked = Table(
    "oauth_revoked",
    metadata,
    Column("jti", String(_DIGEST), primary_key=True),
    Column("expires_ms", BigInteger, nullable=False),
    Column("revoked_ms", BigInteger, nullable=False),
    Index("ix_oauth_revoked_revoked_ms", "revoked_ms"),
)

# private_key_jwt assertion ids already seen: the primary key makes replay detection race-free.
oauth_assertion_jti = Table(
    "oauth_assertion_jti",
    metadata,
    Column("client_id", String(_ID), nullable=False),
    Column("jti", String(_REF), nullable=False),
    Column("expires_ms", BigInteger, nullable=False),
    PrimaryKeyConstraint("client_id", "jti", name="pk_oauth_assertion_jti"),
)

oauth_signing_key = Table(
    "oauth_signing_key",
    metadata,
    Column("kid", String(_DIGEST), primary_key=True),
    Column("private_pem", Text, nullable=False),
    Column("alg", String(16), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("active", Boolean, nullable=False, default=False),
)

oauth_api_key = Table(
    "oauth_api_key",
    metadata,
    Column("key_hash", String(_DIGEST), primary_key=True),
    Column("prefix", String(16), nullable=False),
    Column("client_id", String(_ID), nullable=False),
    Column("scopes", Text, nullable=True),  # None: the client's scopes
    Column("created_ms", BigInteger, nullable=False),
    Column("revoked", Boolean, nullable=False, default=False),
)

oauth_launch = Table(
    "oauth_launch",
    metadata,
    Column("launch_id", String(_DIGEST), primary_key=True),
    Column("patient", String(_FHIR_ID), nullable=True),
    Column("encounter", String(_FHIR_ID), nullable=True),
    Column("expires_ms", BigInteger, nullable=False),
)
