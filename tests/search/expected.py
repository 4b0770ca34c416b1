"""Independent matchers: what a FHIR R4 search (search.html) should return, computed over resource JSON.

Deliberately small and literal, and sharing no code with ``fhir_server``: element access by dotted
paths, the prefix/range semantics of search.html#prefix written out, string matching by NFKD
accent folding and case folding.  Each function takes plain JSON and returns plain values.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

Resource = dict[str, Any]
Range = tuple[datetime, datetime]

MIN_DT = datetime(1, 1, 1, tzinfo=UTC)
MAX_DT = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
BASE = "http://testserver/fhir"


# -- element access ----------------------------------------------------------------------------


def get(node: Any, path: str) -> list[Any]:
    """The values at a dotted path below ``node``, arrays flattened at every step.

    A segment ending in ``[x]`` (``value[x]``) takes every choice-type member (``valueQuantity``,
    ``valueString``...).  ``Type.`` at the front is dropped when it names the resource type.
    """
    items: list[Any] = [node]
    segments = path.split(".")
    if segments and isinstance(node, dict) and segments[0] == node.get("resourceType"):
        segments = segments[1:]
    for seg in segments:
        nxt: list[Any] = []
        for item in items:
            if not isinstance(item, dict):
                continue
            if seg.endswith("[x]"):
                stem = seg[:-3]
                vals = [v for k, v in item.items() if k.startswith(stem) and k[len(stem) :][:1].isupper()]
            else:
                vals = [item[seg]] if seg in item else []
            for v in vals:
                nxt.extend(v if isinstance(v, list) else [v])
        items = nxt
    return items


def values(res: Resource, *paths: str) -> list[Any]:
    return [v for p in paths for v in get(res, p)]


# -- strings -----------------------------------------------------------------------------------


def norm(text: str) -> str:
    """Accent- and case-insensitive form: NFKD, combining marks dropped, case folded."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def string_parts(element: Any) -> list[str]:
    """The strings a string parameter sees in one element: HumanName and Address parts, or the string."""
    if isinstance(element, str):
        return [element]
    if isinstance(element, dict):
        out: list[str] = []
        for k in (
            "text",
            "family",
            "given",
            "prefix",
            "suffix",
            "line",
            "city",
            "district",
            "state",
            "postalCode",
            "country",
        ):
            v = element.get(k)
            if isinstance(v, str):
                out.append(v)
            elif isinstance(v, list):
                out.extend(x for x in v if isinstance(x, str))
        return out
    return []


def strings(res: Resource, *paths: str) -> list[str]:
    return [s for v in values(res, *paths) for s in string_parts(v)]


def string_match(found: Iterable[str], query: str, modifier: str = "") -> bool:
    """search.html#string: default = starts with, ``:contains`` = anywhere, ``:exact`` = whole and exact."""
    q = norm(query)
    for s in found:
        if modifier == "exact":
            if s == query:
                return True
        elif modifier == "contains":
            if q in norm(s):
                return True
        elif norm(s).startswith(q):
            return True
    return False


# -- tokens ------------------------------------------------------------------------------------


def split_token(query: str) -> tuple[str | None, str | None]:
    r"""``system|code`` -> (system, code); ``code`` -> (None, code); ``|code`` -> ('', code);
    ``system|`` -> (system, None).  ``\|``, ``\,`` and ``\$`` are escaped characters."""
    parts = re.split(r"(?<!\\)\|", query, maxsplit=1)

    def unescape(s: str) -> str:
        return s.replace("\\|", "|").replace("\\,", ",").replace("\\$", "$").replace("\\\\", "\\")

    if len(parts) == 1:
        return None, unescape(parts[0])
    system, code = parts
    return unescape(system), (unescape(code) if code else None)


def codings(element: Any) -> list[tuple[str | None, str | None]]:
    """(system, code) pairs of a Coding, CodeableConcept, Identifier, ContactPoint, code or boolean."""
    if isinstance(element, bool):
        return [(None, "true" if element else "false")]
    if isinstance(element, str):
        return [(None, element)]
    if not isinstance(element, dict):
        return []
    if "coding" in element:
        return [(c.get("system"), c.get("code")) for c in element["coding"]]
    if "code" in element:  # Coding, Quantity-like
        return [(element.get("system"), element.get("code"))]
    if "value" in element:  # Identifier, ContactPoint
        return [(element.get("system"), element.get("value"))]
    return []


# search.html#token: a match "is case sensitive unless the underlying semantics for the context
# indicate that the token should be interpreted case-insensitively (e.g. a code system that is
# case-insensitive)".  SNOMED CT's R4 CodeSystem and Regenstrief's LOINC CodeSystem say
# caseSensitive false.  Identifier values are no codes and always compare exactly.
CASE_INSENSITIVE_SYSTEMS = frozenset({"http://snomed.info/sct", "http://loinc.org"})


