"""Where the authorization server's endpoints live, derived from the public FHIR base URL.

The OAuth endpoints hang off the server root, beside the FHIR base rather than inside it:
base http://127.0.0.1:8080/fhir gives http://127.0.0.1:8080/oauth/token.
"""

from __future__ import annotations

_FHIR_SUFFIX = "/fhir"


def server_root(base_url: str) -> str:
    base = base_url.rstrip("/")
    return base.removesuffix(_FHIR_SUFFIX)


def issuer(base_url: str) -> str:
    # SMART clients compare the issuer with the FHIR base they launched against.
    return base_url.rstrip("/")


def authorize_url(base_url: str) -> str:
    return f"{server_root(base_url)}/oauth/authorize"


def token_url(base_url: str) -> str:
    return f"{server_root(base_url)}/oauth/token"


def introspect_url(base_url: str) -> str:
    return f"{server_root(base_url)}/oauth/introspect"


def revoke_url(base_url: str) -> str:
    return f"{server_root(base_url)}/oauth/revoke"


def jwks_url(base_url: str) -> str:
    return f"{server_root(base_url)}/oauth/jwks"
