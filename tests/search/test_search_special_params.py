"""The parameters that are more than one index look-up: Location ``near``, DocumentReference
``relationship`` (reference$token), MolecularSequence's three-part coordinate composites and
Bundle ``composition`` / ``message`` (chains into the Bundle's first entry).

Each runs on SQLite and on PostgreSQL over resources created here, and is checked against
expectations computed in this module (great circles, 1-based coordinates, the first entry).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fhir_server.app import create_app
from fhir_server.config import Settings
from tests.search import expected as x
from tests.search.loader import BASE, Resource, World
from tests.storage.conftest import pg_database

# -- positions ---------------------------------------------------------------------------------

# (name, latitude, longitude, radius km): near the antimeridian and both poles, where a
# latitude/longitude box taken at face value would lose points.
CENTERS = [
    ("boston", 42.3601, -71.0589, 10.0),
    ("fiji", -17.8, 179.97, 25.0),
    ("dateline-west", 5.0, -179.99, 12.0),
    ("north-pole", 89.95, 30.0, 20.0),
    ("south-pole", -89.9, -120.0, 15.0),
    ("london", 51.5074, -0.1278, 1.0),  # also the default distance (1 km)
]
MILE_KM = 1.609344  # [mi_i], the international mile
EDGE_KM = 0.001  # points 1 m inside and 1 m outside each circle


def destination(lat: float, lon: float, bearing_deg: float, km: float) -> tuple[float, float]:
    """The point ``km`` from (lat, lon) along the initial ``bearing_deg`` (on the same sphere)."""
    d = km / x.EARTH_RADIUS_KM
    p1, l1, b = math.radians(lat), math.radians(lon), math.radians(bearing_deg)
    p2 = math.asin(math.sin(p1) * math.cos(d) + math.cos(p1) * math.sin(d) * math.cos(b))
    l2 = l1 + math.atan2(math.sin(b) * math.sin(d) * math.cos(p1), math.cos(d) - math.sin(p1) * math.sin(p2))
    lon2 = (math.degrees(l2) + 540.0) % 360.0 - 180.0
    return math.degrees(p2), lon2


def _widest_bearing(lat: float, lon: float, km: float) -> float:
    """The bearing at which the circle reaches furthest east: where a longitude box is tightest."""
    return max((b / 10 for b in range(0, 1800)), key=lambda b: destination(lat, lon, b, km)[1] - lon)


def _tag(value: float) -> str:
    return f"{value:g}".replace(".", "p")


def location_id(center: str, radius: float, bearing: float, side: str) -> str:
    return f"{center}-{_tag(radius)}-{_tag(bearing)}-{side}"


def locations() -> list[Resource]:
    out: list[Resource] = []
    for name, lat, lon, km in CENTERS:
        radii = [km, km * MILE_KM] if name == "boston" else [km]
        bearings = [float(b) for b in range(0, 360, 30)]
        if abs(lat) < 80:
            east = _widest_bearing(lat, lon, km)
            bearings += [east, 360.0 - east]
        for r in radii:
            for b in bearings:
                for side, dist in (("in", r - EDGE_KM), ("out", r + EDGE_KM)):
                    plat, plon = destination(lat, lon, b, dist)
                    out.append({
                        "resourceType": "Location", "id": location_id(name, r, b, side),
                        # 9 decimals: 0.1 mm, far inside the 1 m margin.
                        "position": {"latitude": round(plat, 9), "longitude": round(plon, 9)},
                    })
    out.append({"resourceType": "Location", "id": "nowhere", "name": "no position"})
    return out


# -- the worlds ----------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def w(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A server on each database, holding only the resources of this module."""
    with ExitStack() as stack:
        if request.param == "sqlite":
            tmp: Path = tmp_path_factory.mktemp("special")
            url = f"sqlite:///{tmp}/s.db"
        else:
            url = stack.enter_context(pg_database())
        client = stack.enter_context(
            TestClient(create_app(Settings(database_url=url, base_url=BASE)), raise_server_exceptions=False)
        )
        world = World(client, request.param)
        for res in [*locations(), *ENCOUNTERS, *DOCUMENTS, *SEQUENCES, *BUNDLES, *SIDE]:
            world.put(res)
        yield world


def check(w: World, url: str, pred: Callable[[Resource], bool], *, nonempty: bool = True) -> set[str]:
    """``url`` finds exactly the resources of its type for which ``pred`` holds (walking every
    page), and ``_summary=count`` counts them."""
    rtype = url.split("?", 1)[0]
    want = w.ids_where(rtype, pred)
    if nonempty:
        assert want, f"vacuous: nothing matches {url}"
    got = w.ids(url, count=7)
    assert got == want, (w.name, url, sorted(want - got)[:5], sorted(got - want)[:5])
    r = w.fetch(f"{url}&_summary=count", count=None)
    assert r.status_code == 200 and r.json()["total"] == len(want), (w.name, url, r.text[:300])
    return want