def same_code(found: str | None, wanted: str, system: str | None, coded: bool) -> bool:
    if found == wanted:
        return True
    return (coded and system in CASE_INSENSITIVE_SYSTEMS and found is not None
            and found.casefold() == wanted.casefold())


def token_match(elements: Iterable[Any], query: str) -> bool:
    """One token value (search.html#token) against the elements of a resource."""
    system, code = split_token(query)
    for el in elements:
        coded = isinstance(el, dict) and ("coding" in el or "code" in el)  # a Coding or CodeableConcept
        for s, c in codings(el):
            if code is not None and not same_code(c, code, s, coded):
                continue
            if system is None:
                return True
            if system == "" and not s:
                return True
            if system and s == system:
                return True
    return False


def token_text(elements: Iterable[Any], query: str) -> bool:
    """``:text``: CodeableConcept.text or a Coding.display (Identifier.type.text) starts with the text."""
    texts: list[str] = []
    for el in elements:
        if not isinstance(el, dict):
            continue
        if isinstance(el.get("text"), str):
            texts.append(el["text"])
        texts.extend(c["display"] for c in el.get("coding", []) if isinstance(c.get("display"), str))
        if isinstance(el.get("display"), str):
            texts.append(el["display"])
        if isinstance(el.get("type"), dict):
            texts.extend(s for s in [el["type"].get("text")] if isinstance(s, str))
    return string_match(texts, query)


def identifier_of_type(identifiers: Iterable[Any], query: str) -> bool:
    """``identifier:of-type=system|code|value``: Identifier.type has the coding and the value is equal."""
    system, code, value = query.split("|", 2)
    for ident in identifiers:
        if ident.get("value") != value:
            continue
        for c in ident.get("type", {}).get("coding", []):
            if c.get("system") == system and c.get("code") == code:
                return True
    return False


# -- references --------------------------------------------------------------------------------


def reference_strings(elements: Iterable[Any]) -> list[str]:
    """The literal references of Reference elements, absolute references to this server made relative."""
    out = []
    for el in elements:
        ref = el.get("reference") if isinstance(el, dict) else None
        if isinstance(ref, str):
            if ref.startswith(BASE + "/"):
                ref = ref[len(BASE) + 1 :]
            out.append(ref)
    return out


def refers_to(res: Resource, paths: Sequence[str], target: str) -> bool:
    """``res`` has a Reference at one of ``paths`` whose literal reference is ``target`` (``Type/id``)."""
    return target in reference_strings(values(res, *paths))


def reference_identifier(elements: Iterable[Any], query: str) -> bool:
    """``:identifier``: Reference.identifier matches the token ``system|value``."""
    idents = [el["identifier"] for el in elements if isinstance(el, dict) and "identifier" in el]
    return token_match(idents, query)


# -- dates -------------------------------------------------------------------------------------

