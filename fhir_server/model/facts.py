"""Typed access to the R4 structure facts in ``r4_facts.json`` (made by scripts/gen_r4_facts.py).

One immutable, process-wide ``Facts`` object: the validator, the XML codec, the type registry and
the CapabilityStatement all read the same definitions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import orjson

# FHIR JSON represents these primitive types as JSON numbers / booleans; every other primitive is a string.
_JSON_KIND = {"Boolean": "boolean", "Integer": "integer", "Decimal": "decimal"}
# R4 declares the value of positiveInt and unsignedInt as System.String, yet JSON writes them as numbers.
_INTEGER_TYPES = {"integer", "positiveInt", "unsignedInt"}


@dataclass(frozen=True, slots=True)
class PrimitiveDef:
    name: str
    json_kind: str  # "string" | "boolean" | "integer" | "decimal"
    regex: re.Pattern[str] | None


@dataclass(frozen=True, slots=True)
class ElementDef:
    name: str  # base name; for a choice element without the type suffix ("deceased")
    types: tuple[str, ...]  # type codes, or a backbone path such as "Patient.contact"
    min: int
    max: int  # -1 means unbounded
    choice: bool
    summary: bool
    modifier: bool
    binding: str | None  # canonical of a *required* binding's value set

    @property
    def is_array(self) -> bool:
        return self.max != 1 and self.max != 0


@dataclass(frozen=True, slots=True)
class TypeDef:
    name: str
    kind: str  # "primitive-type" | "complex-type" | "resource" | "backbone"
    abstract: bool
    base: str | None
    elements: tuple[ElementDef, ...]
    # JSON member name -> (element, concrete type code); choice elements appear once per type.
    members: dict[str, tuple[ElementDef, str]] = field(repr=False)


def _choice_name(base: str, type_code: str) -> str:
    return base + type_code[0].upper() + type_code[1:]


@dataclass(frozen=True, slots=True)
class Facts:
    fhir_version: str
    types: dict[str, TypeDef]
    primitives: dict[str, PrimitiveDef]
    # value set canonical -> {system: frozenset(codes)}; only enumerable required value sets
    valuesets: dict[str, dict[str, frozenset[str]]]
    r4_resource_types: tuple[str, ...]
    # R4 resource types that also have an R4B model: the types this server serves
    resource_types: frozenset[str]
    # compartment code -> {resource type: [search parameter codes]}
    compartments: dict[str, dict[str, list[str]]]

    def is_primitive(self, type_code: str) -> bool:
        return type_code in self.primitives

    def type(self, name: str) -> TypeDef:
        return self.types[name]


def _build(raw: dict[str, Any]) -> Facts:
    types: dict[str, TypeDef] = {}
    for name, t in raw["types"].items():
        elements = tuple(
            ElementDef(
                name=e["n"],
                types=tuple(e["t"]),
                min=e["min"],
                max=e["max"],
                choice=bool(e.get("choice")),
                summary=bool(e.get("s")),
                modifier=bool(e.get("mod")),
                binding=e.get("b"),
            )
            for e in t["elements"]
        )
        members: dict[str, tuple[ElementDef, str]] = {}
        for el in elements:
            if el.choice:
                for tc in el.types:
                    members[_choice_name(el.name, tc)] = (el, tc)
            else:
                members[el.name] = (el, el.types[0] if el.types else "")
        types[name] = TypeDef(
            name=name,
            kind=t["kind"],
            abstract=bool(t.get("abstract")),
            base=t.get("base"),
            elements=elements,
            members=members,
        )
    primitives = {
        name: PrimitiveDef(
            name=name,
            json_kind="integer" if name in _INTEGER_TYPES else _JSON_KIND.get(p.get("system", "String"), "string"),
            regex=re.compile(p["regex"]) if "regex" in p else None,
        )
        for name, p in raw["primitives"].items()
    }
    valuesets = {url: {s: frozenset(c) for s, c in systems.items()} for url, systems in raw["valuesets"].items()}
    return Facts(
        fhir_version=raw["fhirVersion"],
        types=types,
        primitives=primitives,
        valuesets=valuesets,
        r4_resource_types=tuple(raw["resources"]),
        resource_types=frozenset(raw["r4bModels"]),
        compartments=raw["compartments"],
    )


@lru_cache(maxsize=1)
def get_facts() -> Facts:
    data = resources.files("fhir_server.model").joinpath("r4_facts.json").read_bytes()
    return _build(orjson.loads(data))