def refused(w: World, url: str, status: int = 400) -> str:
    r = w.fetch(url)
    assert r.status_code == status, (w.name, url, r.status_code, r.text[:300])
    body = r.json()
    assert body["resourceType"] == "OperationOutcome", body
    return " ".join(i.get("diagnostics", "") for i in body["issue"])


# -- near ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,lat,lon,km", CENTERS, ids=[c[0] for c in CENTERS])
def test_near_finds_exactly_the_locations_within_the_distance(
    w: World, name: str, lat: float, lon: float, km: float
) -> None:
    want = check(w, f"Location?near={lat}|{lon}|{km}|km", lambda r: x.near_match(r, lat, lon, km))
    # Not vacuous at the edge: every point 1 m inside the circle is found, none 1 m outside.
    ring = [r["id"] for r in w.all("Location") if r["id"].startswith(f"{name}-{_tag(km)}-")]
    inside, outside = {i for i in ring if i.endswith("-in")}, {i for i in ring if i.endswith("-out")}
    assert len(inside) >= 12 and len(outside) >= 12
    assert inside <= want and not outside & want


def test_near_units_and_default_distance(w: World) -> None:
    _, lat, lon, km = CENTERS[-1]  # london, 1 km
    one_km = check(w, f"Location?near={lat}|{lon}|1|km", lambda r: x.near_match(r, lat, lon, 1.0))
    for variant in (f"{lat}|{lon}", f"{lat}|{lon}|1", f"{lat}|{lon}|1000|m", f"{lat}|{lon}||km",
                    f"{lat}|{lon}|100000|cm"):
        assert w.ids(f"Location?near={variant}") == one_km, variant
    _, lat, lon, km = CENTERS[0]  # boston, 10 miles
    check(w, f"Location?near={lat}|{lon}|{km}|[mi_i]", lambda r: x.near_match(r, lat, lon, km * MILE_KM))
    check(w, f"Location?near={lat}|{lon}|{km * MILE_KM}|km", lambda r: x.near_match(r, lat, lon, km * MILE_KM))


def test_near_or_and_missing_and_strict_handling(w: World) -> None:
    (_, a_lat, a_lon, a_km), (_, b_lat, b_lon, b_km) = CENTERS[0], CENTERS[1]
    check(w, f"Location?near={a_lat}|{a_lon}|{a_km},{b_lat}|{b_lon}|{b_km}",
          lambda r: x.near_match(r, a_lat, a_lon, a_km) or x.near_match(r, b_lat, b_lon, b_km))
    check(w, "Location?near:missing=true", lambda r: x.position(r) is None)
    r = w.fetch(f"Location?near={a_lat}|{a_lon}|{a_km}", headers={"Prefer": "handling=strict"})
    assert r.status_code == 200, r.text[:300]
    # The whole globe: half the circumference reaches the antipode.
    check(w, "Location?near=0|0|20100|km", lambda r: x.position(r) is not None)


def test_near_through_a_chain(w: World) -> None:
    _, lat, lon, km = CENTERS[0]
    located = {r["id"] for r in w.all("Location") if x.near_match(r, lat, lon, km)}
    check(w, f"Encounter?location.near={lat}|{lon}|{km}",
          lambda e: any(ref.removeprefix("Location/") in located
                        for ref in x.reference_strings(x.values(e, "location.location"))))


@pytest.mark.parametrize("value", [
    "42.36", "42.36|", "|-71.05", "abc|-71.05", "42.36|west", "91|0", "-90.5|0", "0|180.01", "0|-181",
    "0|0|-1|km", "0|0|far|km", "0|0|5|furlong", "0|0|5|mi", "0|0|5|km|extra", "NaN|0", "0|Infinity",
])
def test_near_bad_values_are_400_naming_the_parameter(w: World, value: str) -> None:
    assert "near" in refused(w, f"Location?near={value}")


def test_near_is_not_sortable(w: World) -> None:
    refused(w, "Location?near=0|0|10&_sort=near")


# -- DocumentReference relationship (reference$token) ---------------------------------------


def _doc(id: str, *relates: tuple[str, str]) -> Resource:
    res: Resource = {"resourceType": "DocumentReference", "id": id, "status": "current",
                     "content": [{"attachment": {"contentType": "text/plain", "url": f"http://example.org/{id}"}}]}
    if relates:
        res["relatesTo"] = [{"code": code, "target": {"reference": ref}} for code, ref in relates]
    return res


