"""Value normalisation shared by index extraction and query planning.

Both sides must agree to the character: a search value goes through ``norm`` the way an indexed
string did, and date values get the same implicit ranges (R4 search.html#date) on both sides.
Numbers are indexed as exact values (a Range as its two ends), and only the search value has an
implicit precision range (R4 search.html#number: "lt100: values that are less than exactly 100").
"""

from __future__ import annotations

import re
import unicodedata
from decimal import Context, Decimal, InvalidOperation
from functools import lru_cache

# Column sizes of the index tables (fhir_server/storage/sql/schema.py); PostgreSQL refuses longer
# values, so texts are cut to them here.  A search value longer than a column can only match
# after the same cut (the planner's business).
STRING_NORM_MAX = 255
STRING_EXACT_MAX = 1024
TOKEN_SYSTEM_MAX = 512
TOKEN_CODE_MAX = 512
QUANTITY_CODE_MAX = 256
URI_MAX = 1024

# Open ends of a Period (R4: a missing start or end is unbounded on that side).
DATE_MIN_MS = -(2**62)
DATE_MAX_MS = 2**62
# Open ends of a Range, for the same reason.  Finite, so that plain comparisons (and the lookup
# index) serve open ranges: NULL would need IS NULL branches, and a numeric Infinity is neither
# portable (PostgreSQL < 14) nor exact in SQLite's doubles.  1e300 fits a double and PostgreSQL's
# numeric alike; no clinical value comes near it.
NUMBER_MIN = Decimal("-1e300")
NUMBER_MAX = Decimal("1e300")


def norm(text: str) -> str:
    """Case- and accent-insensitive form for string search: NFKD, marks dropped, casefolded,
    whitespace collapsed, stripped, at most 255 characters."""
    if text.isascii():
        return " ".join(text.casefold().split())[:STRING_NORM_MAX]
    # casefold first: it may produce letters that decompose (U+0130 -> i + combining dot).
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(stripped.split())[:STRING_NORM_MAX]


# ---------------------------------------------------------------------------------------------
# Dates

