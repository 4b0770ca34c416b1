"""_summary and _elements (R4 search.html#summary, #elements): cut stored resources down.

The kept elements come from the R4 definitions: isSummary flags for _summary=true, mandatory
elements (min >= 1) always, and the SUBSETTED tag marks every cut resource.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from fhir_server.model import jsonio
from fhir_server.model.facts import get_facts

SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "Resource encoded in summary mode",
}
_ALWAYS = {"resourceType", "id", "meta"}


@lru_cache(maxsize=512)
def _members(resource_type: str, which: str) -> frozenset[str]:
    """JSON member names (choice types expanded, with their _ companions) of one kind of element."""
    t = get_facts().types[resource_type]
    names: set[str] = set()
    for json_name, (el, _) in t.members.items():
        if (which == "summary" and el.summary) or (which == "mandatory" and el.min >= 1):
            names.add(json_name)
            names.add("_" + json_name)
    return frozenset(names)


def _tagged(out: dict[str, Any]) -> dict[str, Any]:
    meta = dict(out.get("meta") or {})
    tags = list(meta.get("tag") or [])
    if not any(t.get("code") == "SUBSETTED" for t in tags if isinstance(t, dict)):
        tags.append(SUBSETTED)
    meta["tag"] = tags
    out["meta"] = meta
    return out


def subset(body: bytes, summary: str | None, elements: tuple[str, ...]) -> bytes:
    """The stored bytes cut down per _summary / _elements (unchanged when neither applies)."""
    if summary in (None, "false", "count") and not elements:
        return body
    res = jsonio.loads(body)
    rt = res.get("resourceType", "")
    if rt not in get_facts().types:
        return body
    mandatory = _members(rt, "mandatory")
    if summary == "data":
        out = {k: v for k, v in res.items() if k != "text"}
    elif summary == "text":
        keep = _ALWAYS | mandatory | {"text"}
        out = {k: v for k, v in res.items() if k in keep}
    elif summary == "true":
        keep = _ALWAYS | mandatory | _members(rt, "summary")
        out = {k: v for k, v in res.items() if k in keep}
    else:
        wanted = set(elements)
        wanted |= {"_" + e for e in elements}
        keep = _ALWAYS | mandatory | wanted
        out = {k: v for k, v in res.items() if k in keep}
    return jsonio.dumps(_tagged(out))