DOCUMENTS = [
    _doc("dr0"),
    _doc("dr1", ("replaces", "DocumentReference/dr0")),
    # Both codes and both targets, but never replaces + dr0 in one relatesTo.
    _doc("dr2", ("appends", "DocumentReference/dr0"), ("replaces", "DocumentReference/drx")),
    _doc("dr3", ("transforms", "http://other.example/fhir/DocumentReference/9")),
    _doc("dr4", ("replaces", f"{BASE}/DocumentReference/dr0")),  # this server's absolute URL
    _doc("drx"),
]


def _related(res: Resource, target: str, code: str) -> bool:
    for rel in res.get("relatesTo", []):
        ref = rel.get("target", {}).get("reference", "").removeprefix(BASE + "/")
        if rel.get("code") == code and ref == target:
            return True
    return False


@pytest.mark.parametrize("value,pairs", [
    ("DocumentReference/dr0$replaces", [("DocumentReference/dr0", "replaces")]),
    ("dr0$replaces", [("DocumentReference/dr0", "replaces")]),
    (f"{BASE}/DocumentReference/dr0$appends", [("DocumentReference/dr0", "appends")]),
    ("http://other.example/fhir/DocumentReference/9$transforms",
     [("http://other.example/fhir/DocumentReference/9", "transforms")]),
    ("dr0$replaces,drx$replaces", [("DocumentReference/dr0", "replaces"), ("DocumentReference/drx", "replaces")]),
])
def test_relationship_pairs_target_and_code_of_one_relates_to(
    w: World, value: str, pairs: list[tuple[str, str]]
) -> None:
    check(w, f"DocumentReference?relationship={value}", lambda r: any(_related(r, t, c) for t, c in pairs))


def test_relationship_missing_and_bad_values(w: World) -> None:
    check(w, "DocumentReference?relationship:missing=true", lambda r: not r.get("relatesTo"))
    check(w, "DocumentReference?relationship=dr0$appends&relationship=drx$replaces",
          lambda r: _related(r, "DocumentReference/dr0", "appends") and _related(r, "DocumentReference/drx", "replaces"))
    assert "relationship" in refused(w, "DocumentReference?relationship=dr0")
    assert "relationship" in refused(w, "DocumentReference?relationship=dr0$replaces$x")


# -- MolecularSequence coordinates (token$number$number) ------------------------------------

CHROMOSOME = "http://terminology.hl7.org/CodeSystem/chromosome-human"
REFSEQ = "http://www.ncbi.nlm.nih.gov/nuccore"


def _seq(id: str, system: int, chromosome: str, refseq: str, window: tuple[int, int],
         *variants: tuple[int, int]) -> Resource:
    return {
        "resourceType": "MolecularSequence", "id": id, "type": "dna", "coordinateSystem": system,
        "referenceSeq": {
            "chromosome": {"coding": [{"system": CHROMOSOME, "code": chromosome}]},
            "referenceSeqId": {"coding": [{"system": REFSEQ, "code": refseq}]},
            "windowStart": window[0], "windowEnd": window[1],
        },
        "variant": [{"start": s, "end": e} for s, e in variants],
    }


SEQUENCES = [
    # The same nucleotides 124..344 (1-based), in both coordinate systems.
    _seq("one-based", 1, "1", "NC_000001.11", (124, 344), (124, 344)),
    _seq("zero-based", 0, "1", "NC_000001.11", (123, 344), (123, 344)),
    # One nucleotide further on each side.
    _seq("one-based-wider", 1, "1", "NC_000001.11", (123, 345), (123, 345)),
    _seq("zero-based-wider", 0, "1", "NC_000001.11", (122, 345), (122, 345)),
    # Start and end that match only across two variants.
    _seq("split", 1, "1", "NC_000001.11", (1, 1000), (200, 900), (10, 300)),
    _seq("chromosome-2", 1, "2", "NC_000002.12", (124, 344), (124, 344)),
]


def _coordinates(res: Resource, which: str) -> list[tuple[int, int]]:
    """(start, end) in 1-based terms: a 0-based start is one less, a 0-based (exclusive) end the same."""
    shift = 1 if res["coordinateSystem"] == 0 else 0
    if which == "window":
        ref = res["referenceSeq"]
        return [(ref["windowStart"] + shift, ref["windowEnd"])]
    return [(v["start"] + shift, v["end"]) for v in res.get("variant", [])]


