"""FHIR packages in, conformance definitions out: ``.tgz`` packages, folders, and compact files.

* an npm-style package (``.tgz``) or a folder of resources: the StructureDefinitions, ValueSets
  and CodeSystems among its top-level ``*.json`` files (``package/`` inside a tarball; examples and
  other sub-folders are not definitions).  StructureDefinitions are reduced to compact facts at once;
  one that carries only a differential gets its snapshot generated from its base on first use.
* a compact file (``profiles/*.json``, written by ``scripts/gen_profiles.py``): the same facts
  with value set expansions and code system code lists already computed.

``Conformance`` is the resolved whole: profiles by canonical (``url`` or ``url|version``; a bare
url means the highest version loaded) and the terminology they bind to.
"""

from __future__ import annotations

import os
import re
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from fhir_server.model import jsonio
from fhir_server.validation.compact import CompactSD, Element, reduce_sd, unpack_sds
from fhir_server.validation.snapshot import SnapshotError, generate_snapshot
from fhir_server.validation.terminology import CodeSystemFacts, Expansion, Terminology

COMPACT_FORMAT = "fhir-server-profiles/1"
_DEFINITION_TYPES = ("StructureDefinition", "ValueSet", "CodeSystem")


class PackageError(Exception):
    """A configured package cannot be read."""


@dataclass
class Package:
    name: str
    version: str
    source: str
    sds: list[CompactSD] = field(default_factory=list)
    raw_value_sets: list[dict[str, Any]] = field(default_factory=list)
    raw_code_systems: list[dict[str, Any]] = field(default_factory=list)
    expansions: dict[str, Expansion] = field(default_factory=dict)
    code_systems: list[CodeSystemFacts] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.name}#{self.version}"


# ------------------------------------------------------------------------------------------------
# Reading


def load_package(path: str | os.PathLike[str]) -> Package:
    p = Path(path)
    try:
        if p.is_dir():
            return _from_resources(p, _folder_resources(p))
        if p.suffix == ".json":
            return load_compact(p)
        if p.name.endswith((".tgz", ".tar.gz")):
            return _from_resources(p, _tar_resources(p))
    except (OSError, ValueError, KeyError, tarfile.TarError) as exc:
        raise PackageError(f"cannot read FHIR package {p}: {exc}") from exc
    raise PackageError(f"{p} is neither a folder, a .tgz package nor a compact .json file")


def _tar_resources(path: Path) -> Iterable[tuple[str, Any]]:
    with tarfile.open(path) as t:
        for m in t.getmembers():
            parts = m.name.split("/")
            if not m.isfile() or len(parts) != 2 or parts[0] != "package" or not parts[1].endswith(".json"):
                continue
            if parts[1].startswith("."):
                continue
            f = t.extractfile(m)
            if f is not None:
                yield parts[1], jsonio.loads(f.read())


def _folder_resources(path: Path) -> Iterable[tuple[str, Any]]:
    root = path / "package" if (path / "package").is_dir() else path
    for f in sorted(root.glob("*.json")):
        if not f.name.startswith("."):
            yield f.name, jsonio.loads(f.read_bytes())


def _from_resources(path: Path, resources: Iterable[tuple[str, Any]]) -> Package:
    # Without a package.json a folder is known by its path: it adds to the shipped packages and
    # never replaces one by accident (the 6 vital-signs files in ../shared/fhir-packages/
    # hl7.fhir.r4.core-4.0.1 are not the R4 core package).
    name, version = _guess_identity(path) if path.is_file() else (str(path), "0")
    pkg = Package(name, version, str(path))
    for filename, res in resources:
        if filename == "package.json" and isinstance(res, dict):
            name = res.get("name", name)
            version = res.get("version", version)
            continue
        if not isinstance(res, dict) or res.get("resourceType") not in _DEFINITION_TYPES:
            continue
        rt = res["resourceType"]
        if rt == "StructureDefinition" and "url" in res and "type" in res:
            pkg.sds.append(reduce_sd(res))
        elif rt == "ValueSet":
            pkg.raw_value_sets.append(res)
        elif rt == "CodeSystem":
            pkg.raw_code_systems.append(res)
    pkg.name, pkg.version = str(name), str(version)
    return pkg


def _guess_identity(path: Path) -> tuple[str, str]:
    stem = path.name.removesuffix(".tgz").removesuffix(".tar.gz")
    m = re.fullmatch(r"(.+?)[-#]([0-9][0-9A-Za-z.\-]*)", stem)
    return (m.group(1), m.group(2)) if m else (stem, "0")


def load_compact(path: Path) -> Package:
    # orjson: 10x faster than the decimal-exact loader, and compact facts hold no decimal that
    # a float would not round-trip (values.json_equal compares numbers by value).
    raw = orjson.loads(path.read_bytes())
    return compact_package(raw, str(path))


