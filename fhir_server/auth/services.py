"""The authorisation services of one server process, built once at startup (FHIR_AUTH=smart).

Everything they share with other processes (clients, users, codes, refresh tokens, revocations,
signing keys) lives in the database; what they keep in memory are caches that rebuild themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fhir_server.auth.keys import KeyRing
from fhir_server.auth.store import AuthStore
from fhir_server.auth.tokens import TokenService

if TYPE_CHECKING:
    from fhir_server.config import Settings
    from fhir_server.storage.base import Backend


@dataclass(slots=True)
class AuthServices:
    store: AuthStore
    keyring: KeyRing
    tokens: TokenService
    settings: Settings
    base: str  # the public FHIR base URL: the tokens' audience

    @classmethod
    def open(cls, backend: Backend, settings: Settings) -> AuthServices:
        engine = getattr(backend, "engine", None)
        if engine is None:
            raise RuntimeError("FHIR_AUTH=smart needs a SQL backend to keep clients, users and tokens in")
        store = AuthStore(engine)
        keyring = KeyRing(store)
        return cls(store, keyring, TokenService.from_settings(store, keyring, settings), settings,
                   settings.fhir_base)