def _coordinate_match(res: Resource, token_path: str, which: str, query: str) -> bool:
    token, start_q, end_q = query.split("$")
    if not x.token_match(x.values(res, token_path), token):
        return False
    (sp, sv), (ep, ev) = x.split_prefix(start_q), x.split_prefix(end_q)
    return any(x.number_compare(sp, sv, Decimal(s)) and x.number_compare(ep, ev, Decimal(e))
               for s, e in _coordinates(res, which))


PATHS = {"chromosome": "referenceSeq.chromosome", "referenceseqid": "referenceSeq.referenceSeqId"}


@pytest.mark.parametrize("code,value", [
    ("chromosome-variant-coordinate", "1$lt345$gt123"),  # R4's example
    ("chromosome-variant-coordinate", "1$ge124$le344"),
    ("chromosome-variant-coordinate", "1$gt123$lt345"),
    ("chromosome-variant-coordinate", "1$eq123$eq345"),
    ("chromosome-variant-coordinate", f"{CHROMOSOME}|1$le200$ge900"),
    ("chromosome-variant-coordinate", "2$eq124$eq344"),
    ("chromosome-window-coordinate", "1$ge124$le344"),
    ("chromosome-window-coordinate", "1$le123$ge345"),
    ("referenceseqid-variant-coordinate", "NC_000001.11$ge124$le344"),
    ("referenceseqid-variant-coordinate", f"{REFSEQ}|NC_000001.11$gt199$lt901"),
    ("referenceseqid-window-coordinate", "NC_000001.11$eq124$eq344"),
    ("referenceseqid-window-coordinate", "NC_000002.12$ge1$le1000"),
])
def test_coordinate_composites_compare_one_based(w: World, code: str, value: str) -> None:
    token, _, which = code.partition("-")
    check(w, f"MolecularSequence?{code}={value}",
          lambda r: _coordinate_match(r, PATHS[token], which.split("-")[0], value))


def test_coordinate_composites_pair_start_and_end_of_one_variant(w: World) -> None:
    # "split" has a variant starting at 200 and another ending at 300, but none spanning 200..300.
    value = "1$ge200$le300"
    got = check(w, f"MolecularSequence?chromosome-variant-coordinate={value}",
                lambda r: _coordinate_match(r, PATHS["chromosome"], "variant", value), nonempty=False)
    assert "split" not in got


def test_coordinate_composites_take_three_values(w: World) -> None:
    assert "chromosome-variant-coordinate" in refused(w, "MolecularSequence?chromosome-variant-coordinate=1$lt345")
    refused(w, "MolecularSequence?chromosome-window-coordinate=1$lt345$gt123$1")


# -- Bundle composition / message (chains into the first entry) -------------------------------

LOINC = "http://loinc.org"


def _composition(subject: str | None, status: str = "final", id: str | None = None,
                 date: str = "2020-01-01") -> Resource:
    res: Resource = {"resourceType": "Composition", "status": status,
                     "type": {"coding": [{"system": LOINC, "code": "11488-4"}]},
                     "date": date, "author": [{"reference": "Practitioner/pr1"}], "title": "Note"}
    if id is not None:
        res["id"] = id
    if subject is not None:
        res["subject"] = {"reference": subject}
    return res


def _message(focus: str, event: str) -> Resource:
    return {"resourceType": "MessageHeader", "eventCoding": {"system": "urn:test:events", "code": event},
            "source": {"endpoint": "http://example.org/source"}, "focus": [{"reference": focus}]}


