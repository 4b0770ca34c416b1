"""Code systems whose codes match case-insensitively in token search (R4 search.html#token).

The index stores a code of such a system folded (``index_code``); a search compares folded too.
The rule everywhere: a code matches when it is equal, or when it is a case-insensitive system's
code equal after folding.  Identifier and ContactPoint values are never folded: their ``system``
names a namespace of identifiers, not a code system.

The set comes from ``case_insensitive_systems.json`` (scripts/gen_case_insensitive_systems.py).
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any


def _load() -> frozenset[str]:
    raw = resources.files("fhir_server.search").joinpath("case_insensitive_systems.json").read_bytes()
    return frozenset(json.loads(raw)["systems"])


CASE_INSENSITIVE_SYSTEMS: frozenset[str] = _load()
# For SQL IN lists: a stable order keeps statements (and their plan cache entries) identical.
CASE_INSENSITIVE_LIST: tuple[str, ...] = tuple(sorted(CASE_INSENSITIVE_SYSTEMS))


def fold(code: str) -> str:
    # casefold, not lower: it is Python's caseless matching (ß and ss compare equal).
    return code.casefold()


def is_case_insensitive(system: Any) -> bool:
    return isinstance(system, str) and system in CASE_INSENSITIVE_SYSTEMS


def index_code(system: Any, code: Any) -> Any:
    """A Coding's code as the token index stores it: folded when its system is case-insensitive."""
    if isinstance(code, str) and is_case_insensitive(system):
        return fold(code)
    return code


def code_matches(search_code: str, row_system: str | None, row_code: str | None) -> bool:
    """Whether an indexed code matches a searched one (the system is tested apart)."""
    if row_code == search_code:
        return True
    return is_case_insensitive(row_system) and row_code == fold(search_code)
