"""The same representative searches on SQLite and PostgreSQL, loaded with the same data: equal id sets,
equal to the matchers of ``expected.py``; equal orders where a sort is given."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.search import expected as x
from tests.search.loader import Resource, World, key

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
EFFECTIVE = ("effectiveDateTime", "effectivePeriod", "effectiveInstant")

EXTRA: list[Resource] = [
    {
        "resourceType": "Patient",
        "id": "zoe-unal",
        "name": [{"family": "Ünal", "given": ["Zoë"]}],
        "identifier": [{"system": "urn:test:esc", "value": "A,B"}],
        "birthDate": "1999-12-31",
        "meta": {
            "tag": [{"system": "urn:test:tags", "code": "alpha"}],
            "source": "http://example.org/source#one",
        },
    },
    {
        "resourceType": "RiskAssessment",
        "id": "risk-1",
        "status": "final",
        "subject": {"reference": "Patient/85"},
        "prediction": [{"probabilityDecimal": 0.25}],
    },
    {
        "resourceType": "RiskAssessment",
        "id": "risk-2",
        "status": "final",
        "subject": {"reference": "Patient/85"},
        "prediction": [{"probabilityDecimal": 0.7}],
    },
    {
        "resourceType": "ValueSet",
        "id": "vs-a",
        "status": "active",
        "url": "http://example.org/fhir/ValueSet/a",
    },
    {
        "resourceType": "ValueSet",
        "id": "vs-ab",
        "status": "active",
        "url": "http://example.org/fhir/ValueSet/a/b",
    },
]


def _p85(r: Resource) -> bool:
    return x.refers_to(r, ["subject"], "Patient/85")


def _code(q: str) -> Callable[[Resource], bool]:
    return lambda r: x.token_match(x.values(r, "code"), q)


def _has_obs_code(world: World, q: str) -> Callable[[Resource], bool]:
    subjects = {
        ref
        for o in world.all("Observation")
        if _code(q)(o)
        for ref in x.reference_strings(x.values(o, "subject"))
    }
    return lambda p: key(p) in subjects


CASES: list[tuple[str, Callable[[World], Callable[[Resource], bool]]]] = [
    ("Patient?name=zoe", lambda w: lambda r: x.string_match(x.strings(r, "name"), "zoe")),
    ("Patient?family=RITCH", lambda w: lambda r: x.string_match(x.strings(r, "name.family"), "RITCH")),
    (
        "Patient?name:exact=Bosco882",
        lambda w: lambda r: x.string_match(x.strings(r, "name"), "Bosco882", "exact"),
    ),
    (
        "Patient?name:contains=ALE",
        lambda w: lambda r: x.string_match(x.strings(r, "name"), "ALE", "contains"),
    ),
    (
        "Patient?address-city=lowell",
        lambda w: lambda r: x.string_match(x.strings(r, "address.city"), "lowell"),
    ),
    ("Patient?birthdate=ge1987", lambda w: lambda r: x.date_match(x.values(r, "birthDate"), "ge1987")),
    ("Patient?birthdate=1940", lambda w: lambda r: x.date_match(x.values(r, "birthDate"), "eq1940")),
    ("Patient?gender:missing=true", lambda w: lambda r: "gender" not in r),
    (
        "Patient?identifier=http://hl7.org/fhir/sid/us-ssn|999-47-5768",
        lambda w: (
            lambda r: x.token_match(x.values(r, "identifier"), "http://hl7.org/fhir/sid/us-ssn|999-47-5768")
        ),
    ),
    (r"Patient?identifier=urn:test:esc|A\,B", lambda w: lambda r: r["id"] == "zoe-unal"),
    ("Patient?_tag=urn:test:tags|alpha", lambda w: lambda r: r["id"] == "zoe-unal"),
    (
        "Patient?_profile=http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient",
        lambda w: (
            lambda r: (
                "http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"
                in x.values(r, "meta.profile")
            )
        ),
    ),
    ("Observation?patient=85", lambda w: _p85),
    (
        "Observation?patient=85&code=http://loinc.org|72166-2",
        lambda w: lambda r: _p85(r) and _code(f"{LOINC}|72166-2")(r),
    ),
    ("Observation?code=8302-2,29463-7", lambda w: lambda r: _code("8302-2")(r) or _code("29463-7")(r)),
    (
        "Observation?patient=85&code:not=http://loinc.org|72166-2",
        lambda w: lambda r: _p85(r) and not _code(f"{LOINC}|72166-2")(r),
    ),
    (
        "Observation?category=laboratory&date=ge2016-01-01T00:00:00+05:00",
        lambda w: (
            lambda r: (
                x.token_match(x.values(r, "category"), "laboratory")
                and x.date_match(x.values(r, *EFFECTIVE), "ge2016-01-01T00:00:00+05:00")
            )
        ),
    ),
    ("Observation?date=2015", lambda w: lambda r: x.date_match(x.values(r, *EFFECTIVE), "eq2015")),
    (
        "Observation?date=lt1975-04-07T07:00:00Z",
        lambda w: lambda r: x.date_match(x.values(r, *EFFECTIVE), "lt1975-04-07T07:00:00Z"),
    ),
    (
        "Observation?date=sa2022-07-14",
        lambda w: lambda r: x.date_match(x.values(r, *EFFECTIVE), "sa2022-07-14"),
    ),
    (
        f"Observation?value-quantity=gt100|{UCUM}|mg/dL",
        lambda w: lambda r: x.quantity_match(x.values(r, "valueQuantity"), f"gt100|{UCUM}|mg/dL"),
    ),
    (
        "Observation?value-quantity=lt60.0||kg",
        lambda w: lambda r: x.quantity_match(x.values(r, "valueQuantity"), "lt60.0||kg"),
    ),
    (
        f"Observation?component-code-value-quantity={LOINC}|8480-6$gt120",
        lambda w: (
            lambda r: any(
                x.token_match([c["code"]], f"{LOINC}|8480-6")
                and x.quantity_match(x.values(c, "valueQuantity"), "gt120")
                for c in r.get("component", [])
            )
        ),
    ),
    (
        "Observation?subject:Patient.name=Ritchie",
        lambda w: (
            lambda r: any(
                x.string_match(x.strings(w.get("Patient", ref[8:]), "name"), "Ritchie")
                for ref in x.reference_strings(x.values(r, "subject"))
                if ref.startswith("Patient/") and ref[8:] in w.store["Patient"]
            )
        ),
    ),
    (
        "Patient?_has:Observation:patient:code=http://loinc.org|8302-2",
        lambda w: _has_obs_code(w, f"{LOINC}|8302-2"),
    ),
    (
        "Encounter?patient=355&date=ge2010-01-01",
        lambda w: (
            lambda r: (
                x.refers_to(r, ["subject"], "Patient/355")
                and x.date_match(x.values(r, "period"), "ge2010-01-01")
            )
        ),
    ),
    (
        "Encounter?class=http://terminology.hl7.org/CodeSystem/v3-ActCode|AMB",
        lambda w: (
            lambda r: x.token_match(
                x.values(r, "class"), "http://terminology.hl7.org/CodeSystem/v3-ActCode|AMB"
            )
        ),
    ),
    (
        "Condition?patient=355&clinical-status=resolved",
        lambda w: (
            lambda r: (
                x.refers_to(r, ["subject"], "Patient/355")
                and x.token_match(x.values(r, "clinicalStatus"), "resolved")
            )
        ),
    ),
    (
        "Condition?onset-date=le1990",
        lambda w: lambda r: x.date_match(x.values(r, "onsetDateTime", "onsetPeriod"), "le1990"),
    ),
    (
        "RiskAssessment?probability=gt0.500",
        lambda w: lambda r: x.number_match(x.values(r, "prediction.probabilityDecimal"), "gt0.500"),
    ),
    # Synthea's Locations around Lowell, MA and Springfield, MA (about 2.3, 2.5 and 118-125 km away).
    ("Location?near=42.66|-71.31|2.4|km", lambda w: lambda r: x.near_match(r, 42.66, -71.31, 2.4)),
    ("Location?near=42.66|-71.31|75|[mi_i]", lambda w: lambda r: x.near_match(r, 42.66, -71.31, 75 * 1.609344)),
    (
        "ValueSet?url:below=http://example.org/fhir/ValueSet/a",
        lambda w: lambda r: r["id"] in ("vs-a", "vs-ab"),
    ),
    (
        "MedicationRequest?patient=85&intent=order&status=stopped,completed",
        lambda w: lambda r: _p85(r) and r["intent"] == "order" and r["status"] in ("stopped", "completed"),
    ),
    (
        "Immunization?patient=85&date=lt1960",
        lambda w: (
            lambda r: (
                x.refers_to(r, ["patient"], "Patient/85")
                and x.date_match(x.values(r, "occurrenceDateTime"), "lt1960")
            )
        ),
    ),
]


@pytest.fixture(scope="module")
def worlds(world: World, pg_world: World) -> tuple[World, World]:
    for w in (world, pg_world):
        for res in EXTRA:
            w.put(res)
    return world, pg_world


@pytest.mark.parametrize("url,make_pred", CASES, ids=[c[0] for c in CASES])
def test_same_results_on_both_backends(
    worlds: tuple[World, World], url: str, make_pred: Callable[[World], Callable[[Resource], bool]]
) -> None:
    sqlite, pg = worlds
    rtype = url.split("?")[0]
    want = sqlite.ids_where(rtype, make_pred(sqlite))
    assert want == pg.ids_where(rtype, make_pred(pg)), "the two servers hold different data"
    assert want, f"vacuous: no data matches {url}"
    got_sqlite, got_pg = sqlite.ids(url), pg.ids(url)
    assert got_sqlite == got_pg, sorted(got_sqlite ^ got_pg)[:10]
    assert got_sqlite == want, sorted(got_sqlite ^ want)[:10]


@pytest.mark.parametrize(
    "url",
    [
        "Observation?patient=85&_sort=-date,_id",
        "Patient?_sort=family,given,_id",
        "Encounter?patient=355&_sort=date,_id",
        "Organization?_sort=-name,_id",
    ],
)
def test_same_order_on_both_backends(worlds: tuple[World, World], url: str) -> None:
    sqlite, pg = worlds
    a = sqlite.search(url, count=17).ordered_ids
    b = pg.search(url, count=17).ordered_ids
    assert a and a == b


@pytest.mark.parametrize(
    "url",
    [
        "MedicationRequest?patient=85&_include=MedicationRequest:medication",
        "Encounter?patient=85&_revinclude=Provenance:target",
        "Patient?_id=85&_revinclude=Condition:subject",
    ],
)
def test_same_includes_on_both_backends(worlds: tuple[World, World], url: str) -> None:
    sqlite, pg = worlds
    a, b = sqlite.search(url), pg.search(url)
    assert a.keys == b.keys and a.include_keys == b.include_keys
    assert a.include_keys


@pytest.mark.parametrize("url,make_pred", CASES, ids=[c[0] for c in CASES])
def test_summary_count_equals_the_matches(
    worlds: tuple[World, World], url: str, make_pred: Callable[[World], Callable[[Resource], bool]]
) -> None:
    """``_summary=count`` (read from the lookup index alone for one-condition searches) counts
    exactly the resources the search matches."""
    sqlite, pg = worlds
    rtype = url.split("?")[0]
    want = len(sqlite.ids_where(rtype, make_pred(sqlite)))
    for w in (sqlite, pg):
        r = w.fetch(f"{url}&_summary=count", count=None)
        assert r.status_code == 200, r.text[:500]
        body = r.json()
        assert body["total"] == want and "entry" not in body, (w.name, body["total"], want)


def test_count_ignores_deleted_resources_and_repeated_values(worlds: tuple[World, World]) -> None:
    """A resource whose codings repeat the searched code, or match two of its values, counts once;
    a deleted or superseded version counts not at all."""
    code = "urn:test:count|repeated"
    coded = {"coding": [{"system": "urn:test:count", "code": "repeated"}] * 2
             + [{"system": "urn:test:count", "code": "other"}]}
    for w in worlds:
        ids = []
        for _ in range(3):
            res = w.create({"resourceType": "Observation", "status": "final", "code": coded,
                            "category": [coded, coded]})
            ids.append(res["id"])
        assert w.client.delete(f"/fhir/Observation/{ids[0]}").status_code in (200, 204)
        # Update the second away from the code: its older version still has it.
        moved = {"resourceType": "Observation", "id": ids[1], "status": "final", "code": {"text": "moved"}}
        assert w.client.put(f"/fhir/Observation/{ids[1]}", json=moved).status_code == 200
        for query in (f"code={code}", f"category={code}", "code=repeated", "code=other,repeated"):
            r = w.client.get(f"/fhir/Observation?{query}&_summary=count")
            assert r.json()["total"] == 1, (w.name, query, r.json())
            assert w.ids(f"Observation?{query}") == {ids[2]}, (w.name, query)
