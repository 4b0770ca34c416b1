"""The search parameters this server knows, per resource type (R4 4.0.1 plus US Core 3.1.1 / 6.1.0).

Read from ``search_params.json`` (made by scripts/gen_search_params.py, committed as package
data).  ``supported`` says whether the index extractor compiled the parameter's expression to
something it can index; the reason when not is in ``reason``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from importlib import resources
from typing import Any

import orjson

from fhir_server.model.facts import get_facts

# Indexed as columns of the resource table, not by the extractor.
COLUMN_PARAMS = frozenset({"_id", "_lastUpdated"})


@dataclass(frozen=True, slots=True)
class ComponentDef:
    definition_url: str
    type: str  # the type of the parameter that definition_url names ("" when unknown)
    expression: str  # relative to each item the composite's own expression yields
    code: str  # the code of that parameter ("" when unknown)


@dataclass(frozen=True, slots=True)
class SearchParamDef:
    code: str
    base: str
    type: str
    expression: str
    url: str
    targets: tuple[str, ...]
    modifiers: tuple[str, ...]
    comparators: tuple[str, ...]
    components: tuple[ComponentDef, ...]
    supported: bool  # True when extract.py can index it (its expression compiled)
    also: tuple[str, ...] = ()  # US Core definitions of this code whose expression differs
    reason: str | None = None  # why it is not supported
    # A reference parameter whose targets are held inside the resource (Bundle.entry[0].resource):
    # only chained searches (and :missing) apply, never _include, _revinclude, _has or _sort.
    inline: bool = False


class Registry:
    """Definitions per type; whether each is supported is settled on the first look at its type,
    which compiles that type's expressions (a few ms a type, about 0.2 s for all 128)."""

    def __init__(self, definitions: dict[str, dict[str, SearchParamDef]]) -> None:
        self._definitions = definitions
        self._checked: dict[str, dict[str, SearchParamDef]] = {}

    @property
    def resource_types(self) -> tuple[str, ...]:
        return tuple(self._definitions)

    def params_for(self, resource_type: str) -> dict[str, SearchParamDef]:
        """Every parameter of the type, the common ones (_id, _lastUpdated, _tag, ...) included."""
        checked = self._checked.get(resource_type)
        if checked is None:
            # Racing threads compute the same dict; the last assignment wins harmlessly.
            checked = self._checked[resource_type] = self._check(resource_type)
        return checked

    def get(self, resource_type: str, code: str) -> SearchParamDef | None:
        return self.params_for(resource_type).get(code)

    def _check(self, resource_type: str) -> dict[str, SearchParamDef]:
        params = self._definitions.get(resource_type)
        if not params:
            return {}
        # The extractor decides what is supported by compiling the expressions; its compiled plans
        # are cached, so indexing the type later costs nothing more.
        from fhir_server.search.extract import compile_type

        plan = compile_type(resource_type)
        reasons = plan.unsupported
        return {
            code: replace(p, supported=code not in reasons, reason=reasons.get(code), inline=code in plan.inline)
            for code, p in params.items()
        }


def load_raw() -> dict[str, Any]:
    data = resources.files("fhir_server.search").joinpath("search_params.json").read_bytes()
    raw: dict[str, Any] = orjson.loads(data)
    return raw


def _definition(code: str, base: str, d: dict[str, Any], r4_types: tuple[str, ...]) -> SearchParamDef:
    if "targets_all_but" in d:
        excluded = set(d["targets_all_but"])
        targets = tuple(t for t in r4_types if t not in excluded)
    else:
        targets = tuple(d.get("targets", ()))
    return SearchParamDef(
        code=code,
        base=base,
        type=d["type"],
        expression=d["expression"],
        url=d["url"],
        targets=targets,
        modifiers=tuple(d.get("modifiers", ())),
        comparators=tuple(d.get("comparators", ())),
        components=tuple(
            ComponentDef(c["definition"], c.get("type") or "", c["expression"], c.get("code") or "")
            for c in d.get("components", ())
        ),
        supported=False,
        also=tuple(d.get("also", ())),
    )


@lru_cache(maxsize=1)
def definitions() -> dict[str, dict[str, SearchParamDef]]:
    """All definitions per type (common ones merged in), before checking what can be indexed."""
    raw = load_raw()
    r4_types = tuple(sorted(get_facts().r4_resource_types))
    by_type: dict[str, dict[str, SearchParamDef]] = {}
    for rtype, params in raw["types"].items():
        merged = {code: _definition(code, rtype, d, r4_types) for code, d in raw["common"].items()}
        merged.update((code, _definition(code, rtype, d, r4_types)) for code, d in params.items())
        by_type[rtype] = merged
    return by_type


@lru_cache(maxsize=1)
def get_registry() -> Registry:
    return Registry(definitions())
