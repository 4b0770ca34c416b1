"""Date search values (R4 search.html#date): prefixes and the implicit range of each precision."""

from __future__ import annotations

import calendar
import re
from datetime import UTC, datetime, timedelta, timezone

from fhir_server.errors import invalid
from fhir_server.search.query import DateRange

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")

_DATE_RE = re.compile(
    r"(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d+))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?"
)


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000) if dt.microsecond % 1000 == 0 else (
        calendar.timegm(dt.utctimetuple()) * 1000 + dt.microsecond // 1000
    )


def parse_date_value(raw: str, name: str) -> DateRange:
    """Parse e.g. ``ge2020-01-01T10:00:00+02:00`` into a prefix and a half-open ms range.

    A value without a time zone is taken as UTC (the server's time zone)."""
    prefix = "eq"
    if raw[:2] in PREFIXES:
        prefix, raw = raw[:2], raw[2:]
    m = _DATE_RE.fullmatch(raw)
    if not m:
        raise invalid(f"Invalid date value '{raw}' for search parameter '{name}'")
    try:
        y = int(m["y"])
        if m["m"] is None:
            lo = datetime(y, 1, 1, tzinfo=UTC)
            hi = datetime(y + 1, 1, 1, tzinfo=UTC)
        elif m["d"] is None:
            mo = int(m["m"])
            lo = datetime(y, mo, 1, tzinfo=UTC)
            hi = datetime(y + (mo == 12), mo % 12 + 1, 1, tzinfo=UTC)
        elif m["H"] is None:
            lo = datetime(y, int(m["m"]), int(m["d"]), tzinfo=UTC)
            hi = lo + timedelta(days=1)
        else:
            tz = UTC
            if m["tz"] and m["tz"] != "Z":
                sign = 1 if m["tz"][0] == "+" else -1
                tz = timezone(sign * timedelta(hours=int(m["tz"][1:3]), minutes=int(m["tz"][4:6])))
            frac = m["f"] or ""
            micro = int((frac + "000000")[:6]) if frac else 0
            lo = datetime(y, int(m["m"]), int(m["d"]), int(m["H"]), int(m["M"]), int(m["S"] or 0), micro, tzinfo=tz)
            if m["S"] is None:
                step = timedelta(minutes=1)
            elif not frac:
                step = timedelta(seconds=1)
            else:
                step = timedelta(microseconds=max(1, 10 ** (6 - min(len(frac), 6))))
            hi = lo + step
    except ValueError as exc:
        raise invalid(f"Invalid date value '{raw}' for search parameter '{name}': {exc}") from None
    lo_ms, hi_ms = _ms(lo), _ms(hi)
    return DateRange(prefix, lo_ms, max(hi_ms, lo_ms + 1))
