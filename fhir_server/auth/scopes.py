"""The SMART on FHIR scope language (App Launch 1.0 and 2.0): parsing, comparing, narrowing.

Resource scopes are ``<context>/<type>.<permissions>[?<query>]``:

- context ``patient``, ``user`` or ``system``; type a served resource type or ``*``;
- SMART v1 permissions ``read`` (= ``rs``), ``write`` (= ``cud``) or ``*`` (= ``cruds``);
- SMART v2 permissions: the letters ``c r u d s``, each at most once and in that order, optionally
  followed by a granular ``?query`` (v2 only), e.g.
  ``patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs``.

A token that starts with ``patient/``, ``user/`` or ``system/`` and is not a valid resource scope
is an error (``ScopeError``): a typo there would otherwise silently grant less than was meant.
Every other token is kept verbatim: the SMART ones (``openid``, ``launch/patient``, ...) and
unknown ones ("other"), which a server may ignore or refuse.

Coverage treats the permissions of scopes with the same context, type and query as a union: two
scopes ``.rs`` and ``.cud`` on a type imply ``.cruds`` on it, because grants are a union anyway.
Granular queries are compared literally (as sets of name/value pairs): a scope without a query
implies any query on its type; a scope with a query implies only the same query.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, cast
from urllib.parse import parse_qsl

from fhir_server.model.registry import served_types

Context = Literal["patient", "user", "system"]
CONTEXTS: tuple[Context, ...] = ("patient", "user", "system")
PERMISSION_ORDER = "cruds"
ALL_PERMISSIONS = frozenset(PERMISSION_ORDER)

# SMART v1 words and the v2 permissions they stand for.
V1_PERMISSIONS: dict[str, frozenset[str]] = {
    "read": frozenset("rs"),
    "write": frozenset("cud"),
    "*": ALL_PERMISSIONS,
}
_V1_WORD = {perms: word for word, perms in V1_PERMISSIONS.items()}
_V2_LETTERS = re.compile(r"c?r?u?d?s?")

# The non-resource scopes SMART defines; anything else is "other".
KNOWN_SCOPES = frozenset({
    "openid", "fhirUser", "profile", "launch", "launch/patient", "launch/encounter",
    "offline_access", "online_access",
})


class ScopeError(ValueError):
    """A token that looks like a resource scope (``patient/``, ``user/``, ``system/``) but is invalid."""

    def __init__(self, token: str, reason: str) -> None:
        super().__init__(f"Invalid scope '{token}': {reason}")
        self.token = token
        self.reason = reason


@lru_cache(maxsize=1)
def _served() -> frozenset[str]:
    return frozenset(served_types())


def letters(permissions: Iterable[str]) -> str:
    """Permissions in SMART v2 order (``{"s", "r"}`` -> ``"rs"``)."""
    perms = set(permissions)
    return "".join(p for p in PERMISSION_ORDER if p in perms)


@dataclass(frozen=True, slots=True)
class Scope:
    context: Context
    resource_type: str  # a served type or "*"
    permissions: frozenset[str]  # subset of "cruds"
    # SMART v2 granular query, in the order written, e.g.
    # (("category", "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs"),)
    params: tuple[tuple[str, str], ...]
    version: int  # 1 or 2
    raw: str

    @property
    def query(self) -> str:
        """The granular query as written (without the ``?``), or ``""``."""
        return self.raw.partition("?")[2]

    @property
    def params_key(self) -> frozenset[tuple[str, str]]:
        # Repeated parameters are AND-ed in a search, so order never matters; a set compares them.
        return frozenset(self.params)


def make_scope(
    context: Context,
    resource_type: str,
    permissions: frozenset[str],
    query_from: Scope | None = None,
    *,
    v1: bool = False,
) -> Scope:
    """A scope built from parts, with its canonical ``raw``; the query (params) is copied verbatim
    from ``query_from``.  With ``v1`` and no query the v1 word is used when the permissions have one
    (so that a v1 client gets back the form it asked in); otherwise v2 letters."""
    query = query_from.query if query_from is not None else ""
    params = query_from.params if query_from is not None else ()
    if v1 and not query and permissions in _V1_WORD:
        suffix, version = _V1_WORD[permissions], 1
    else:
        suffix, version = letters(permissions), 2
    raw = f"{context}/{resource_type}.{suffix}" + (f"?{query}" if query else "")
    return Scope(context, resource_type, permissions, params, version, raw)


def parse_scope(token: str) -> Scope:
    """One resource scope; ``ScopeError`` when ``token`` is not one."""
    head, qmark, query = token.partition("?")
    context, slash, rest = head.partition("/")
    if not slash or context not in CONTEXTS:
        raise ScopeError(token, "a resource scope is patient/, user/ or system/ followed by Type.permissions")
    resource_type, dot, perm = rest.partition(".")
    if not dot:
        raise ScopeError(token, "missing '.' before the permissions")
    if resource_type != "*" and resource_type not in _served():
        raise ScopeError(token, f"'{resource_type}' is not a resource type this server serves")
    params: tuple[tuple[str, str], ...] = ()
    if perm in V1_PERMISSIONS:
        if qmark:
            raise ScopeError(token, "only SMART v2 scopes (.cruds letters) may carry a ?query")
        permissions, version = V1_PERMISSIONS[perm], 1
    elif perm and _V2_LETTERS.fullmatch(perm):
        permissions, version = frozenset(perm), 2
        if qmark:
            params = _parse_query(token, query)
    else:
        raise ScopeError(token, f"'{perm}' is neither read, write, * nor c r u d s letters in that order")
    return Scope(cast(Context, context), resource_type, permissions, params, version, token)


def _parse_query(token: str, query: str) -> tuple[tuple[str, str], ...]:
    if not query:
        raise ScopeError(token, "empty ?query")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise ScopeError(token, f"malformed query '{query}'") from None
    for name, value in pairs:
        if not name or not value:
            raise ScopeError(token, f"every query parameter needs a name and a value, got '{query}'")
    return tuple(pairs)


def is_resource_scope(token: str) -> bool:
    return token.startswith(("patient/", "user/", "system/"))


class ScopeSet:
    """The scopes of a request or a token: resource scopes plus the other tokens, in their order.

    Immutable; equal when they hold the same tokens (order aside)."""

    __slots__ = ("_scopes", "_tokens", "_words")

    def __init__(self, items: Iterable[Scope | str] = ()) -> None:
        tokens: list[str] = []
        scopes: list[Scope] = []
        words: list[str] = []
        seen: set[str] = set()
        for item in items:
            token = item.raw if isinstance(item, Scope) else item
            if token in seen:
                continue
            if isinstance(item, Scope):
                scopes.append(item)
            elif is_resource_scope(item):
                scopes.append(parse_scope(item))
            else:
                words.append(item)
            seen.add(token)
            tokens.append(token)
        self._tokens = tuple(tokens)
        self._scopes = tuple(scopes)
        self._words = frozenset(words)

    # -- views ----------------------------------------------------------------------------------
    @property
    def tokens(self) -> tuple[str, ...]:
        return self._tokens

    @property
    def resource_scopes(self) -> tuple[Scope, ...]:
        return self._scopes

    @property
    def non_resource(self) -> tuple[str, ...]:
        """The other tokens in order: SMART's (openid, launch/patient, ...) and unknown ones."""
        return tuple(t for t in self._tokens if t in self._words)

    @property
    def other(self) -> tuple[str, ...]:
        """Tokens that are neither resource scopes nor SMART's: a server may ignore or refuse them."""
        return tuple(t for t in self._tokens if t in self._words and t not in KNOWN_SCOPES)

    def has(self, token: str) -> bool:
        """Whether a non-resource scope (``openid``, ``launch/patient``, an other token) is present."""
        return token in self._words

    def __str__(self) -> str:
        return " ".join(self._tokens)

    def __repr__(self) -> str:
        return f"ScopeSet({str(self)!r})"

    def __iter__(self) -> Iterator[str]:
        return iter(self._tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ScopeSet) and set(self._tokens) == set(other._tokens)

    def __hash__(self) -> int:
        return hash(frozenset(self._tokens))

    # -- decisions ------------------------------------------------------------------------------
    def allows(self, context: str | None, resource_type: str, permission: str) -> bool:
        """Some scope of ``context`` (any context when None) grants ``permission`` on the type.

        Granular queries are ignored: this answers "may it ever", not "may it on this resource"."""
        return any(
            (context is None or s.context == context)
            and s.resource_type in (resource_type, "*")
            and permission in s.permissions
            for s in self._scopes
        )

    def _granted(self, scope: Scope) -> frozenset[str]:
        """The permissions the scopes here give on the context, type and query of ``scope``."""
        granted: set[str] = set()
        for s in self._scopes:
            if (
                s.context == scope.context
                and s.resource_type in (scope.resource_type, "*")
                and (not s.params or s.params_key == scope.params_key)
            ):
                granted |= s.permissions
        return frozenset(granted)

    def covers(self, other: ScopeSet) -> bool:
        """Everything ``other`` grants is granted here (refresh-token narrowing).

        A resource scope of ``other`` is implied when scopes here of the same context, on the same
        type or ``*``, without a query or with the same query, together hold its permissions.
        Non-resource tokens must be present verbatim."""
        if any(not self.has(t) for t in other._words):
            return False
        return all(s.permissions <= self._granted(s) for s in other._scopes)

    def restrict_to(self, allowed: ScopeSet) -> ScopeSet:
        """The part of these (requested) scopes that ``allowed`` grants, in the requested order.

        A requested scope that ``allowed`` covers is kept verbatim.  Otherwise it is replaced by its
        intersections with the allowed scopes: the covered permissions (asked ``patient/*.cruds``,
        allowed ``patient/*.rs`` gives ``patient/*.rs``), on the narrower type (asked
        ``patient/*.rs``, allowed ``patient/Observation.rs`` gives ``patient/Observation.rs``) and
        the query of whichever has one (two different queries don't intersect: dropped).
        Non-resource tokens survive only when ``allowed`` has them.  The result is always covered
        by both this set and ``allowed``."""
        by_raw = {s.raw: s for s in self._scopes}
        out: list[Scope | str] = []
        for token in self._tokens:
            if token in self._words:
                if allowed.has(token):
                    out.append(token)
                continue
            scope = by_raw[token]
            if scope.permissions <= allowed._granted(scope):
                out.append(scope)
            else:
                out.extend(_intersections(scope, allowed._scopes))
        return ScopeSet(out)


