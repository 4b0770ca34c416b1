"""Derive the compact search-parameter registry from R4 4.0.1 and US Core 3.1.1 / 6.1.0.

The output, ``fhir_server/search/search_params.json``, is committed; the server never reads the
packages at run time.  It keeps what the engine needs (type, the part of the FHIRPath union that
applies to each base, targets, modifiers, comparators, components, url) and no prose.

Layout::

    {"source": ..., "common": {code: def}, "types": {ResourceType: {code: def}}}
    def = {"type", "expression", "url", ["targets"], ["modifiers"], ["comparators"],
           ["components": [{"definition", "code", "type", "expression"}]], ["also": [url]]}

Empty lists are left out.  ``also`` lists US Core definitions of the same code whose expression
differs from the R4 one that was kept.  A target list naming most R4 resource types (the "Any"
references) is written as ``"targets_all_but": [...]``: the R4 resource types minus those.

Usage: python scripts/gen_search_params.py [--shared PATH] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tarfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
OUT_DEFAULT = REPO / "fhir_server" / "search" / "search_params.json"
R4_BUNDLE = "fhir-packages/hl7.fhir.r4.core-4.0.1/search-parameters.json"
# Newest first: a US Core-only code takes the newest package's definition.
US_CORE = ("fhir-packages/hl7.fhir.us.core-6.1.0.tgz", "fhir-packages/hl7.fhir.us.core-3.1.1.tgz")

# Cross-type parameters kept; _text, _content, _query (and _list, _has, _type, which R4 does not
# define as SearchParameters) are handled by the query parser or refused.
COMMON = ("_id", "_lastUpdated", "_tag", "_profile", "_security", "_source")
ABSTRACT_BASES = ("Resource", "DomainResource")

# Errors in R4 4.0.1's definitions, corrected where the intent is beyond doubt: (composite url,
# component definition) -> the component's expression.  DocumentReference-relationship gives
# each of its components the other's expression: relatesto (a reference parameter, defined as
# DocumentReference.relatesTo.target) says "code", relation (a token, .relatesTo.code) "target".
_R4 = "http://hl7.org/fhir/SearchParameter/"
COMPONENT_ERRATA = {
    (_R4 + "DocumentReference-relationship", _R4 + "DocumentReference-relatesto"): "target",
    (_R4 + "DocumentReference-relationship", _R4 + "DocumentReference-relation"): "code",
}


def split_union(expression: str) -> list[str]:
    """The top-level operands of ``|`` (not inside parentheses, brackets or string literals)."""
    parts: list[str] = []
    depth = 0
    quote = False
    start = 0
    i = 0
    while i < len(expression):
        ch = expression[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == "'":
                quote = False
        elif ch == "'":
            quote = True
        elif ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append(expression[start:i].strip())
            start = i + 1
        i += 1
    parts.append(expression[start:].strip())
    return [p for p in parts if p]


_ROOT = re.compile(r"\(*\s*([A-Za-z][A-Za-z0-9]*)")


def root_of(part: str) -> str | None:
    m = _ROOT.match(part)
    return m.group(1) if m else None


def expression_for(expression: str, base: str, all_bases: list[str]) -> str:
    """The part of a multi-base union that applies to ``base``; the whole when it can't be split."""
    parts = split_union(expression)
    if len(all_bases) == 1:
        return " | ".join(parts)
    mine = [p for p in parts if root_of(p) == base]
    if not mine or any(root_of(p) not in all_bases for p in parts):
        return expression
    return " | ".join(mine)


def canonical_expression(expression: str, base: str) -> str:
    """For comparing R4 and US Core: same spacing, and Resource.x equal to <base>.x."""
    parts = split_union(expression)
    out = []
    for p in parts:
        p = re.sub(r"\s+", " ", p)
        p = re.sub(r"\s*=\s*", " = ", p)
        for abstract in ABSTRACT_BASES:
            if p.startswith(abstract + "."):
                p = base + p[len(abstract):]
        out.append(p)
    return " | ".join(out)


def compact(
    sp: dict[str, Any], expression: str, by_url: dict[str, dict[str, Any]], r4_types: list[str]
) -> dict[str, Any]:
    d: dict[str, Any] = {"type": sp["type"], "expression": expression, "url": sp["url"]}
    targets = sorted(sp.get("target", []))
    if len(targets) > len(r4_types) // 2 and set(targets) <= set(r4_types):
        # 80 "Any" references list 145 types each: most of the file otherwise.
        d["targets_all_but"] = sorted(set(r4_types) - set(targets))
    elif targets:
        d["targets"] = targets
    for src, dst in (("modifier", "modifiers"), ("comparator", "comparators")):
        if sp.get(src):
            d[dst] = sorted(sp[src])
    comps = []
    for c in sp.get("component", []):
        ref = by_url.get(c["definition"])
        comps.append({
            "definition": c["definition"],
            "code": ref["code"] if ref else None,
            "type": ref["type"] if ref else None,
            "expression": COMPONENT_ERRATA.get((sp["url"], c["definition"]), c["expression"]),
        })
    if comps:
        d["components"] = comps
    return d