def _bundle(id: str, type: str, *resources: Resource) -> Resource:
    return {"resourceType": "Bundle", "id": id, "type": type, "timestamp": "2021-03-04T05:06:07Z",
            "identifier": {"system": "urn:test:bundles", "value": id},
            "entry": [{"fullUrl": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{id}/{i}')}", "resource": r}
                      for i, r in enumerate(resources)]}


BUNDLES = [
    _bundle("doc1", "document", _composition("Patient/p1", id="c1"), {"resourceType": "Patient", "id": "p1"}),
    _bundle("doc2", "document", _composition("Patient/p2", status="preliminary", date="2022-06-01")),
    _bundle("doc3", "document", _composition(None, status="amended", id="c3")),
    # A Composition that is not the first entry is not the Bundle's composition.
    _bundle("coll1", "collection", {"resourceType": "Patient", "id": "p1"}, _composition("Patient/p1")),
    _bundle("msg1", "message", _message("Patient/p1", "admit"), {"resourceType": "Patient", "id": "p1"}),
    _bundle("msg2", "message", _message("Patient/p2", "discharge")),
]
# Stored beside the Bundles: a chain must read the inline Composition, not this one with its id.
SIDE: list[Resource] = [
    {"resourceType": "Patient", "id": "p1"},
    {"resourceType": "Patient", "id": "p2"},
    _composition("Patient/p2", id="c1"),
]
ENCOUNTERS = [
    {"resourceType": "Encounter", "id": f"enc-{side}", "status": "finished",
     "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
     "location": [{"location": {"reference": f"Location/{location_id('boston', 10.0, 0.0, side)}"}}]}
    for side in ("in", "out")
]


def _first(res: Resource, rtype: str) -> Resource | None:
    entries = res.get("entry") or [{}]
    first = entries[0].get("resource")
    return first if isinstance(first, dict) and first.get("resourceType") == rtype else None


def _composition_where(pred: Callable[[Resource], bool]) -> Callable[[Resource], bool]:
    return lambda b: (c := _first(b, "Composition")) is not None and pred(c)


@pytest.mark.parametrize("query,pred", [
    ("composition.subject=Patient/p1", _composition_where(lambda c: x.refers_to(c, ["subject"], "Patient/p1"))),
    ("composition.subject:Patient=p2", _composition_where(lambda c: x.refers_to(c, ["subject"], "Patient/p2"))),
    ("composition.patient=p1", _composition_where(lambda c: x.refers_to(c, ["subject"], "Patient/p1"))),
    ("composition.type=http://loinc.org|11488-4", _composition_where(lambda c: x.token_match([c["type"]], f"{LOINC}|11488-4"))),
    ("composition.status=preliminary,amended", _composition_where(lambda c: c["status"] in ("preliminary", "amended"))),
    ("composition.status:not=final", _composition_where(lambda c: c["status"] != "final")),
    ("composition.subject:missing=true", _composition_where(lambda c: "subject" not in c)),
    ("composition.subject:missing=false", _composition_where(lambda c: "subject" in c)),
    ("composition.date=ge2021", _composition_where(lambda c: x.date_match([c["date"]], "ge2021"))),
    ("composition._id=c1", _composition_where(lambda c: c.get("id") == "c1")),
    ("composition._id:missing=true", _composition_where(lambda c: "id" not in c)),
    ("composition:missing=true", lambda b: _first(b, "Composition") is None),
    ("composition.subject=Patient/p1&type=document",
     _composition_where(lambda c: x.refers_to(c, ["subject"], "Patient/p1"))),
    ("message.focus=Patient/p1", lambda b: (m := _first(b, "MessageHeader")) is not None
     and x.refers_to(m, ["focus"], "Patient/p1")),
    ("message.event=urn:test:events|discharge", lambda b: (m := _first(b, "MessageHeader")) is not None
     and m["eventCoding"]["code"] == "discharge"),
    ("message:missing=false", lambda b: _first(b, "MessageHeader") is not None),
])
def test_bundle_chains_into_the_first_entry(w: World, query: str, pred: Callable[[Resource], bool]) -> None:
    check(w, f"Bundle?{query}", pred)


@pytest.mark.parametrize("url", [
    "Bundle?composition=Composition/c1",  # names a stored resource: the Bundle holds its own copy
    "Bundle?composition.subject.name=x",  # the inline subject may be another entry of the Bundle
    "Bundle?_include=Bundle:composition",
    "Composition?_revinclude=Bundle:composition",
    "Composition?_has:Bundle:composition:type=document",
    "Bundle?_sort=composition",
])
def test_bundle_composition_beyond_chains_is_refused(w: World, url: str) -> None:
    refused(w, url)


def test_include_star_does_not_follow_references_inside_the_first_entry(w: World) -> None:
    r = w.search("Bundle?_id=doc1&_include=*")
    assert r.ids == {"doc1"} and r.includes == []


# -- CapabilityStatement ---------------------------------------------------------------------------


def test_capability_statement_lists_them(w: World) -> None:
    body = w.client.get("/fhir/metadata").json()
    resources = {r["type"]: r for r in body["rest"][0]["resource"]}

    def params(rtype: str) -> dict[str, Any]:
        return {p["name"]: p for p in resources[rtype]["searchParam"]}

    assert params("Location")["near"]["type"] == "special"
    assert "1 km" in params("Location")["near"]["documentation"]
    assert {"composition", "message"} <= set(params("Bundle"))
    assert params("DocumentReference")["relationship"]["type"] == "composite"
    assert {"chromosome-variant-coordinate", "chromosome-window-coordinate", "referenceseqid-variant-coordinate",
            "referenceseqid-window-coordinate"} <= set(params("MolecularSequence"))
    assert "Bundle:composition" not in resources["Bundle"]["searchInclude"]
    assert "Bundle:composition" not in resources["Composition"]["searchRevInclude"]