# Validates; the parts are then read by position, which is faster than regex groups.
_DATE = re.compile(r"\d{4}(?:-\d\d(?:-\d\d(?:T\d\d:\d\d(?::\d\d(?:\.\d+)?)?(?:Z|[+-]\d\d:\d\d)?)?)?)?")
_DAY_MS = 86_400_000
_MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm): no datetime
    objects on the write path."""
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _valid_day(y: int, m: int, d: int) -> bool:
    if not 1 <= m <= 12 or d < 1:
        return False
    if m == 2 and d == 29:
        return y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)
    return d <= _MONTH_DAYS[m - 1]


# Bulk loads repeat the same instants across the resources of an encounter.
@lru_cache(maxsize=8192)
def date_range(text: str) -> tuple[int, int] | None:
    """The half-open range [lo, hi) in epoch ms that a FHIR date, dateTime or instant covers.

    The precision sets the width (a year, a month, a day, a minute, a second, or the fraction's
    last digit, at least 1 ms).  A value without a time zone is taken as UTC."""
    if _DATE.fullmatch(text) is None:
        return None
    n = len(text)
    y = int(text[:4])
    if n == 4:
        return _days_from_civil(y, 1, 1) * _DAY_MS, _days_from_civil(y + 1, 1, 1) * _DAY_MS
    mo = int(text[5:7])
    if n == 7:
        if not 1 <= mo <= 12:
            return None
        lo = _days_from_civil(y, mo, 1) * _DAY_MS
        return lo, _days_from_civil(y + (mo == 12), mo % 12 + 1, 1) * _DAY_MS
    d = int(text[8:10])
    if not _valid_day(y, mo, d):
        return None
    day = _days_from_civil(y, mo, d) * _DAY_MS
    if n == 10:
        return day, day + _DAY_MS
    hh, mm = int(text[11:13]), int(text[14:16])
    if hh > 23 or mm > 59:
        return None
    lo = day + (hh * 60 + mm) * 60_000
    tz = text[16:]
    seconds = tz[:1] == ":"
    if seconds:
        lo += int(tz[1:3]) * 1000
        tz = tz[3:]
    frac = ""
    if tz[:1] == ".":
        end = 1
        while end < len(tz) and tz[end].isdigit():
            end += 1
        frac, tz = tz[1:end], tz[end:]
    if tz and tz != "Z":
        offset = (int(tz[1:3]) * 60 + int(tz[4:6])) * 60_000
        lo -= offset if tz[0] == "+" else -offset
    if not seconds:
        return lo, lo + 60_000
    if not frac:
        return lo, lo + 1000
    # .1 is precise to 100 ms, .123 and anything finer to 1 ms (the column's unit).
    lo += int((frac + "00")[:3])
    return lo, lo + (10 ** (3 - len(frac)) if len(frac) < 3 else 1)


# ---------------------------------------------------------------------------------------------
# Numbers

# Enough digits that lo/hi are exact for any literal a client can send.
_CTX = Context(prec=200)


def to_decimal(value: object) -> Decimal | None:
    """A JSON number (int, or JsonDecimal / str holding the literal) as an exact Decimal."""
    if value is True or value is False or value is None:
        return None
    try:
        if isinstance(value, int):
            return Decimal(value)
        if isinstance(value, float):
            return Decimal(repr(value))
        if isinstance(value, str):
            d = Decimal(str.__str__(value))
            return d if d.is_finite() else None
    except (InvalidOperation, ValueError):
        return None
    return None


_HALF: dict[int, Decimal] = {}


def number_range(value: object) -> tuple[Decimal, Decimal] | None:
    """[lo, hi) of the implicit precision of a number: 100 -> [99.5, 100.5), 1.50 -> [1.495, 1.505)."""
    d = to_decimal(value)
    if d is None:
        return None
    text = value if isinstance(value, str) else ""
    if "e" in text or "E" in text or not text:
        exponent = d.as_tuple().exponent
        assert isinstance(exponent, int)
    else:
        # The exponent of a plain literal is minus its count of decimals (as_tuple is slower).
        dot = text.find(".")
        exponent = 0 if dot < 0 else dot + 1 - len(text)
    half = _HALF.get(exponent)
    if half is None:
        half = _HALF[exponent] = Decimal((0, (5,), exponent - 1))
    return _CTX.subtract(d, half), _CTX.add(d, half)


# ---------------------------------------------------------------------------------------------
# References

_HISTORY = re.compile(r"/_history/[^/]*$")
_TYPE_ID = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})$")


def parse_reference(
    ref: str, base_url: str, resource_types: frozenset[str] | set[str]
) -> tuple[str | None, str | None, str | None] | None:
    """(target_type, target_id, url) of a Reference.reference, or None when it is not indexable.

    ``Type/id`` and ``<base_url>/Type/id`` are local; another absolute URL and ``urn:``
    references keep only their text in ``url``: a type and id there would make another server's
    Patient/1 match (and include, and join the compartment of) this server's Patient/1.
    ``#contained`` references are not indexed.  A version (``/_history/n``) is dropped:
    a reference search matches whatever version was referenced."""
    if not ref or ref[0] == "#":
        return None
    if ref.startswith("urn:"):
        return None, None, ref
    local = False
    if base_url and ref.startswith(base_url) and ref[len(base_url):len(base_url) + 1] == "/":
        ref = ref[len(base_url) + 1:]
        local = True
    if "/_history/" in ref:
        ref = _HISTORY.sub("", ref)
    if not local and "://" in ref:
        return None, None, ref
    m = _TYPE_ID.search(ref)
    if m is not None and m.group(1) in resource_types and m.start() == 0:
        return m.group(1), m.group(2), None
    return None, None, ref
