"""The server's token-signing keys: RSA, persisted in the database, rotatable, published as a JWKS.

Each worker caches the keys.  The active (signing) key is re-read every refresh_s so a rotation
made by another worker or by `fhir-server signing-keys rotate` takes over everywhere; a token
signed with a kid this worker has not seen yet triggers a reload at once.
"""

from __future__ import annotations

import threading
import time
from typing import Any, cast

from joserfc.errors import JoseError
from joserfc.jwk import ECKey, Key, KeySet, KeySetSerialization, RSAKey

from fhir_server.auth.store import AuthStore, SigningKeyRecord
from fhir_server.model.instant import now_ms

ALG = "RS256"
CLIENT_ASSERTION_ALGS = ("RS384", "ES384")  # what SMART asks private_key_jwt clients to sign with
_RSA_BITS = 2048


def generate_key() -> tuple[str, str]:
    """A new RSA key as (kid, private PEM); the kid is its RFC 7638 thumbprint."""
    key = RSAKey.generate_key(_RSA_BITS, private=True)
    return key.thumbprint(), key.as_pem(private=True).decode()


class KeyRing:
    def __init__(
        self,
        store: AuthStore,
        *,
        refresh_s: float = 60.0,
        unknown_kid_reload_s: float = 1.0,
        retire_after_s: float | None = None,
    ) -> None:
        """unknown_kid_reload_s: kids arrive from the network, so an unknown one reloads the keys at
        most this often.  retire_after_s: drop a key from the JWKS once a newer key has been signing
        for that long (more than the longest token lifetime plus refresh_s); None keeps every key."""
        self._store = store
        self._refresh_s = refresh_s
        self._unknown_kid_reload_s = unknown_kid_reload_s
        self._retire_after_s = retire_after_s
        self._lock = threading.Lock()
        self._signing: tuple[str, RSAKey] | None = None
        self._public: dict[str, RSAKey] = {}
        self._loaded_at = float("-inf")

    def signing_key(self) -> tuple[str, RSAKey]:
        """(kid, private key) to sign with; creates and stores the first key when there is none."""
        signing = self._signing
        if signing is None or time.monotonic() - self._loaded_at > self._refresh_s:
            signing = self._reload(self._refresh_s)
        return signing

    def public_key(self, kid: str) -> RSAKey | None:
        key = self._public.get(kid)
        if key is None and time.monotonic() - self._loaded_at >= self._unknown_kid_reload_s:
            self._reload(self._unknown_kid_reload_s)
            key = self._public.get(kid)
        return key

    def jwks(self) -> dict[str, Any]:
        self.signing_key()  # loads the keys, creating the first one if needed
        keys = []
        for kid, key in self._public.items():
            jwk = key.as_dict(private=False)
            keys.append({**jwk, "kid": kid, "alg": ALG, "use": "sig"})
        return {"keys": keys}

    def rotate(self) -> str:
        """Make a new key the signing key; older keys keep verifying the tokens they signed."""
        kid, pem = generate_key()
        self._store.add_signing_key(kid, pem, ALG)
        self._reload(None)
        return kid

    def _reload(self, max_age_s: float | None) -> tuple[str, RSAKey]:
        with self._lock:
            # Threads that queued on the lock find the keys another one just loaded.
            if (max_age_s is not None and self._signing is not None
                    and time.monotonic() - self._loaded_at <= max_age_s):
                return self._signing
            records = self._store.signing_keys()
            active = next((r for r in records if r.active), None)
            if active is None:
                active = self._store.ensure_signing_key(generate_key, ALG)
                records = self._store.signing_keys()
            public: dict[str, RSAKey] = {}
            for record in self._published(records):
                public[record.kid] = _public_of(record, self._public.get(record.kid))
            signing = self._signing
            if signing is None or signing[0] != active.kid:
                signing = (active.kid, RSAKey.import_key(active.private_pem))
            self._public, self._signing = public, signing
            self._loaded_at = time.monotonic()
            return signing

    def _published(self, records: list[SigningKeyRecord]) -> list[SigningKeyRecord]:
        """Keys still needed to verify tokens (records come newest first)."""
        if self._retire_after_s is None:
            return records
        cutoff = now_ms() - int(self._retire_after_s * 1000)
        kept: list[SigningKeyRecord] = []
        successor_ms: int | None = None  # when the next newer key began to sign
        for record in records:
            if record.active or successor_ms is None or successor_ms > cutoff:
                kept.append(record)
            successor_ms = record.created_ms
        return kept


def _public_of(record: SigningKeyRecord, cached: RSAKey | None) -> RSAKey:
    # Parsing a PEM costs about a millisecond; keys never change, so reuse the parsed one.
    if cached is not None:
        return cached
    return RSAKey.import_key(RSAKey.import_key(record.private_pem).as_dict(private=False))


def client_jwks(data: Any) -> dict[str, Any]:
    """The public part of a client's JWK set, checked to hold only keys for RS384/ES384 assertions.

    Raises ValueError saying what is wrong; private members given by mistake are dropped."""
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list) or not data["keys"]:
        raise ValueError('a JWK set is a JSON object with a non-empty "keys" list')
    try:
        keys = KeySet.import_key_set(cast(KeySetSerialization, data))
    except (JoseError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a valid JWK set: {exc}") from exc
    for key in keys.keys:
        problem = _assertion_key_problem(key)
        if problem:
            raise ValueError(f"key {key.kid or '(no kid)'}: {problem}")
    return dict(keys.as_dict(private=False))


def _assertion_key_problem(key: Key) -> str | None:
    alg = key.get("alg")
    if key.get("use") not in (None, "sig"):
        return "its use is not sig"
    if isinstance(key, RSAKey):
        if alg not in (None, "RS384"):
            return f"alg {alg} where RS384 is expected"
        if key.raw_value.key_size < _RSA_BITS:
            return f"RSA keys need at least {_RSA_BITS} bits"
        return None
    if isinstance(key, ECKey):
        if key.curve_name != "P-384":
            return f"curve {key.curve_name} where P-384 (ES384) is expected"
        return None if alg in (None, "ES384") else f"alg {alg} where ES384 is expected"
    return f"{key.key_type} keys cannot sign RS384 or ES384 assertions"
