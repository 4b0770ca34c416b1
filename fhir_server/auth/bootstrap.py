"""First start in SMART mode: a sandbox client and a demo user, so the server is usable at once."""

from __future__ import annotations

import shlex

from fhir_server.auth import passwords
from fhir_server.auth.store import AlreadyExists, AuthStore
from fhir_server.auth.urls import token_url

SANDBOX_CLIENT = "sandbox"
DEMO_USER = "demo"
SANDBOX_REDIRECT_URI = "http://localhost:3000/callback"
SANDBOX_GRANT_TYPES = ("authorization_code", "password", "client_credentials", "refresh_token")
# SMART v2 (cruds) and v1 (read/write/*) forms at every level, plus the launch and OpenID scopes.
SANDBOX_SCOPES = " ".join([
    "openid", "fhirUser", "profile", "launch", "launch/patient", "launch/encounter",
    "offline_access", "online_access",
    *(f"{level}/*.{access}" for level in ("patient", "user", "system")
      for access in ("cruds", "rs", "read", "write", "*")),
])
_DEMO_TOKEN_SCOPE = "openid fhirUser offline_access user/*.cruds"


def ensure_sandbox(store: AuthStore, base_url: str) -> str | None:
    """Create the sandbox client and demo user when no client exists yet; None when clients exist.

    The returned text holds the plaintext secret and password: print it to the console once,
    never send it to a log.  Safe when several workers start at once: one insert wins."""
    if store.count_clients():
        return None
    secret = passwords.new_secret()
    try:
        store.add_client(
            SANDBOX_CLIENT, name="Sandbox client", secret=secret, grant_types=SANDBOX_GRANT_TYPES,
            scopes=SANDBOX_SCOPES, redirect_uris=[SANDBOX_REDIRECT_URI],
        )
    except AlreadyExists:
        return None
    password = passwords.new_secret(12)
    try:
        store.add_user(DEMO_USER, password)
    except AlreadyExists:
        return _message(base_url, secret, None)  # kept from an earlier sandbox: not ours to reset
    return _message(base_url, secret, password)


def _message(base_url: str, secret: str, password: str | None) -> str:
    shown = password if password is not None else "(unchanged: the user already existed)"
    curl = " ".join([
        "curl -s", "-u", shlex.quote(f"{SANDBOX_CLIENT}:{secret}"),
        "-d grant_type=password", f"-d username={DEMO_USER}",
        "--data-urlencode", shlex.quote(f"password={password if password is not None else 'PASSWORD'}"),
        "--data-urlencode", shlex.quote(f"scope={_DEMO_TOKEN_SCOPE}"),
        shlex.quote(token_url(base_url)),
    ])
    return "\n".join([
        "SMART sandbox created (shown once; only hashes are stored):",
        f"  client_id:     {SANDBOX_CLIENT}",
        f"  client_secret: {secret}",
        f"  username:      {DEMO_USER}",
        f"  password:      {shown}",
        "Get a token:",
        f"  {curl}",
    ])
