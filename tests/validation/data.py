"""Shared test data: the Inferno reference patients and the official packages (in ../shared)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from fhir_server.model import jsonio

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
PACKAGES = SHARED / "fhir-packages"
INFERNO = SHARED / "data" / "synthea" / "inferno-reference"
US_CORE = "http://hl7.org/fhir/us/core/StructureDefinition/"

needs_shared = pytest.mark.skipif(
    not (INFERNO.is_dir() and PACKAGES.is_dir()),
    reason=f"the shared test data ({SHARED}) is not present: Inferno patients and official FHIR packages",
)


@cache
def _bundle(name: str) -> Any:
    return jsonio.loads((INFERNO / name).read_bytes())


def inferno_entries() -> Iterator[tuple[str, int, dict[str, Any]]]:
    """(file, entry index, resource) for every resource of the Inferno reference patients."""
    for path in sorted(INFERNO.glob("*.json")):
        doc = _bundle(path.name)
        entries = doc.get("entry") or [{"resource": doc}]
        for i, e in enumerate(entries):
            yield path.name, i, e["resource"]


def resource(name: str, index: int) -> dict[str, Any]:
    """A fresh copy of one entry's resource (tests mutate it)."""
    return copy.deepcopy(_bundle(name)["entry"][index]["resource"])