_DATE_RE = re.compile(
    r"(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d+))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


def _add_months(d: datetime, n: int) -> datetime:
    y, m = divmod(d.month - 1 + n, 12)
    return d.replace(year=d.year + y, month=m + 1)


def date_range(text: str) -> Range:
    """The implicit range of a date, dateTime or instant value, [low, high) in UTC.

    ``2020`` is [2020-01-01, 2021-01-01); ``2020-05-01T10:00:00+02:00`` is one second wide; a value
    without a time zone is taken as UTC (the server's zone in these tests).
    """
    m = _DATE_RE.match(text)
    if not m:
        raise ValueError(f"not a FHIR date: {text!r}")
    g = m.groupdict()
    tz = UTC
    if g["tz"] and g["tz"] != "Z":
        sign = 1 if g["tz"][0] == "+" else -1
        hh, mm = g["tz"][1:].split(":")
        tz = timezone(sign * timedelta(hours=int(hh), minutes=int(mm)))
    y = int(g["y"])
    if g["m"] is None:
        lo = datetime(y, 1, 1, tzinfo=tz)
        return lo.astimezone(UTC), lo.replace(year=y + 1).astimezone(UTC)
    if g["d"] is None:
        lo = datetime(y, int(g["m"]), 1, tzinfo=tz)
        return lo.astimezone(UTC), _add_months(lo, 1).astimezone(UTC)
    if g["H"] is None:
        lo = datetime(y, int(g["m"]), int(g["d"]), tzinfo=tz)
        return lo.astimezone(UTC), (lo + timedelta(days=1)).astimezone(UTC)
    sec = int(g["S"] or 0)
    lo = datetime(y, int(g["m"]), int(g["d"]), int(g["H"]), int(g["M"]), sec, tzinfo=tz)
    if g["S"] is None:
        width = timedelta(minutes=1)
    elif g["f"]:
        frac = g["f"][:6]
        lo = lo.replace(microsecond=int(frac.ljust(6, "0")))
        width = timedelta(microseconds=10 ** (6 - len(frac)))
    else:
        width = timedelta(seconds=1)
    return lo.astimezone(UTC), (lo + width).astimezone(UTC)


def element_range(element: Any) -> Range | None:
    """The range of a date/dateTime/instant string or a Period (missing ends are open)."""
    if isinstance(element, str):
        return date_range(element)
    if isinstance(element, dict) and ("start" in element or "end" in element):
        lo = date_range(element["start"])[0] if "start" in element else MIN_DT
        hi = date_range(element["end"])[1] if "end" in element else MAX_DT
        return lo, hi
    return None


def split_prefix(query: str) -> tuple[str, str]:
    if query[:2] in PREFIXES:
        return query[:2], query[2:]
    return "eq", query


def date_compare(prefix: str, search: Range, target: Range, overlap: bool = False) -> bool:
    """search.html#prefix for ranges: the target's range against the search value's range.

    ``ge``/``le`` follow R4's text: "the range above (below) the search value intersects the target's
    range, or the search range fully contains it".  ``overlap=True`` gives the looser reading many
    servers use instead: the target's range overlaps [search start, +inf) (ge) or (-inf, search end) (le).
    """
    s_lo, s_hi = search
    t_lo, t_hi = target
    eq = s_lo <= t_lo and t_hi <= s_hi
    if prefix == "eq":
        return eq
    if prefix == "ne":
        return not eq
    if prefix == "gt":
        return t_hi > s_hi
    if prefix == "lt":
        return t_lo < s_lo
    if prefix == "ge":
        return t_hi > s_lo if overlap else (t_hi > s_hi or eq)
    if prefix == "le":
        return t_lo < s_hi if overlap else (t_lo < s_lo or eq)
    if prefix == "sa":
        return t_lo >= s_hi
    if prefix == "eb":
        return t_hi <= s_lo
    raise ValueError(prefix)


def date_match(elements: Iterable[Any], query: str, overlap: bool = False) -> bool:
    """One date search value (with prefix) against the date elements of a resource (any may match)."""
    prefix, text = split_prefix(query)
    search = date_range(text)
    for el in elements:
        target = element_range(el)
        if target is not None and date_compare(prefix, search, target, overlap):
            return True
    return False


# -- numbers and quantities --------------------------------------------------------------------


def number_range(text: str) -> tuple[Decimal, Decimal]:
    """The implicit range of a decimal written with its precision: ``5.4`` is [5.35, 5.45)."""
    d = Decimal(text)
    exp = d.as_tuple().exponent
    assert isinstance(exp, int)
    half = Decimal(5).scaleb(exp - 1)
    return d - half, d + half


def number_compare(prefix: str, text: str, value: Decimal) -> bool:
    q = Decimal(text)
    lo, hi = number_range(text)
    if prefix == "eq":
        return lo <= value < hi
    if prefix == "ne":
        return not (lo <= value < hi)
    if prefix in ("gt", "sa"):
        return value > q
    if prefix in ("lt", "eb"):
        return value < q
    if prefix == "ge":
        return value >= q
    if prefix == "le":
        return value <= q
    if prefix == "ap":
        return abs(value - q) <= abs(q) / 10
    raise ValueError(prefix)


def number_match(elements: Iterable[Any], query: str) -> bool:
    prefix, text = split_prefix(query)
    numbers = [
        Decimal(str(v)) for v in elements if isinstance(v, int | float | Decimal) and not isinstance(v, bool)
    ]
    return any(number_compare(prefix, text, v) for v in numbers)


def quantity_match(quantities: Iterable[Any], query: str) -> bool:
    """``[prefix]number|system|code``; ``number||code`` matches code or unit; a bare number any unit."""
    parts = query.split("|")
    prefix, text = split_prefix(parts[0])
    system = parts[1] if len(parts) > 1 else ""
    code = parts[2] if len(parts) > 2 else ""
    for qty in quantities:
        if not isinstance(qty, dict) or "value" not in qty:
            continue
        if system and qty.get("system") != system:
            continue
        if code and (qty.get("code") != code if system else code not in (qty.get("code"), qty.get("unit"))):
            continue
        if number_compare(prefix, text, Decimal(str(qty["value"]))):
            return True
    return False


# -- Ranges ------------------------------------------------------------------------------------


def range_ends(element: Any) -> tuple[Decimal | None, Decimal | None] | None:
    """(low, high) of a Range; None for a missing end, which is unbounded (datatypes.html#Range:
    "the low or high boundaries are not known").  None when neither end has a value."""
    if not isinstance(element, dict):
        return None
    lo, hi = element.get("low", {}).get("value"), element.get("high", {}).get("value")
    if lo is None and hi is None:
        return None
    return (None if lo is None else Decimal(str(lo))), (None if hi is None else Decimal(str(hi)))


def interval_compare(prefix: str, text: str, lo: Decimal | None, hi: Decimal | None) -> bool:
    """A search number against a target covering [lo, hi] (None: unbounded on that side).

    search.html#prefix for ranges, with the exact search value for the order prefixes as
    ``number_compare`` has it for single values (so a single value v behaves as [v, v]):
    eq: the search value's precision range holds the whole target; gt: the range above the value
    intersects the target; lt: the range below does; ge / le likewise including the value; sa / eb:
    all of the target lies above (below) the value; ap: some of it lies within 10% of the value.
    """
    q = Decimal(text)
    s_lo, s_hi = number_range(text)
    inside = lo is not None and hi is not None and s_lo <= lo and hi < s_hi
    above = hi is None or hi > q  # some of the target is above the value
    below = lo is None or lo < q
    if prefix == "eq":
        return inside
    if prefix == "ne":
        return not inside
    if prefix == "gt":
        return above
    if prefix == "lt":
        return below
    if prefix == "ge":
        return hi is None or hi >= q
    if prefix == "le":
        return lo is None or lo <= q
    if prefix == "sa":
        return lo is not None and lo > q
    if prefix == "eb":
        return hi is not None and hi < q
    if prefix == "ap":
        gap = abs(q) / 10
        return (hi is None or hi >= q - gap) and (lo is None or lo <= q + gap)
    raise ValueError(prefix)


def number_range_match(ranges: Iterable[Any], query: str) -> bool:
    prefix, text = split_prefix(query)
    return any(
        interval_compare(prefix, text, *ends) for r in ranges if (ends := range_ends(r)) is not None
    )


def quantity_range_match(ranges: Iterable[Any], query: str) -> bool:
    """``quantity_match`` for Range elements: the unit is that of the Range's low (or, without a
    low value, its high) quantity."""
    parts = query.split("|")
    prefix, text = split_prefix(parts[0])
    system = parts[1] if len(parts) > 1 else ""
    code = parts[2] if len(parts) > 2 else ""
    for r in ranges:
        ends = range_ends(r)
        if ends is None:
            continue
        unit = r["low"] if ends[0] is not None else r["high"]
        if system and unit.get("system") != system:
            continue
        if code and (unit.get("code") != code if system else code not in (unit.get("code"), unit.get("unit"))):
            continue
        if interval_compare(prefix, text, *ends):
            return True
    return False


# -- positions (Location near) ----------------------------------------------------------------

# Great-circle distances on a sphere of the IUGG mean Earth radius (R1), the model the server
# states; a point 1 m from a search circle is on the same side of it for any sphere near this one.
EARTH_RADIUS_KM = 6371.0088


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    rad = math.radians
    a = (math.sin(rad(lat2 - lat1) / 2) ** 2
         + math.cos(rad(lat1)) * math.cos(rad(lat2)) * math.sin(rad(lon2 - lon1) / 2) ** 2)
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def position(res: Resource) -> tuple[float, float] | None:
    """A Location's (latitude, longitude), when both are there and within WGS84's range."""
    pos = res.get("position")
    if not isinstance(pos, dict) or not isinstance(pos.get("latitude"), int | float) \
            or not isinstance(pos.get("longitude"), int | float):
        return None
    lat, lon = float(pos["latitude"]), float(pos["longitude"])
    return (lat, lon) if -90 <= lat <= 90 and -180 <= lon <= 180 else None


def near_match(res: Resource, lat: float, lon: float, km: float) -> bool:
    """``near=lat|lon|km|km``: the Location's position is within ``km`` of the point."""
    p = position(res)
    return p is not None and haversine_km(lat, lon, p[0], p[1]) <= km


# -- helpers for tests -------------------------------------------------------------------------


def present(res: Resource, *paths: str) -> bool:
    return bool(values(res, *paths))


def all_of(*preds: Callable[[Resource], bool]) -> Callable[[Resource], bool]:
    return lambda r: all(p(r) for p in preds)


def any_of(*preds: Callable[[Resource], bool]) -> Callable[[Resource], bool]:
    return lambda r: any(p(r) for p in preds)


def patient_ref(res: Resource, path: str, patient_id: str) -> bool:
    """The common ``patient`` parameter: ``path`` references ``Patient/<id>``."""
    return refers_to(res, [path], f"Patient/{patient_id}")