def compact_package(raw: dict[str, Any], source: str) -> Package:
    if raw.get("format") != COMPACT_FORMAT:
        raise PackageError(f"{source} is not a compact profile file ({COMPACT_FORMAT})")
    pkg = Package(raw["name"], raw["version"], source)
    pkg.sds = unpack_sds(raw["structureDefinitions"], raw["constraints"])
    pkg.expansions = {url: Expansion.from_json(url, e) for url, e in raw.get("valueSets", {}).items()}
    pkg.code_systems = [CodeSystemFacts.from_json(url, c) for url, c in raw.get("codeSystems", {}).items()]
    return pkg


def merge_packages(shipped: Sequence[Package], configured: Sequence[Package]) -> list[Package]:
    """The shipped packages with each configured one added, or replacing the shipped one of the same
    name and version."""
    keys = {p.key for p in configured}
    return [p for p in shipped if p.key not in keys] + list(configured)


def packages_from_env(value: str | None) -> list[Package]:
    """Packages named by a ``FHIR_PACKAGES`` value: paths separated by ``os.pathsep``."""
    if not value:
        return []
    return [load_package(p) for p in value.split(os.pathsep) if p.strip()]


# ------------------------------------------------------------------------------------------------
# The resolved whole


def version_key(version: str | None) -> tuple[Any, ...]:
    # "6.1.0" > "3.1.1"; "1.0.0-ballot" sorts before "1.0.0"; anything unparseable sorts first.
    if not version:
        return ()
    main, _, pre = version.partition("-")
    nums = tuple(int(x) if x.isdigit() else -1 for x in main.split("."))
    return (*nums, 0 if pre else 1, pre)


class Conformance:
    """Every profile and value set of an ordered list of packages (a later one wins a tie)."""

    def __init__(self, packages: Sequence[Package]) -> None:
        self.packages = list(packages)
        self.terminology = Terminology()
        self._by_url: dict[str, dict[str, CompactSD]] = {}
        self._scoped: dict[tuple[str, str], CompactSD] = {}
        self._package_of: dict[int, str] = {}
        self._snapshots: dict[int, list[Element]] = {}
        self._resolved: dict[tuple[str, str], CompactSD | None] = {}
        for pkg in self.packages:
            for facts in pkg.code_systems:
                self.terminology.add_code_system(facts)
            for cs in pkg.raw_code_systems:
                self.terminology.add_code_system_resource(cs)
        for pkg in self.packages:
            for url, exp in pkg.expansions.items():
                self.terminology.add_expansion(url, exp, pkg.key)
            for vs in pkg.raw_value_sets:
                self.terminology.add_value_set_resource(vs, pkg.key)
            for sd in pkg.sds:
                self._by_url.setdefault(sd["url"], {})[sd.get("version") or ""] = sd
                self._scoped[(pkg.key, sd["url"])] = sd
                self._package_of[id(sd)] = pkg.key

    def urls(self) -> list[str]:
        return sorted(self._by_url)

    def versions(self, url: str) -> list[str]:
        return sorted(self._by_url.get(url, {}), key=version_key)

    def sd(self, canonical: str, scope: str = "") -> CompactSD | None:
        """The profile a canonical names: its version if given, else the one of package ``scope``
        (a profile's references mean its own package's definitions), else the highest version."""
        key = (canonical, scope)
        if key in self._resolved:
            return self._resolved[key]
        url, _, version = canonical.partition("|")
        versions = self._by_url.get(url)
        found: CompactSD | None = None
        if not versions:
            found = None
        elif version:
            found = versions.get(version)
        else:
            found = self._scoped.get((scope, url)) if scope else None
            if found is None:
                found = versions[max(versions, key=version_key)]
        self._resolved[key] = found
        return found

    def sd_by_type(self, type_name: str) -> CompactSD | None:
        return self.sd("http://hl7.org/fhir/StructureDefinition/" + type_name)

    def package_of(self, sd: CompactSD) -> str:
        return self._package_of.get(id(sd), "")

    def snapshot(self, sd: CompactSD) -> list[Element]:
        """The snapshot of a profile, generated from its differential and base when it has none."""
        snap = sd.get("snapshot")
        if snap is not None:
            return list(snap)
        cached = self._snapshots.get(id(sd))
        if cached is not None:
            return cached
        scope = self.package_of(sd)
        base = self.sd(sd["base"], scope) if sd.get("base") else None
        if base is None:
            raise SnapshotError(
                f"{sd['url']}: base {sd.get('base')} is not loaded, so no snapshot can be made"
            )

        def type_snapshot(canonical: str) -> list[Element] | None:
            found = self.sd(canonical, scope) if "/" in canonical else self.sd_by_type(canonical)
            return self.snapshot(found) if found is not None else None

        snap = generate_snapshot(sd.get("differential") or [], self.snapshot(base), type_snapshot)
        self._snapshots[id(sd)] = snap
        return snap
