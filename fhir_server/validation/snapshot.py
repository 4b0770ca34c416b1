"""Snapshot generation: a profile's differential applied to its base's snapshot (compact elements).

Covers what implementation guides write in differentials: constraining existing elements (cardinality,
types, fixed/pattern, bindings, constraints, must-support, slicing), adding slices (a new slice starts
as a copy of the sliced element and its children, with min 0), reaching into a datatype's children
(the datatype, or the profile named on the type, is unrolled under the element first, also under
contentReference elements), and the R4 renamed form of a choice type (``Observation.valueQuantity``
constrains ``Observation.value[x]`` to Quantity).  Re-slicing (``slice/reslice``) is refused.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from fhir_server.validation.compact import Element, element_path, type_code, type_profiles

TypeSnapshot = Callable[[str], "list[Element] | None"]

_OVERRIDES = ("min", "max", "types", "fixed", "pattern", "binding", "slicing", "ms", "cref")
_BASE_CARD = (("min", "bmin"), ("max", "bmax"))
_PRISTINE = "_pristine"


class SnapshotError(Exception):
    """A differential that cannot be applied to its base."""


def generate_snapshot(diff: list[Element], base: list[Element], type_snapshot: TypeSnapshot) -> list[Element]:
    if not base:
        raise SnapshotError("the base has an empty snapshot")
    snap = [copy.deepcopy(e) for e in base]
    root = base[0]["id"]
    for d in diff:
        did = d["id"]
        if "." not in did and did != root:
            # A differential rooted at another name (say "Extension" over a base named alike) keeps
            # the base's root.
            did = root
        index = _locate(snap, did, type_snapshot)
        if index is None:
            raise SnapshotError(f"differential element {d['id']!r} matches no element of the base")
        _merge(snap[index], d)
    for e in snap:
        e.pop(_PRISTINE, None)
    return snap


def _merge(target: Element, d: Element) -> None:
    if _PRISTINE not in target:
        # A slice added later starts from the element as the base defines it, not as this
        # differential changes it (as the HL7 snapshot generator does).
        target[_PRISTINE] = copy.deepcopy(target)
    for own, base in _BASE_CARD:
        # The base cardinality is the one before any profile; keep it when a profile changes min/max.
        if own in d and base not in target and d[own] != target.get(own):
            target[base] = target.get(own)
    for key in _OVERRIDES:
        if key in d:
            target[key] = copy.deepcopy(d[key])
    if "con" in d:
        have = {c[0] for c in target.get("con", ())}
        target["con"] = list(target.get("con", ())) + [list(c) for c in d["con"] if c[0] not in have]


def _index_of(snap: list[Element], eid: str) -> int | None:
    for i, e in enumerate(snap):
        if e["id"] == eid:
            return i
    return None


def _split(eid: str) -> list[str]:
    return eid.split(".")


def _locate(snap: list[Element], eid: str, type_snapshot: TypeSnapshot) -> int | None:
    i = _index_of(snap, eid)
    if i is not None:
        return i
    segments = _split(eid)
    if len(segments) == 1:
        return None
    parent_id = ".".join(segments[:-1])
    last = segments[-1]
    parent = _locate(snap, parent_id, type_snapshot)
    if parent is None:
        return None
    parent_id = snap[parent]["id"]  # may differ from the asked id: "valueQuantity" is "value[x]"
    name, _, slice_name = last.partition(":")
    if "/" in slice_name:
        raise SnapshotError(f"re-slicing ({eid!r}) is not supported")
    plain_id = f"{parent_id}.{name}"
    if _index_of(snap, plain_id) is None and not _has_children(snap, parent_id):
        _unroll(snap, parent, type_snapshot)
    plain = _index_of(snap, plain_id)
    if plain is None:
        plain = _renamed_choice(snap, parent_id, name)
        if plain is None:
            return None
        if slice_name:
            return _add_slice(snap, plain, slice_name)
        return plain
    if slice_name:
        return _add_slice(snap, plain, slice_name)
    return plain


def _has_children(snap: list[Element], eid: str) -> bool:
    prefix = eid + "."
    return any(e["id"].startswith(prefix) for e in snap)


def _renamed_choice(snap: list[Element], parent_id: str, name: str) -> int | None:
    # "valueQuantity" names value[x] restricted to Quantity (R4 profiles may say it either way),
    # or the type slice value[x]:valueQuantity where the base has one.
    sliced = _index_of(snap, f"{parent_id}.{name[: _choice_base_len(snap, parent_id, name)]}[x]:{name}")
    if sliced is not None:
        return sliced
    for i, e in enumerate(snap):
        eid = e["id"]
        if (
            not eid.startswith(parent_id + ".")
            or not eid.endswith("[x]")
            or eid.count(".") != parent_id.count(".") + 1
        ):
            continue
        base_name = eid[len(parent_id) + 1 : -3]
        if not name.startswith(base_name) or len(name) == len(base_name):
            continue
        suffix = name[len(base_name) :]
        for t in e.get("types", ()):
            code = type_code(t)
            if code[:1].upper() + code[1:] == suffix:
                e["types"] = [t]
                return i
    return None


def _choice_base_len(snap: list[Element], parent_id: str, name: str) -> int:
    for e in snap:
        eid = e["id"]
        if (
            eid.startswith(parent_id + ".")
            and eid.endswith("[x]")
            and eid.count(".") == parent_id.count(".") + 1
        ):
            base = eid[len(parent_id) + 1 : -3]
            if name.startswith(base) and len(name) > len(base):
                return len(base)
    return len(name)


def _unroll(snap: list[Element], index: int, type_snapshot: TypeSnapshot) -> None:
    """Insert the children of element ``index`` from its datatype (or its type's profile)."""
    el = snap[index]
    children: list[Element]
    if "cref" in el:
        ref = el["cref"].lstrip("#")
        src = _index_of(snap, ref)
        if src is None:
            raise SnapshotError(f"contentReference {el['cref']} of {el['id']} not found")
        prefix = ref + "."
        children = [copy.deepcopy(e) for e in snap if e["id"].startswith(prefix)]
        root_id, root_path = ref, element_path(snap[src])
    else:
        types = el.get("types") or []
        if len(types) != 1:
            raise SnapshotError(f"cannot reach into {el['id']}: it has {len(types)} types")
        t = types[0]
        profiles = type_profiles(t, "profile")
        source = type_snapshot(profiles[0]) if profiles else None
        if source is None:
            source = type_snapshot(type_code(t))
        if not source:
            raise SnapshotError(f"cannot reach into {el['id']}: type {type_code(t)} is not loaded")
        root_id, root_path = source[0]["id"], element_path(source[0])
        children = [copy.deepcopy(e) for e in source[1:]]
    own_path = element_path(el)
    for c in children:
        path = own_path + element_path(c)[len(root_path) :]
        c["id"] = el["id"] + c["id"][len(root_id) :]
        c.pop("path", None)
        if element_path(c) != path:
            c["path"] = path
    snap[index + 1 : index + 1] = children


def _add_slice(snap: list[Element], plain: int, slice_name: str) -> int:
    base = snap[plain]
    base_id = base["id"]
    if "slicing" not in base and base_id.rsplit(".", 1)[-1] in ("extension", "modifierExtension"):
        # Extensions are sliced by url without saying so.
        base["slicing"] = {"disc": [["value", "url"]], "rules": "open", "ordered": False}
    end = plain + 1
    while end < len(snap) and (
        snap[end]["id"].startswith(base_id + ".") or snap[end]["id"].startswith(base_id + ":")
    ):
        end += 1
    slice_id = f"{base_id}:{slice_name}"
    head = copy.deepcopy(base.get(_PRISTINE, base))
    head.pop("slicing", None)
    head.pop(_PRISTINE, None)
    head["id"] = slice_id
    head["slice"] = slice_name
    head["min"] = 0
    block = [head]
    for e in snap[plain + 1 : end]:
        if e["id"].startswith(base_id + "."):
            c = copy.deepcopy(e.get(_PRISTINE, e))
            c.pop(_PRISTINE, None)
            c["id"] = slice_id + e["id"][len(base_id) :]
            block.append(c)
    snap[end:end] = block
    return end