def _intersect(asked: Scope, allowed: Scope) -> Scope | None:
    if asked.context != allowed.context:
        return None
    if asked.resource_type == "*":
        resource_type = allowed.resource_type
    elif allowed.resource_type in ("*", asked.resource_type):
        resource_type = asked.resource_type
    else:
        return None
    if asked.params and allowed.params and asked.params_key != allowed.params_key:
        return None
    permissions = asked.permissions & allowed.permissions
    if not permissions:
        return None
    return make_scope(asked.context, resource_type, permissions, asked if asked.params else allowed,
                      v1=asked.version == 1)


def _implies(q: Scope, p: Scope) -> bool:
    return (
        q.context == p.context
        and q.resource_type in ("*", p.resource_type)
        and (not q.params or q.params_key == p.params_key)
        and p.permissions <= q.permissions
    )


def _intersections(asked: Scope, allowed: Iterable[Scope]) -> list[Scope]:
    # Pieces with the same type and query merge their permissions; then a piece that another
    # piece implies is left out, so that the result has no redundant tokens.
    merged: dict[tuple[str, frozenset[tuple[str, str]]], Scope] = {}
    for a in allowed:
        piece = _intersect(asked, a)
        if piece is None:
            continue
        key = (piece.resource_type, piece.params_key)
        prev = merged.get(key)
        if prev is not None:
            piece = make_scope(asked.context, piece.resource_type, prev.permissions | piece.permissions,
                               piece, v1=asked.version == 1)
        merged[key] = piece
    pieces = list(merged.values())
    return [p for p in pieces if not any(q is not p and _implies(q, p) for q in pieces)]


def parse_scopes(text: str) -> ScopeSet:
    """The scopes of a ``scope`` parameter or claim (space separated); ``ScopeError`` names the
    first invalid resource scope."""
    return ScopeSet(text.split())
