"""Location ``near`` (R4 location.html#positional): ``[latitude]|[longitude]|[distance]|[units]``.

Positions are WGS84 degrees; distances are great-circle distances on a sphere of the mean Earth
radius (haversine).  The index holds each position once; a search is a latitude range that the
lookup index serves, longitude ranges, then the exact distance (see ``search_box``).
"""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation
from typing import Any

from fhir_server.errors import invalid
from fhir_server.search.normalize import to_decimal
from fhir_server.search.params.token import split_escaped, unescape
from fhir_server.search.query import NearValue

URL = "http://hl7.org/fhir/SearchParameter/Location-near"

# IUGG mean radius R1.  The sphere's error against the WGS84 ellipsoid (up to ~0.5%) is the
# "differing accuracies" R4 allows; what matters is that the same formula decides everywhere.
EARTH_RADIUS_KM = 6371.0088
# R4 leaves "near" without a distance to the server; 1 km is what Blaze chose as well.
DEFAULT_DISTANCE_KM = 1.0
# UCUM length units (case-sensitive codes), in km.  Missing units mean km (R4).
UNITS_KM: dict[str, float] = {
    "km": 1.0,
    "m": 0.001,
    "cm": 0.00001,
    "mm": 0.000001,
    "[mi_i]": 1.609344,
    "[mi_us]": 5280 * 1200 / 3937 / 1000,  # 5280 US survey feet of 1200/3937 m
    "[nmi_i]": 1.852,
    "[yd_i]": 0.0009144,
    "[ft_i]": 0.0003048,
}
# Added to each side of the search box: a point at exactly the distance must not be lost to a
# rounding difference between the box and the distance (1e-9 degrees is about 0.1 mm).
_BOX_MARGIN_DEG = 1e-9


def haversine_km(lat1: float | None, lon1: float | None, lat2: float | None, lon2: float | None) -> float | None:
    """Great-circle distance in km between two positions in degrees (None if any is None).

    Also registered as an SQL function on SQLite connections, hence the None handling."""
    if lat1 is None or lon1 is None or lat2 is None or lon2 is None:
        return None
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = (math.sin((p2 - p1) / 2) ** 2
         + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2)
    # Rounding can push a slightly above 1 for antipodal points, outside asin's domain.
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def position(v: Any) -> tuple[float, float] | None:
    """(latitude, longitude) of a Location.position, or None when either is missing or outside
    WGS84's range: such a position is near nothing, rather than near a guessed point."""
    if type(v) is not dict:
        return None
    lat, lon = _number(v.get("latitude")), _number(v.get("longitude"))
    if lat is None or lon is None or not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        return None
    return lat, lon


def _number(v: Any) -> float | None:
    d = to_decimal(v)  # decimals arrive as their JSON literal (jsonio.JsonDecimal)
    return None if d is None else float(d)


def search_box(v: NearValue) -> tuple[tuple[float, float], tuple[tuple[float, float], ...]]:
    """A latitude range and one or two longitude ranges (degrees, inclusive) that contain every
    point within ``v.km`` of ``v``: the index prefilter; the exact distance test follows it.

    Two longitude ranges when the circle crosses the antimeridian; every longitude when it
    reaches a pole (or covers the globe)."""
    delta = v.km / EARTH_RADIUS_KM  # angular radius
    everywhere = (-180.0, 180.0)
    if delta >= math.pi:
        return (-90.0, 90.0), (everywhere,)
    phi = math.radians(v.lat)
    lat_lo = max(-90.0, math.degrees(phi - delta) - _BOX_MARGIN_DEG)
    lat_hi = min(90.0, math.degrees(phi + delta) + _BOX_MARGIN_DEG)
    if phi + delta >= math.pi / 2 or phi - delta <= -math.pi / 2:
        return (lat_lo, lat_hi), (everywhere,)
    # The meridians tangent to the circle; |phi| + delta < pi/2 keeps the ratio below 1.
    dlon = math.degrees(math.asin(math.sin(delta) / math.cos(phi))) + _BOX_MARGIN_DEG
    lo, hi = v.lon - dlon, v.lon + dlon
    if lo < -180.0:
        return (lat_lo, lat_hi), ((lo + 360.0, 180.0), (-180.0, hi))
    if hi > 180.0:
        return (lat_lo, lat_hi), ((lo, 180.0), (-180.0, hi - 360.0))
    return (lat_lo, lat_hi), ((lo, hi),)


def parse_near(raw: str, code: str) -> NearValue:
    """One ``near`` value; 400 naming the parameter when a part is missing or malformed."""
    parts = [unescape(p) for p in split_escaped(raw, "|")]
    if len(parts) < 2 or len(parts) > 4 or not parts[0] or not parts[1]:
        raise invalid(f"Search parameter '{code}' takes [latitude]|[longitude]|[distance]|[units], got '{raw}'")
    lat = _decimal(parts[0], "latitude", code)
    lon = _decimal(parts[1], "longitude", code)
    if not -90 <= lat <= 90:
        raise invalid(f"Latitude '{parts[0]}' in search parameter '{code}' is outside -90..90")
    if not -180 <= lon <= 180:
        raise invalid(f"Longitude '{parts[1]}' in search parameter '{code}' is outside -180..180")
    distance = parts[2] if len(parts) > 2 else ""
    units = parts[3] if len(parts) > 3 else ""
    # Units are checked even without a distance (where R4 calls them irrelevant): a typo should
    # not pass unnoticed.
    if units and units not in UNITS_KM:
        raise invalid(f"Unknown distance unit '{units}' in search parameter '{code}'; use a UCUM length unit: "
                      + ", ".join(UNITS_KM))
    if not distance:
        return NearValue(float(lat), float(lon), DEFAULT_DISTANCE_KM)
    d = _decimal(distance, "distance", code)
    if d < 0:
        raise invalid(f"Distance '{distance}' in search parameter '{code}' is negative")
    return NearValue(float(lat), float(lon), float(d) * UNITS_KM[units or "km"])


def _decimal(text: str, what: str, code: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite():
        raise invalid(f"Invalid {what} '{text}' in search parameter '{code}': expected a decimal number")
    return value
