"""Value set expansion from the packages' own ValueSets and CodeSystems, and code membership.

There is no terminology server.  A value set is expanded from what the loaded packages hold:

* ``include`` with ``concept`` lists, with whole code systems whose CodeSystem is loaded and
  complete, with ``is-a`` / ``descendent-of`` / ``is-not-a`` / ``in`` / ``=`` filters on the
  ``concept`` property of such code systems, with other value sets (``valueSet``), and ``exclude``
  likewise;
* the large external terminologies in ``SYNTAX_ONLY`` are not enumerable: a whole-system or filtered
  include of one of them accepts any code of that system whose *syntax* is right ("syntax only");
  an include that lists their concepts is enumerated as usual;
* anything else (a value set or code system no loaded package defines, such as the VSAC value sets
  US Core 6.1.0 imports for race, ethnicity and birth sex, or a filter on another property) leaves
  that part "open": its codes are neither accepted nor refused, unless the code system is loaded and
  complete and the code is not in it (so a made-up cdcrec code is refused even there).

``SYNTAX_ONLY``: LOINC, SNOMED CT (digits and the Verhoeff check digit), RxNorm, CVX, NDC, ICD-10,
ICD-10-CM, ICD-10-PCS, ICD-9-CM, CPT, HCPCS, CDT (both their URLs and OIDs), NUCC provider
taxonomy, UCUM, BCP-47 language tags, BCP-13 MIME types, ISO 3166, ISO 4217, USPS state codes
and NUBC discharge codes.  The CDC race and ethnicity codes (cdcrec) are not syntax-only: US Core
3.1.1 carries that CodeSystem whole.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# ------------------------------------------------------------------------------------------------
# Syntax-only systems


def _verhoeff_ok(digits: str) -> bool:
    d = (
        (0, 1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 2, 3, 4, 0, 6, 7, 8, 9, 5), (2, 3, 4, 0, 1, 7, 8, 9, 5, 6),
        (3, 4, 0, 1, 2, 8, 9, 5, 6, 7), (4, 0, 1, 2, 3, 9, 5, 6, 7, 8), (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
        (6, 5, 9, 8, 7, 1, 0, 4, 3, 2), (7, 6, 5, 9, 8, 2, 1, 0, 4, 3), (8, 7, 6, 5, 9, 3, 2, 1, 0, 4),
        (9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
    )  # fmt: skip
    p = (
        (0, 1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 5, 7, 6, 2, 8, 3, 0, 9, 4), (5, 8, 0, 3, 7, 9, 6, 1, 4, 2),
        (8, 9, 1, 6, 0, 4, 3, 5, 2, 7), (9, 4, 5, 3, 1, 2, 6, 8, 7, 0), (4, 2, 8, 6, 5, 7, 3, 9, 0, 1),
        (2, 7, 9, 3, 8, 0, 6, 4, 1, 5), (7, 0, 4, 6, 9, 1, 3, 2, 5, 8),
    )  # fmt: skip
    c = 0
    for i, ch in enumerate(reversed(digits)):
        c = d[c][p[i % 8][ord(ch) - 48]]
    return c == 0


_SCTID = re.compile(r"[1-9][0-9]{5,17}")


def _snomed_ok(code: str) -> bool:
    # A concept id, or a post-coordinated expression (checked no further than "not blank").
    if _SCTID.fullmatch(code):
        return _verhoeff_ok(code)
    return not code[:1].isdigit() and bool(code.strip())


def _regex(pattern: str) -> Callable[[str], bool]:
    match = re.compile(pattern).fullmatch
    return lambda code: match(code) is not None


SYNTAX_ONLY: dict[str, Callable[[str], bool]] = {
    "http://loinc.org": _regex(r"[0-9]{1,8}-[0-9]|L[ACGP][0-9]{1,8}-[0-9]"),
    "http://snomed.info/sct": _snomed_ok,
    "http://www.nlm.nih.gov/research/umls/rxnorm": _regex(r"[0-9]{1,10}"),
    "http://hl7.org/fhir/sid/cvx": _regex(r"[0-9]{1,3}"),
    "http://hl7.org/fhir/sid/ndc": _regex(r"[0-9]{4,5}-[0-9]{3,4}-[0-9]{1,2}|[0-9]{10,11}"),
    "http://hl7.org/fhir/sid/icd-10": _regex(r"[A-Z][0-9][0-9A-Z](\.?[0-9A-Z]{1,4})?"),
    "http://hl7.org/fhir/sid/icd-10-cm": _regex(r"[A-Z][0-9][0-9A-Z](\.?[0-9A-Z]{1,4})?"),
    "http://www.cms.gov/Medicare/Coding/ICD10": _regex(r"[0-9A-HJ-NP-Z]{7}"),
    "http://hl7.org/fhir/sid/icd-9-cm": _regex(
        r"[0-9]{3}(\.[0-9]{1,2})?|V[0-9]{2}(\.[0-9]{1,2})?|E[0-9]{3}(\.[0-9])?"
    ),
    "http://www.ama-assn.org/go/cpt": _regex(r"[0-9]{4}[0-9A-Z]"),
    "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets": _regex(r"[A-Z][0-9]{4}"),
    "urn:oid:2.16.840.1.113883.6.285": _regex(r"[A-Z][0-9]{4}"),
    "http://www.ada.org/cdt": _regex(r"D[0-9]{4}"),
    "urn:oid:2.16.840.1.113883.6.13": _regex(r"D[0-9]{4}"),
    "http://nucc.org/provider-taxonomy": _regex(r"[0-9]{3}[0-9A-Z]{6}X"),
    "http://unitsofmeasure.org": _regex(r"[!-~]+"),
    "urn:ietf:bcp:47": _regex(r"[a-zA-Z]{2,3}(-[a-zA-Z0-9]{1,8})*"),
    "urn:ietf:bcp:13": _regex(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*(\s*;.*)?"),
    "urn:iso:std:iso:3166": _regex(r"[A-Z]{2,3}|[0-9]{3}"),
    "urn:iso:std:iso:4217": _regex(r"[A-Z]{3}"),
    "https://www.usps.com/": _regex(r"[A-Z]{2}"),
    "http://www.nubc.org/patient-discharge": _regex(r"[0-9]{2}"),
}


def syntax_ok(system: str, code: str) -> bool | None:
    """True/False for a syntax-only system, None for any other system."""
    check = SYNTAX_ONLY.get(system)
    return None if check is None else check(code)


# ------------------------------------------------------------------------------------------------
# Code systems and expansions


@dataclass(frozen=True, slots=True)
class CodeSystemFacts:
    url: str
    codes: frozenset[str]
    # child -> parents, only for hierarchical systems (is-a filters need it)
    parents: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def descendants(self, code: str) -> set[str]:
        children: dict[str, list[str]] = {}
        for child, ps in self.parents.items():
            for p in ps:
                children.setdefault(p, []).append(child)
        out: set[str] = set()
        stack = [code]
        while stack:
            for c in children.get(stack.pop(), ()):
                if c not in out:
                    out.add(c)
                    stack.append(c)
        return out

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"codes": sorted(self.codes)}
        if self.parents:
            out["parents"] = {c: list(p) for c, p in sorted(self.parents.items())}
        return out

    @staticmethod
    def from_json(url: str, raw: Mapping[str, Any]) -> CodeSystemFacts:
        parents = {c: tuple(p) for c, p in raw.get("parents", {}).items()}
        return CodeSystemFacts(url, frozenset(raw["codes"]), parents)


def code_system_facts(cs: Mapping[str, Any]) -> CodeSystemFacts | None:
    """Facts of a CodeSystem resource, or None unless its content is complete."""
    if cs.get("content") != "complete" or "url" not in cs:
        return None
    codes: set[str] = set()
    parents: dict[str, list[str]] = {}

    def walk(concepts: Iterable[Mapping[str, Any]], parent: str | None) -> None:
        for c in concepts:
            code = c.get("code")
            if not isinstance(code, str):
                continue
            codes.add(code)
            if parent is not None:
                parents.setdefault(code, []).append(parent)
            for p in c.get("property", ()):
                # Flat systems state their hierarchy with a "parent" (or "subsumedBy") property.
                if p.get("code") in ("parent", "subsumedBy") and isinstance(p.get("valueCode"), str):
                    parents.setdefault(code, []).append(p["valueCode"])
            walk(c.get("concept", ()), code)

    walk(cs.get("concept", ()), None)
    return CodeSystemFacts(cs["url"], frozenset(codes), {c: tuple(p) for c, p in parents.items()})


@dataclass(frozen=True, slots=True)
class Expansion:
    """What a value set admits: enumerated codes per system, syntax-only systems, open parts."""

    url: str
    codes: Mapping[str, frozenset[str]]
    syntax: frozenset[str] = frozenset()
    open: frozenset[str] = frozenset()  # systems included but not enumerable here
    unresolved: bool = False  # an imported value set (so: unknown systems) could not be expanded

    @property
    def enumerable(self) -> bool:
        return not self.syntax and not self.open and not self.unresolved

    def member(
        self, system: str | None, code: str, cs_codes: Callable[[str], frozenset[str] | None]
    ) -> bool | None:
        """True / False, or None when this expansion cannot tell."""
        if system is None:
            # A bare code (a bound code or string element): any system of the value set.
            for codes in self.codes.values():
                if code in codes:
                    return True
            if self.syntax or self.open or self.unresolved:
                return None
            return False
        found = self.codes.get(system)
        if found is not None and code in found:
            return True
        if system in self.syntax:
            check = SYNTAX_ONLY.get(system)
            return check is not None and check(code)
        if system in self.open or (self.unresolved and found is None):
            known = cs_codes(system)
            return False if known is not None and code not in known else None
        return False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"codes": {s: sorted(c) for s, c in sorted(self.codes.items())}}
        if self.syntax:
            out["syntax"] = sorted(self.syntax)
        if self.open:
            out["open"] = sorted(self.open)
        if self.unresolved:
            out["unresolved"] = True
        return out

    @staticmethod
    def from_json(url: str, raw: Mapping[str, Any]) -> Expansion:
        return Expansion(
            url,
            {s: frozenset(c) for s, c in raw.get("codes", {}).items()},
            frozenset(raw.get("syntax", ())),
            frozenset(raw.get("open", ())),
            bool(raw.get("unresolved", False)),
        )


class _Acc:
    """A value set part being built: enumerated codes plus the systems it cannot enumerate."""

    def __init__(self) -> None:
        self.codes: dict[str, set[str]] = {}
        self.syntax: set[str] = set()
        self.open: set[str] = set()
        self.unresolved = False

    def add_all(self, other: Expansion) -> None:
        for s, c in other.codes.items():
            self.codes.setdefault(s, set()).update(c)
        self.syntax |= other.syntax
        self.open |= other.open
        self.unresolved = self.unresolved or other.unresolved

    def freeze(self, url: str) -> Expansion:
        return Expansion(
            url,
            {s: frozenset(c) for s, c in self.codes.items() if c},
            frozenset(self.syntax),
            frozenset(self.open),
            self.unresolved,
        )


def strip_version(canonical: str) -> str:
    return canonical.split("|", 1)[0]


class Terminology:
    """ValueSets and CodeSystems of the loaded packages; expansions are computed on first use.

    Precomputed expansions (from the compact files) and raw ValueSet resources (from packages
    loaded at run time) live side by side.  Each is registered under its package ("scope"): a
    profile's unversioned binding means the value set of its own package first (US Core 3.1.1 and
    6.1.0 define ``omb-race-category`` differently), then the one registered last.
    """

    def __init__(self) -> None:
        self._code_systems: dict[str, CodeSystemFacts] = {}
        # key -> source; keys are "url", "url|version" and the scoped "scope::url" forms
        self._sources: dict[str, Mapping[str, Any] | Expansion] = {}
        self._scope_of: dict[int, str] = {}
        self._expanded: dict[int, Expansion] = {}
        self._expanding: set[int] = set()
        # expansion recurses through imports and marks what is in progress: one thread at a time
        self._lock = threading.RLock()

    # -- registration ------------------------------------------------------------------------

    def add_code_system(self, facts: CodeSystemFacts) -> None:
        self._code_systems[facts.url] = facts

    def add_code_system_resource(self, cs: Mapping[str, Any]) -> None:
        facts = code_system_facts(cs)
        if facts is not None:
            self.add_code_system(facts)

    def add_value_set_resource(self, vs: Mapping[str, Any], scope: str = "") -> None:
        url = vs.get("url")
        if isinstance(url, str):
            self._register(url, vs.get("version"), vs, scope)

    def add_expansion(self, canonical: str, expansion: Expansion, scope: str = "") -> None:
        url, _, version = canonical.partition("|")
        self._register(url, version or None, expansion, scope)

    def _register(self, url: str, version: object, source: Mapping[str, Any] | Expansion, scope: str) -> None:
        self._scope_of[id(source)] = scope
        self._sources[url] = source
        if isinstance(version, str):
            self._sources[f"{url}|{version}"] = source
        if scope:
            self._sources[f"{scope}::{url}"] = source

    # -- queries -----------------------------------------------------------------------------

    def code_system(self, url: str) -> CodeSystemFacts | None:
        return self._code_systems.get(url)

    def code_systems(self) -> dict[str, CodeSystemFacts]:
        return dict(self._code_systems)

    def cs_codes(self, system: str) -> frozenset[str] | None:
        cs = self._code_systems.get(system)
        return cs.codes if cs is not None else None

    def _source(self, canonical: str, scope: str) -> Mapping[str, Any] | Expansion | None:
        url, _, version = canonical.partition("|")
        if version:
            found = self._sources.get(canonical)
            if found is not None:
                return found
        if scope:
            found = self._sources.get(f"{scope}::{url}")
            if found is not None:
                return found
        return self._sources.get(url)

    def knows(self, canonical: str, scope: str = "") -> bool:
        return self._source(canonical, scope) is not None

    def expand(self, canonical: str, scope: str = "") -> Expansion | None:
        """The expansion of a value set canonical (``url`` or ``url|version``), None if unknown."""
        source = self._source(canonical, scope)
        if source is None:
            return None
        if isinstance(source, Expansion):
            return source
        key = id(source)
        exp = self._expanded.get(key)
        if exp is not None:
            return exp
        url = strip_version(canonical)
        with self._lock:
            exp = self._expanded.get(key)
            if exp is not None:
                return exp
            if key in self._expanding:  # an import cycle: the inner reference adds nothing
                return Expansion(url, {}, unresolved=True)
            self._expanding.add(key)
            try:
                exp = self._expand_resource(url, source, self._scope_of.get(key, ""))
            finally:
                self._expanding.discard(key)
            self._expanded[key] = exp
            return exp

    def member(self, canonical: str, system: str | None, code: str, scope: str = "") -> bool | None:
        exp = self.expand(canonical, scope)
        if exp is None:
            if system is not None:
                known = self.cs_codes(system)
                if known is not None and code not in known:
                    return False
            return None
        return exp.member(system, code, self.cs_codes)

    # -- expansion ---------------------------------------------------------------------------

    def _expand_resource(self, url: str, vs: Mapping[str, Any], scope: str) -> Expansion:
        compose = vs.get("compose")
        acc = _Acc()
        if not compose:
            contains = vs.get("expansion", {}).get("contains")
            if contains:
                self._add_contains(acc, contains)
            else:
                acc.unresolved = True
            return acc.freeze(url)
        for inc in compose.get("include", ()):
            acc.add_all(self._include(url, inc, scope))
        for exc in compose.get("exclude", ()):
            part = self._include(url, exc, scope)
            if part.syntax or part.open or part.unresolved:
                continue  # an exclusion we cannot enumerate removes nothing we could name
            for s, c in part.codes.items():
                if s in acc.codes:
                    acc.codes[s] -= c
        return acc.freeze(url)

    def _add_contains(self, acc: _Acc, contains: Iterable[Mapping[str, Any]]) -> None:
        for c in contains:
            if isinstance(c.get("system"), str) and isinstance(c.get("code"), str):
                acc.codes.setdefault(c["system"], set()).add(c["code"])
            self._add_contains(acc, c.get("contains", ()))

    def _include(self, url: str, inc: Mapping[str, Any], scope: str) -> Expansion:
        system = inc.get("system")
        imported: list[Expansion] = []
        unresolved = False
        for ref in inc.get("valueSet", ()):
            exp = self.expand(ref, scope)
            if exp is None:
                unresolved = True
            else:
                imported.append(exp)
        if system is None:
            acc = _Acc()
            if unresolved or not imported:
                acc.unresolved = True
                return acc.freeze(url)
            # Several value sets in one include intersect; one is common and simply taken whole.
            result = imported[0]
            for other in imported[1:]:
                result = _intersect(result, other)
            return result
        part = self._system_part(url, system, inc)
        if unresolved:
            acc = _Acc()
            acc.add_all(part)
            acc.open.add(system)
            return acc.freeze(url)
        for other in imported:
            part = _intersect(part, other)
        return part

    def _system_part(self, url: str, system: str, inc: Mapping[str, Any]) -> Expansion:
        acc = _Acc()
        concepts = inc.get("concept")
        filters = inc.get("filter")
        if concepts:
            acc.codes[system] = {c["code"] for c in concepts if isinstance(c.get("code"), str)}
            return acc.freeze(url)
        cs = self._code_systems.get(system)
        if not filters:
            if cs is not None:
                acc.codes[system] = set(cs.codes)
            elif system in SYNTAX_ONLY:
                acc.syntax.add(system)
            else:
                acc.open.add(system)
            return acc.freeze(url)
        codes = set(cs.codes) if cs is not None else None
        for f in filters:
            narrowed = self._filter(cs, f) if cs is not None else None
            if narrowed is None or codes is None:
                codes = None
                break
            codes &= narrowed
        if codes is not None:
            acc.codes[system] = codes
        elif system in SYNTAX_ONLY:
            acc.syntax.add(system)
        else:
            acc.open.add(system)
        return acc.freeze(url)

    @staticmethod
    def _filter(cs: CodeSystemFacts, f: Mapping[str, Any]) -> set[str] | None:
        prop, op, value = f.get("property"), f.get("op"), f.get("value")
        if prop != "concept" or not isinstance(value, str):
            return None
        if op == "is-a":
            return {value, *cs.descendants(value)} if value in cs.codes else set()
        if op == "descendent-of":
            return cs.descendants(value)
        if op == "is-not-a":
            return set(cs.codes) - {value, *cs.descendants(value)}
        if op == "in":
            return {v.strip() for v in value.split(",")} & cs.codes
        if op == "=":
            return {value} & cs.codes
        return None


def _intersect(a: Expansion, b: Expansion) -> Expansion:
    acc = _Acc()
    for s, c in a.codes.items():
        if s in b.codes:
            acc.codes[s] = set(c & b.codes[s])
        elif s in b.syntax or s in b.open or b.unresolved:
            acc.codes[s] = set(c)
    for s, c in b.codes.items():
        if s not in a.codes and (s in a.syntax or s in a.open or a.unresolved):
            acc.codes[s] = set(c)
    acc.syntax = set((a.syntax & b.syntax) | (a.syntax & b.open) | (b.syntax & a.open))
    acc.open = set(a.open & b.open)
    acc.unresolved = a.unresolved and b.unresolved
    return acc.freeze(a.url)
