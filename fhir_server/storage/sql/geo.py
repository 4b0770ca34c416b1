"""The SQL of Location ``near``: an index range on latitude, longitude ranges, then the exact
great-circle distance.

The distance is one SQL function element compiled per database: PostgreSQL gets the haversine
formula in SQL; SQLite calls ``fhir_distance_km``, the Python ``haversine_km`` registered on every
connection (SQLite's own math functions exist only in builds with SQLITE_ENABLE_MATH_FUNCTIONS).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Double, and_, func, literal, or_
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement

from fhir_server.search.params.near import EARTH_RADIUS_KM, haversine_km, search_box
from fhir_server.search.query import NearValue

SQLITE_FUNCTION = "fhir_distance_km"


class distance_km(FunctionElement[float]):  # noqa: N801 - SQL function elements are lower case
    """``distance_km(lat1, lon1, lat2, lon2)``: great-circle km between positions in degrees."""

    type = Double()
    inherit_cache = True


@compiles(distance_km)
def _sqlite(element: distance_km, compiler: Any, **kw: Any) -> str:
    return f"{SQLITE_FUNCTION}({compiler.process(element.clauses, **kw)})"


@compiles(distance_km, "postgresql")
def _postgresql(element: distance_km, compiler: Any, **kw: Any) -> str:
    lat1, lon1, lat2, lon2 = list(element.clauses)
    two: ColumnElement[float] = literal(2.0, Double())
    one: ColumnElement[float] = literal(1.0, Double())
    half_dlat = func.radians(lat2 - lat1) / two
    half_dlon = func.radians(lon2 - lon1) / two
    a = (func.power(func.sin(half_dlat), two)
         + func.cos(func.radians(lat1)) * func.cos(func.radians(lat2)) * func.power(func.sin(half_dlon), two))
    # least(): rounding may push sqrt(a) past 1 for antipodal points, and asin() would raise.
    expr = two * literal(EARTH_RADIUS_KM, Double()) * func.asin(func.least(one, func.sqrt(a)))
    return str(compiler.process(expr, **kw))


def register_sqlite(dbapi_connection: Any) -> None:
    """Make ``fhir_distance_km`` callable on a new sqlite3 connection."""
    dbapi_connection.create_function(SQLITE_FUNCTION, 4, haversine_km, deterministic=True)


def near_clause(lat: Any, lon: Any, v: NearValue) -> ColumnElement[bool]:
    """The positions (columns ``lat``, ``lon``) within ``v.km`` of ``v``: exactly, not the box."""
    (lat_lo, lat_hi), lon_ranges = search_box(v)
    tests: list[ColumnElement[bool]] = [lat >= lat_lo, lat <= lat_hi]
    if lon_ranges != ((-180.0, 180.0),):
        tests.append(or_(*[and_(lon >= lo, lon <= hi) for lo, hi in lon_ranges]))
    point: tuple[ColumnElement[float], ...] = (literal(v.lat, Double()), literal(v.lon, Double()))
    tests.append(distance_km(lat, lon, *point) <= literal(float(v.km), Double()))
    return and_(*tests)