def load_r4(shared: Path) -> list[dict[str, Any]]:
    bundle = json.loads((shared / R4_BUNDLE).read_text())
    return [e["resource"] for e in bundle["entry"]]


def load_us_core(path: Path) -> list[dict[str, Any]]:
    out = []
    with tarfile.open(path) as t:
        for m in t.getmembers():
            if m.name.startswith("package/SearchParameter-") and m.name.endswith(".json"):
                f = t.extractfile(m)
                if f is not None:
                    out.append(json.load(f))
    return sorted(out, key=lambda sp: sp["url"])


def resource_types() -> tuple[list[str], list[str]]:
    """(types this server serves, all R4 resource types)."""
    sys.path.insert(0, str(REPO))
    from fhir_server.model.facts import get_facts

    facts = get_facts()
    return sorted(facts.resource_types), list(facts.r4_resource_types)


def coding_not_code(expression: str, sp_type: str) -> str:
    """Index the whole Coding where a US Core token expression selects only its code.

    US Core's race and ethnicity expressions end in ``.extension.value.code``: indexed as written,
    the rows lose the system and ``race=urn:oid:2.16.840.1.113883.6.238|2106-3`` could never
    match.  Indexing the Coding keeps the code-only search working and adds the system."""
    if sp_type == "token" and expression.endswith(".extension.value.code"):
        return expression[: -len(".code")] + ".ofType(Coding)"
    return expression


def build(shared: Path) -> dict[str, Any]:
    served, r4_types = resource_types()
    served_set = set(served)
    r4 = load_r4(shared)
    by_url = {sp["url"]: sp for sp in r4}
    common: dict[str, Any] = {}
    types: dict[str, dict[str, Any]] = {t: {} for t in served}
    for sp in r4:
        expr = sp.get("expression")
        if sp["base"] == ["Resource"] or sp["base"] == ["DomainResource"]:
            if sp["code"] in COMMON and expr:
                common[sp["code"]] = compact(sp, expr, by_url, r4_types)
            continue
        for base in sp["base"]:
            if base not in served_set:
                continue
            # A parameter without an expression can't be indexed; it is kept so the registry
            # still knows the code (it will be reported unsupported).
            expression = expression_for(expr or "", base, sp["base"])
            types[base][sp["code"]] = compact(sp, expression, by_url, r4_types)
    us_core_only: set[tuple[str, str]] = set()
    for rel in US_CORE:
        for sp in load_us_core(shared / rel):
            for base in sp["base"]:
                if base not in served_set:
                    continue
                expr = coding_not_code(expression_for(sp.get("expression") or "", base, sp["base"]), sp["type"])
                have = types[base].get(sp["code"]) or common.get(sp["code"])
                if have is None:
                    types[base][sp["code"]] = compact(sp, expr, by_url, r4_types)
                    us_core_only.add((base, sp["code"]))
                    continue
                if (base, sp["code"]) in us_core_only:
                    # The same US Core code in an older package: the newest definition stands.
                    continue
                same = canonical_expression(have["expression"], base) == canonical_expression(expr, base)
                if not same:
                    if sp["code"] in common and sp["code"] not in types[base]:
                        # A per-type redefinition of a common parameter (US Core's Patient-id and
                        # the like): note it on a per-type copy of the common definition.
                        types[base][sp["code"]] = dict(common[sp["code"]])
                        have = types[base][sp["code"]]
                    also = have.setdefault("also", [])
                    if sp["url"] not in also:
                        also.append(sp["url"])
    return {
        "source": "hl7.fhir.r4.core 4.0.1 search-parameters.json; hl7.fhir.us.core 3.1.1 and 6.1.0",
        "common": dict(sorted(common.items())),
        "types": {t: dict(sorted(v.items())) for t, v in types.items()},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    ap.add_argument("--out", type=Path, default=OUT_DEFAULT)
    args = ap.parse_args(argv)
    data = build(args.shared)
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, sort_keys=False)
    args.out.write_text(text + "\n", encoding="utf-8")
    n = sum(len(v) for v in data["types"].values())
    print(f"wrote {args.out} ({len(text):,} bytes): {len(data['types'])} types, {n} parameters, "
          f"{len(data['common'])} common")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
