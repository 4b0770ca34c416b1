"""Index rows of the parameters beyond one element: positions, reference$token and three-part
composites, and the resource inside a Bundle (see the row contract of ``Indexer``)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from fhir_server.model import jsonio
from fhir_server.search.extract import Indexer

BASE = "http://example.org/fhir"
IX = Indexer(BASE)


def rows(res: dict[str, Any], param: str, kind: str | None = None) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k != "param"}
            for k2, row in IX(res["resourceType"], res) if row["param"] == param and kind in (None, k2)]


def test_location_position_rows() -> None:
    loc = jsonio.loads('{"resourceType": "Location", "position": {"latitude": 42.50, "longitude": -71}}')
    assert rows(loc, "near", "geo") == [{"lat": 42.5, "lon": -71.0}]
    # Outside WGS84, or incomplete: near nothing, so no row (and near:missing=true finds it).
    for position in ({"latitude": 90.5, "longitude": 0}, {"latitude": 0, "longitude": -180.01},
                     {"latitude": 1}, {"longitude": 1}, {"latitude": True, "longitude": 1}, "x"):
        assert rows({"resourceType": "Location", "position": position}, "near") == [], position


def test_relationship_pairs_each_target_with_its_code() -> None:
    doc = {"resourceType": "DocumentReference", "relatesTo": [
        {"code": "replaces", "target": {"reference": "DocumentReference/a"}},
        {"code": "appends", "target": {"reference": f"{BASE}/DocumentReference/b/_history/2"}},
        {"code": "signs", "target": {"reference": "http://elsewhere.org/fhir/DocumentReference/c"}},
        {"code": "transforms", "target": {"reference": "#contained"}},
        {"code": "replaces", "target": {"display": "no reference"}},
    ]}
    base = {"c2_system": None, "c2_lo": None, "c2_hi": None}
    assert rows(doc, "relationship") == [
        {"c1_system": "DocumentReference", "c1_code": "a", "c2_code": "replaces", **base},
        {"c1_system": "DocumentReference", "c1_code": "b", "c2_code": "appends", **base},
        {"c1_system": None, "c1_code": "http://elsewhere.org/fhir/DocumentReference/c", "c2_code": "signs", **base},
    ]


def _sequence(system: Any) -> dict[str, Any]:
    return {"resourceType": "MolecularSequence", "coordinateSystem": system,
            "referenceSeq": {"chromosome": {"coding": [{"system": "urn:c", "code": "1"}]},
                             "windowStart": 10, "windowEnd": 20},
            "variant": [{"start": 12, "end": 13}, {"start": 15}]}


def test_coordinates_are_one_based() -> None:
    d = Decimal
    # 0-based: inclusive start + 1, exclusive end as it is; a variant without an end has no row.
    assert [(r["c2_lo"], r["c3_lo"]) for r in rows(_sequence(0), "chromosome-variant-coordinate")] == [(d(13), d(13))]
    assert [(r["c2_lo"], r["c3_lo"]) for r in rows(_sequence(1), "chromosome-variant-coordinate")] == [(d(12), d(13))]
    assert [(r["c1_code"], r["c2_lo"], r["c3_hi"]) for r in rows(_sequence(0), "chromosome-window-coordinate")] == [
        ("1", d(11), d(20))
    ]
    # Neither 0 nor 1: what the numbers mean is unknown.
    for system in (2, None, True, "0"):
        assert rows(_sequence(system), "chromosome-variant-coordinate") == [], system
    # The plain number parameters stay as written.
    assert [r["lo"] for r in rows(_sequence(0), "variant-start")] == [d(12), d(15)]


def test_first_entry_of_a_bundle_is_indexed_under_the_parameter() -> None:
    composition = {"resourceType": "Composition", "id": "c1", "status": "final", "subject": {"reference": "Patient/1"},
                   "meta": {"lastUpdated": "2020-01-01T00:00:00Z"}}
    bundle = {"resourceType": "Bundle", "type": "document", "entry": [
        {"resource": composition},
        {"resource": {"resourceType": "Composition", "status": "preliminary"}},
    ]}
    got = {(kind, row["param"]) for kind, row in IX("Bundle", bundle)}
    assert {("token", "composition"), ("reference", "composition.subject"), ("token", "composition.status"),
            ("token", "composition._id"), ("date", "composition._lastUpdated")} <= got
    assert rows(bundle, "composition") == [{"system": None, "code": "Composition", "text_norm": None}]
    assert rows(bundle, "composition.status") == [{"system": None, "code": "final", "text_norm": None}]
    assert not any(p.startswith("message") for _, p in got)
    # Only the first entry, and only a resource of a target type.
    second = {**bundle, "entry": [{"resource": {"resourceType": "Patient"}}, {"resource": composition}]}
    assert not any(row["param"].startswith("composition") for _, row in IX("Bundle", second))
    message = {"resourceType": "Bundle", "type": "message", "entry": [{"resource": {
        "resourceType": "MessageHeader", "eventUri": "urn:e", "source": {"endpoint": "urn:s"},
        "focus": [{"reference": "Patient/1"}]}}]}
    assert rows(message, "message.focus") == [
        {"target_type": "Patient", "target_id": "1", "url": None}
    ]
