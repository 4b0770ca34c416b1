"""StructureDefinitions reduced to what validation reads ("compact facts"), and their JSON form.

One reduction serves both the committed ``profiles/*.json`` (``scripts/gen_profiles.py``) and the
packages an operator configures at run time (``FHIR_PACKAGES``), so the two give the same verdicts.
No prose survives: no short, definition, comment, mapping or example.

A compact element is a dict with only the keys that apply:

=========  ====================================================================================
id         as in the ElementDefinition
path       only when it is not the id without its slice names (``element_path`` restores it)
slice      sliceName
min, max   ``max`` stays a string ("*", "0", "1", ...), as in FHIR
bmin/bmax  the base definition's cardinality (what the structural validator checks), when not
           the element's own
types      a type code, or ``{"code": ..., "profile": [...], "target": [...]}``; canonicals of
           ``http://hl7.org/fhir/StructureDefinition/`` are kept as the bare name
fixed      ``[type suffix, value]`` for fixed[x]; ``pattern`` likewise for pattern[x]
binding    ``[strength, value set canonical or None]``
slicing    ``{"disc": [[type, path], ...], "rules": ..., "ordered": bool}``
con        ``[[key, severity, expression, best practice (0/1)], ...]``
ms         true when mustSupport
cref       contentReference
=========  ====================================================================================

ele-1 and ext-1 are left out: every element and every extension carries them, and the structural
validator checks both natively.
"""

from __future__ import annotations

from typing import Any

Element = dict[str, Any]
CompactSD = dict[str, Any]

BEST_PRACTICE_EXT = "http://hl7.org/fhir/StructureDefinition/elementdefinition-bestpractice"
UNIVERSAL_CONSTRAINTS = frozenset(("ele-1", "ext-1"))


CORE_SD = "http://hl7.org/fhir/StructureDefinition/"


def element_path(el: Element) -> str:
    path = el.get("path")
    if path is not None:
        return str(path)
    return ".".join(seg.split(":", 1)[0] for seg in el["id"].split("."))


def type_code(t: str | dict[str, Any]) -> str:
    return t if isinstance(t, str) else str(t["code"])


def type_profiles(t: str | dict[str, Any], key: str) -> list[str]:
    """The ``profile`` or ``target`` canonicals of a compact type, in full."""
    if isinstance(t, str):
        return []
    return [c if "/" in c else CORE_SD + c for c in t.get(key, ())]


def _short_canonical(c: str) -> str:
    rest = c[len(CORE_SD) :] if c.startswith(CORE_SD) else None
    return rest if rest is not None and "/" not in rest and rest else c


def reduce_element(el: dict[str, Any]) -> Element:
    eid = el.get("id") or el["path"]
    out: Element = {"id": eid}
    if el["path"] != ".".join(seg.split(":", 1)[0] for seg in eid.split(".")):
        out["path"] = el["path"]
    if "sliceName" in el:
        out["slice"] = el["sliceName"]
    if "min" in el:
        out["min"] = el["min"]
    if "max" in el:
        out["max"] = el["max"]
    base = el.get("base")
    if base:
        if base["min"] != el.get("min"):
            out["bmin"] = base["min"]
        if base["max"] != el.get("max"):
            out["bmax"] = base["max"]
    if "type" in el:
        types: list[Any] = []
        for t in el["type"]:
            ct: dict[str, Any] = {"code": t["code"]}
            if t.get("profile"):
                ct["profile"] = [_short_canonical(c) for c in t["profile"]]
            if t.get("targetProfile"):
                ct["target"] = [_short_canonical(c) for c in t["targetProfile"]]
            types.append(ct if len(ct) > 1 else t["code"])
        out["types"] = types
    for key, value in el.items():
        if key.startswith("fixed") and key != "fixed":
            out["fixed"] = [key[5:], value]
        elif key.startswith("pattern") and key != "pattern":
            out["pattern"] = [key[7:], value]
    binding = el.get("binding")
    if binding and "strength" in binding:
        out["binding"] = [binding["strength"], binding.get("valueSet")]
    slicing = el.get("slicing")
    if slicing:
        out["slicing"] = {
            "disc": [[d["type"], d["path"]] for d in slicing.get("discriminator", [])],
            "rules": slicing.get("rules", "open"),
            "ordered": bool(slicing.get("ordered", False)),
        }
    cons = [
        [c["key"], c.get("severity", "error"), c.get("expression", ""), 1 if _best_practice(c) else 0]
        for c in el.get("constraint", [])
        if c.get("key") not in UNIVERSAL_CONSTRAINTS
    ]
    if cons:
        out["con"] = cons
    if el.get("mustSupport"):
        out["ms"] = True
    if "contentReference" in el:
        out["cref"] = el["contentReference"]
    return out


def _best_practice(constraint: dict[str, Any]) -> bool:
    return any(
        e.get("url") == BEST_PRACTICE_EXT and e.get("valueBoolean") is True
        for e in constraint.get("extension", [])
    )


def reduce_sd(sd: dict[str, Any]) -> CompactSD:
    """A StructureDefinition as compact facts; ``snapshot`` is None when the package carries only a
    differential (``packages`` generates the snapshot from the base when first asked)."""
    out: CompactSD = {
        "url": sd["url"],
        "version": sd.get("version"),
        "name": sd.get("name"),
        "type": sd["type"],
        "kind": sd.get("kind"),
        "abstract": bool(sd.get("abstract", False)),
        "derivation": sd.get("derivation"),
        "base": sd.get("baseDefinition"),
    }
    ctx = sd.get("context")
    if ctx:
        out["context"] = [[c.get("type"), c.get("expression")] for c in ctx]
    snapshot = sd.get("snapshot")
    out["snapshot"] = [reduce_element(e) for e in snapshot["element"]] if snapshot else None
    diff = sd.get("differential")
    if snapshot is None and diff:
        out["differential"] = [reduce_element(e) for e in diff["element"]]
    return out


# ------------------------------------------------------------------------------------------------
# File form: constraints interned into one table per file (dom-2..6 alone would repeat on every
# resource), elements referring to them by index.


def pack_sds(sds: list[CompactSD]) -> tuple[list[CompactSD], list[list[Any]]]:
    table: list[list[Any]] = []
    index: dict[tuple[Any, ...], int] = {}
    packed: list[CompactSD] = []
    for sd in sds:
        out = dict(sd)
        for key in ("snapshot", "differential"):
            elements = sd.get(key)
            if elements is None:
                continue
            new_elements = []
            for el in elements:
                if "con" in el:
                    el = dict(el)
                    refs = []
                    for c in el["con"]:
                        t = tuple(c)
                        if t not in index:
                            index[t] = len(table)
                            table.append(list(c))
                        refs.append(index[t])
                    el["con"] = refs
                new_elements.append(el)
            out[key] = new_elements
        packed.append(out)
    return packed, table


def unpack_sds(sds: list[CompactSD], table: list[list[Any]]) -> list[CompactSD]:
    for sd in sds:
        for key in ("snapshot", "differential"):
            for el in sd.get(key) or ():
                if "con" in el:
                    el["con"] = [table[i] for i in el["con"]]
    return sds
