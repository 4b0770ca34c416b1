"""Every search parameter type with its modifiers and prefixes (R4 search.html), through HTTP.

Each test compares the set of ids the server returns (all pages) with the set that the matchers of
``expected.py`` compute over the loaded JSON.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from tests.search import expected as x
from tests.search.loader import BASE, Resource, World, assert_search, key, links

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
US_CORE_PATIENT = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"
VS = "http://example.org/fhir/ValueSet"


def _ident(system: str, value: str, type_code: str | None = None) -> dict[str, Any]:
    ident: dict[str, Any] = {"system": system, "value": value}
    if type_code:
        ident["type"] = {"coding": [{"system": V2_0203, "code": type_code}]}
    return ident


def _obs(id: str, subject: dict[str, Any], **extra: Any) -> Resource:
    return {
        "resourceType": "Observation",
        "id": id,
        "status": "final",
        "code": {"coding": [{"system": "urn:test:codes", "code": "qty-test"}]},
        "subject": subject,
        **extra,
    }


def _qty(
    value: str, unit: str | None = "mg", system: str | None = UCUM, code: str | None = "mg"
) -> dict[str, Any]:
    q: dict[str, Any] = {"value": float(value)}
    q.update({k: v for k, v in (("unit", unit), ("system", system), ("code", code)) if v is not None})
    return q


EXTRA: list[Resource] = [
    {
        "resourceType": "Patient",
        "id": "zoe-unal",
        "name": [{"family": "Ünal", "given": ["Zoë"]}],
        "identifier": [_ident("urn:test:mrn", "ZU-1", "MR")],
        "gender": "female",
        "birthDate": "1999-12-31",
    },
    {
        "resourceType": "Patient",
        "id": "of-type-ss",
        "name": [{"family": "Othertype"}],
        "identifier": [_ident("urn:test:ssn", "ZU-1", "SS")],
    },
    {
        "resourceType": "Patient",
        "id": "esc-comma",
        "identifier": [_ident("urn:test:esc", "A,B")],
        "name": [{"family": "Comma,Name"}],
    },
    {
        "resourceType": "Patient",
        "id": "esc-a",
        "identifier": [_ident("urn:test:esc", "A")],
        "name": [{"family": "Comma"}],
    },
    {"resourceType": "Patient", "id": "esc-b", "identifier": [_ident("urn:test:esc", "B")]},
    {"resourceType": "Patient", "id": "esc-pipe", "identifier": [_ident("urn:test:esc", "X|Y")]},
    # SQL LIKE wildcards and the backslash must match literally.
    {"resourceType": "Patient", "id": "like-under", "name": [{"family": "Under_score"}]},
    {"resourceType": "Patient", "id": "like-percent", "name": [{"family": "Per%cent"}]},
    {
        "resourceType": "Patient",
        "id": "like-plain",
        "name": [{"family": "Underxscore"}, {"family": "Perxcent"}],
    },
    {"resourceType": "Patient", "id": "like-backslash", "name": [{"family": "Back\\slash"}]},
    {
        "resourceType": "Patient",
        "id": "meta-1",
        "meta": {
            "tag": [{"system": "urn:test:tags", "code": "alpha"}],
            "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}],
            "source": "http://example.org/source#one",
        },
    },
    {
        "resourceType": "Patient",
        "id": "meta-2",
        "meta": {
            "tag": [
                {"system": "urn:test:tags", "code": "beta"},
                {"system": "urn:other:tags", "code": "alpha"},
            ],
            "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "N"}],
            "source": "http://example.org/source#two",
        },
    },
    {"resourceType": "Organization", "id": "chain-org", "name": "Chainorg Fhirtest"},
    {
        "resourceType": "Patient",
        "id": "chain-pat",
        "name": [{"family": "Chainpatient"}],
        "managingOrganization": {"reference": "Organization/chain-org"},
    },
    {
        "resourceType": "Encounter",
        "id": "chain-enc",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": "Patient/chain-pat"},
    },
    # Quantities in mg (and one without a code, one in another system) for value-quantity.
    *[
        _obs(f"qty-{i}", {"reference": "Patient/zoe-unal"}, valueQuantity=q)
        for i, q in enumerate(
            [
                _qty("5"),
                _qty("5.4"),
                _qty("6"),
                _qty("10"),
                _qty("5.4", system=None, code=None),
                _qty("8", system="urn:other:units"),
            ]
        )
    ],
    _obs("nosys-1", {"reference": "Patient/zoe-unal"}, code={"coding": [{"code": "nosys-code"}]}),
    _obs(
        "nosys-2",
        {"reference": "Patient/zoe-unal"},
        code={"coding": [{"system": "urn:test:codes", "code": "nosys-code"}]},
    ),
    _obs("subj-ident", {"identifier": {"system": "urn:test:mrn", "value": "ZU-1"}}),
    # Performed by Patient 85 about Patient 355: in the Patient/85 compartment, not in patient=85.
    _obs("perf-85", {"reference": "Patient/355"}, performer=[{"reference": "Patient/85"}]),
    *[
        {
            "resourceType": "RiskAssessment",
            "id": f"risk-{i}",
            "status": "final",
            "subject": {"reference": "Patient/85"},
            "prediction": [{"probabilityDecimal": float(p)}],
        }
        for i, p in enumerate(["0.1", "0.25", "0.46", "0.5", "0.52", "0.7", "0.9", "1"])
    ],
    {
        "resourceType": "RiskAssessment",
        "id": "risk-none",
        "status": "final",
        "subject": {"reference": "Patient/85"},
    },
    *[
        {"resourceType": "ValueSet", "id": f"vs-{n}", "status": "active", "url": f"{VS}/{path}"}
        for n, path in [
            ("alpha", "alpha"),
            ("beta", "alpha/beta"),
            ("gamma", "alpha/beta/gamma"),
            ("delta", "delta"),
        ]
    ],
]


@pytest.fixture(scope="module")
def data(world: World) -> World:
    for res in EXTRA:
        world.put(res)
    return world


def resolve(world: World, ref: str) -> Resource | None:
    rtype, _, rid = ref.partition("/")
    return world.store.get(rtype, {}).get(rid)


# -- string ------------------------------------------------------------------------------------

STRING_CASES: list[tuple[str, Callable[[Resource], bool]]] = [
    ("Patient?name=bosco", lambda r: x.string_match(x.strings(r, "name"), "bosco")),
    ("Patient?name=RITCHIE", lambda r: x.string_match(x.strings(r, "name"), "RITCHIE")),
    ("Patient?name=Dust", lambda r: x.string_match(x.strings(r, "name"), "Dust")),
    ("Patient?family=Ritch", lambda r: x.string_match(x.strings(r, "name.family"), "Ritch")),
    ("Patient?given=aleta", lambda r: x.string_match(x.strings(r, "name.given"), "aleta")),
    ("Patient?name:exact=Bosco882", lambda r: x.string_match(x.strings(r, "name"), "Bosco882", "exact")),
    (
        "Patient?family:exact=Ritchie586",
        lambda r: x.string_match(x.strings(r, "name.family"), "Ritchie586", "exact"),
    ),
    ("Patient?name:contains=SCO88", lambda r: x.string_match(x.strings(r, "name"), "SCO88", "contains")),
    ("Patient?family:contains=tch", lambda r: x.string_match(x.strings(r, "name.family"), "tch", "contains")),
    ("Patient?address-city=lowell", lambda r: x.string_match(x.strings(r, "address.city"), "lowell")),
    ("Patient?address-city=West Spr", lambda r: x.string_match(x.strings(r, "address.city"), "West Spr")),
    ("Patient?address-postalcode=018", lambda r: x.string_match(x.strings(r, "address.postalCode"), "018")),
    ("Patient?address=934 olson", lambda r: x.string_match(x.strings(r, "address"), "934 olson")),
    ("Patient?address=lowell", lambda r: x.string_match(x.strings(r, "address"), "lowell")),
    ("Patient?address-state=MA", lambda r: x.string_match(x.strings(r, "address.state"), "MA")),
    ("Organization?name=river bend", lambda r: x.string_match(x.strings(r, "name", "alias"), "river bend")),
    (
        "Organization?name:contains=CHICOPEE",
        lambda r: x.string_match(x.strings(r, "name", "alias"), "CHICOPEE", "contains"),
    ),
    ("Location?address-city=chic", lambda r: x.string_match(x.strings(r, "address.city"), "chic")),
    ("Practitioner?name=dr", lambda r: x.string_match(x.strings(r, "name"), "dr")),
]


@pytest.mark.parametrize("url,pred", STRING_CASES, ids=[c[0] for c in STRING_CASES])
def test_string(data: World, url: str, pred: Callable[[Resource], bool]) -> None:
    assert_search(data, url, pred)


def test_string_exact_is_case_and_accent_sensitive(data: World) -> None:
    assert data.ids("Patient?name:exact=bosco882") == set()
    assert data.ids("Patient?family:exact=Unal") == set()
    assert data.ids("Patient?family:exact=Ünal") == {"zoe-unal"}
    assert data.ids("Patient?given:exact=Zoë") == {"zoe-unal"}


@pytest.mark.parametrize(
    "url",
    [
        "Patient?name=zoe",
        "Patient?family=UNAL",
        "Patient?given=ZOË",
        "Patient?name=ünal",
        "Patient?family=un",
        "Patient?name:contains=NA",
    ],
)
def test_string_accents_and_case(data: World, url: str) -> None:
    param, _, value = url.split("?")[1].partition("=")
    code, _, modifier = param.partition(":")
    path = {"name": "name", "family": "name.family", "given": "name.given"}[code]
    ids = assert_search(data, url, lambda r: x.string_match(x.strings(r, path), value, modifier))
    assert "zoe-unal" in ids


# -- token -------------------------------------------------------------------------------------

TOKEN_CASES: list[tuple[str, Callable[[Resource], bool]]] = [
    ("Observation?code=8302-2", lambda r: x.token_match(x.values(r, "code"), "8302-2")),
    (
        "Observation?code=http://loinc.org|8302-2",
        lambda r: x.token_match(x.values(r, "code"), f"{LOINC}|8302-2"),
    ),
    ("Observation?code=http://snomed.info/sct|8302-2", lambda r: False),
    ("Observation?code=|nosys-code", lambda r: x.token_match(x.values(r, "code"), "|nosys-code")),
    ("Observation?code=nosys-code", lambda r: x.token_match(x.values(r, "code"), "nosys-code")),
    ("Observation?code=urn:test:codes|", lambda r: x.token_match(x.values(r, "code"), "urn:test:codes|")),
    ("Observation?category=vital-signs", lambda r: x.token_match(x.values(r, "category"), "vital-signs")),
    (
        "Observation?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
        lambda r: x.token_match(
            x.values(r, "category"), "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"
        ),
    ),
    (
        "Observation?patient=85&code:not=http://loinc.org|72166-2",
        lambda r: (
            x.patient_ref(r, "subject", "85") and not x.token_match(x.values(r, "code"), f"{LOINC}|72166-2")
        ),
    ),
    (
        "Observation?patient=85&category:not=vital-signs",
        lambda r: (
            x.patient_ref(r, "subject", "85") and not x.token_match(x.values(r, "category"), "vital-signs")
        ),
    ),
    ("Observation?code:text=body wei", lambda r: x.token_text(x.values(r, "code"), "body wei")),
    ("Condition?code:text=viral sinus", lambda r: x.token_text(x.values(r, "code"), "viral sinus")),
    ("Observation?status=final", lambda r: r["status"] == "final"),
    ("Encounter?status=finished", lambda r: r["status"] == "finished"),
    ("Patient?gender=male", lambda r: r.get("gender") == "male"),
    ("Patient?gender=female,other", lambda r: r.get("gender") in ("female", "other")),
    ("Patient?gender:missing=true", lambda r: "gender" not in r),
    ("Patient?gender:missing=false", lambda r: "gender" in r),
    ("Observation?data-absent-reason:missing=false", lambda r: "dataAbsentReason" in r),
    # A Reference with only a display has no value to search on: it counts as missing.
    ("Observation?encounter:missing=true", lambda r: not x.reference_strings(x.values(r, "encounter"))),
    ("Observation?encounter:missing=false", lambda r: bool(x.reference_strings(x.values(r, "encounter")))),
    ("Patient?death-date:missing=false", lambda r: "deceasedDateTime" in r),
    (
        "Patient?identifier=http://hl7.org/fhir/sid/us-ssn|999-47-5768",
        lambda r: x.token_match(x.values(r, "identifier"), "http://hl7.org/fhir/sid/us-ssn|999-47-5768"),
    ),
    ("Patient?identifier=999-61-9797", lambda r: x.token_match(x.values(r, "identifier"), "999-61-9797")),
    (
        "Patient?identifier=http://hospital.smarthealthit.org|",
        lambda r: x.token_match(x.values(r, "identifier"), "http://hospital.smarthealthit.org|"),
    ),
    (
        f"Patient?identifier:of-type={V2_0203}|MR|ZU-1",
        lambda r: x.identifier_of_type(x.values(r, "identifier"), f"{V2_0203}|MR|ZU-1"),
    ),
    (
        f"Patient?identifier:of-type={V2_0203}|MR|d831ec91-c7a3-4a61-9312-7ff0c4a32134",
        lambda r: x.identifier_of_type(
            x.values(r, "identifier"), f"{V2_0203}|MR|d831ec91-c7a3-4a61-9312-7ff0c4a32134"
        ),
    ),
    (
        "Patient?identifier:text=Medical Record",
        lambda r: x.string_match(
            [t for i in x.values(r, "identifier") for t in x.get(i, "type.text")], "Medical Record"
        ),
    ),
    ("Patient?_id=85,355,nope", lambda r: r["id"] in ("85", "355")),
    ("Observation?_id=perf-85", lambda r: r["id"] == "perf-85"),
    ("Patient?_id:not=85", lambda r: r["id"] != "85"),
]


@pytest.mark.parametrize("url,pred", TOKEN_CASES, ids=[c[0] for c in TOKEN_CASES])
def test_token(data: World, url: str, pred: Callable[[Resource], bool]) -> None:
    assert_search(data, url, pred, nonempty="snomed" not in url)


US_CORE_EXT = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-"


def _omb_codes(res: Resource, which: str) -> list[Any]:
    """Codes of the US Core race/ethnicity extension (``extension.where(url=...).extension.value.code``)."""
    return [
        sub["valueCoding"]["code"]
        for ext in res.get("extension", [])
        if ext.get("url") == US_CORE_EXT + which
        for sub in ext.get("extension", [])
        if "valueCoding" in sub
    ]


def _deceased(res: Resource) -> str:
    """``Patient.deceased.exists() and Patient.deceased != false``: a boolean for every Patient."""
    if "deceasedDateTime" in res:
        return "true"
    return "true" if res.get("deceasedBoolean") is True else "false"


def _phones(res: Resource) -> list[Any]:
    return [t for t in res.get("telecom", []) if t.get("system") == "phone"]


MORE_TOKEN_CASES: list[tuple[str, Callable[[Resource], bool]]] = [
    ("Patient?phone=555-510-6254", lambda r: x.token_match(_phones(r), "555-510-6254")),
    (
        "Patient?telecom=phone|555-510-6254",
        lambda r: x.token_match(x.values(r, "telecom"), "phone|555-510-6254"),
    ),
    ("Patient?address-use=old", lambda r: x.token_match(x.values(r, "address.use"), "old")),
    ("Patient?deceased=true", lambda r: _deceased(r) == "true"),
    ("Patient?deceased=false", lambda r: _deceased(r) == "false"),
    ("Patient?language=en-US", lambda r: x.token_match(x.values(r, "communication.language"), "en-US")),
    (
        "Patient?language=urn:ietf:bcp:47|zh",
        lambda r: x.token_match(x.values(r, "communication.language"), "urn:ietf:bcp:47|zh"),
    ),
    ("Patient?race=2106-3", lambda r: "2106-3" in _omb_codes(r, "race")),
    ("Patient?ethnicity=2186-5", lambda r: "2186-5" in _omb_codes(r, "ethnicity")),
    (
        "Observation?combo-code=http://loinc.org|8480-6",
        lambda r: x.token_match(x.values(r, "code", "component.code"), f"{LOINC}|8480-6"),
    ),
    ("Observation?component-code=8462-4", lambda r: x.token_match(x.values(r, "component.code"), "8462-4")),
    (
        "Observation?value-concept=http://snomed.info/sct|266919005",
        lambda r: x.token_match(x.values(r, "valueCodeableConcept"), "http://snomed.info/sct|266919005"),
    ),
    (
        "Observation?value-string=recommend",
        lambda r: x.string_match(x.values(r, "valueString", "valueCodeableConcept.text"), "recommend"),
    ),
    (
        "Observation?value-string=never smok",
        lambda r: x.string_match(x.values(r, "valueString", "valueCodeableConcept.text"), "never smok"),
    ),
    (
        "Observation?patient=85&code:not=http://loinc.org|72166-2,http://loinc.org|2708-6",
        lambda r: (
            x.patient_ref(r, "subject", "85")
            and not x.token_match(x.values(r, "code"), f"{LOINC}|72166-2")
            and not x.token_match(x.values(r, "code"), f"{LOINC}|2708-6")
        ),
    ),
    (
        "Observation?category=vital-signs,laboratory&category:not=laboratory",
        lambda r: (
            x.token_match(x.values(r, "category"), "vital-signs")
            and not x.token_match(x.values(r, "category"), "laboratory")
        ),
    ),
]


@pytest.mark.parametrize("url,pred", MORE_TOKEN_CASES, ids=[c[0] for c in MORE_TOKEN_CASES])
def test_token_more(data: World, url: str, pred: Callable[[Resource], bool]) -> None:
    assert_search(data, url, pred)


def test_identifier_of_type_distinguishes_the_type(data: World) -> None:
    assert data.ids("Patient?identifier=ZU-1") == {"zoe-unal", "of-type-ss"}
    assert data.ids(f"Patient?identifier:of-type={V2_0203}|MR|ZU-1") == {"zoe-unal"}
    assert data.ids(f"Patient?identifier:of-type={V2_0203}|SS|ZU-1") == {"of-type-ss"}


# -- meta parameters ---------------------------------------------------------------------------

META_CASES: list[tuple[str, Callable[[Resource], bool]]] = [
    (
        "Patient?_tag=urn:test:tags|alpha",
        lambda r: x.token_match(x.values(r, "meta.tag"), "urn:test:tags|alpha"),
    ),
    ("Patient?_tag=alpha", lambda r: x.token_match(x.values(r, "meta.tag"), "alpha")),
    ("Patient?_tag=urn:test:tags|", lambda r: x.token_match(x.values(r, "meta.tag"), "urn:test:tags|")),
    (
        "Patient?_tag:not=urn:test:tags|alpha",
        lambda r: not x.token_match(x.values(r, "meta.tag"), "urn:test:tags|alpha"),
    ),
    (
        "Patient?_security=http://terminology.hl7.org/CodeSystem/v3-Confidentiality|R",
        lambda r: x.token_match(
            x.values(r, "meta.security"), "http://terminology.hl7.org/CodeSystem/v3-Confidentiality|R"
        ),
    ),
    ("Patient?_security=N", lambda r: x.token_match(x.values(r, "meta.security"), "N")),
    (
        "Patient?_source=http://example.org/source#two",
        lambda r: r.get("meta", {}).get("source") == "http://example.org/source#two",
    ),
    (f"Patient?_profile={US_CORE_PATIENT}", lambda r: US_CORE_PATIENT in x.values(r, "meta.profile")),
    (
        "Observation?_profile=http://hl7.org/fhir/us/core/StructureDefinition/us-core-smokingstatus",
        lambda r: (
            "http://hl7.org/fhir/us/core/StructureDefinition/us-core-smokingstatus"
            in x.values(r, "meta.profile")
        ),
    ),
    ("Observation?_profile:missing=true", lambda r: not x.values(r, "meta.profile")),
]


@pytest.mark.parametrize("url,pred", META_CASES, ids=[c[0] for c in META_CASES])
def test_meta_params(data: World, url: str, pred: Callable[[Resource], bool]) -> None:
    assert_search(data, url, pred)


@pytest.mark.parametrize("prefix", ["", "ge", "gt", "le", "lt", "eq", "ne", "sa", "eb"])
def test_last_updated(data: World, prefix: str) -> None:
    stamps = sorted(r["meta"]["lastUpdated"] for r in data.all("Observation"))
    pivot = stamps[len(stamps) // 2]
    url = f"Observation?_lastUpdated={prefix}{pivot}"
    assert_search(data, url, lambda r: x.date_match([r["meta"]["lastUpdated"]], f"{prefix or 'eq'}{pivot}"))
    assert_search(data, "Observation?_lastUpdated=ge2000-01-01", lambda r: True)
    assert_search(data, "Observation?_lastUpdated=lt2000-01-01", lambda r: False, nonempty=False)


# -- date --------------------------------------------------------------------------------------

DATE_PREFIXES = ["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb"]
OBS_DATES = [
    "2015",  # year
    "2022-07",  # month: holds a Period of 15 minutes
    "2015-04-20",  # day (17:48 -04:00 = 21:48 UTC)
    "2015-04-20T17:48:38-04:00",  # seconds, offset
    "1975-04-07T07:00:00Z",  # inside the Period 06:51:45Z..07:51:45Z of an Observation
    "2016-01-01T00:00:00+05:00",
    "2015-04-24",  # the start of an open Period
]


# R4 search.html#prefix: ge = "the range above the search value intersects the target's range, or the
# search range fully contains it" (likewise le).  The overlap reading ("the target's range overlaps
# [search start, +infinity)") differs from it for these values in the data: they guard the R4 reading.
R4_VS_OVERLAP = {("le", "2015"), ("le", "2015-04-24"), ("ge", "1975-04-08"), ("le", "1975-04-07")}


def _date_params(values: list[str], prefixes: list[str]) -> list[Any]:
    return [
        pytest.param(p, v, id=f"{p}{v}" + ("-r4-not-overlap" if (p, v) in R4_VS_OVERLAP else ""))
        for v in values
        for p in prefixes
    ]


def _date_pred(paths: tuple[str, ...], query: str) -> Callable[[Resource], bool]:
    q = query if query[:2].isalpha() else "eq" + query
    return lambda r: x.date_match(x.values(r, *paths), q)


@pytest.mark.parametrize("prefix,value", _date_params(OBS_DATES, DATE_PREFIXES))
def test_date_observation_effective(data: World, prefix: str, value: str) -> None:
    """Observation.effective[x]: dateTime and Period (one without end), all prefixes, all precisions."""
    paths = ("effectiveDateTime", "effectivePeriod", "effectiveInstant")
    # No Observation lies wholly within these (eq): the other combinations all find some.
    nonempty = prefix not in ("eq", "") or value not in (
        "1975-04-07T07:00:00Z",
        "2016-01-01T00:00:00+05:00",
        "2015-04-24",
    )
    assert_search(
        data,
        f"Observation?date={prefix}{value}",
        _date_pred(paths, prefix + value),
        nonempty=nonempty,
        count=1000,
    )


@pytest.mark.parametrize(
    "query",
    [
        "1940-03-29",
        "1940",
        "1940-09",
        "ge1987",
        "gt1987-02-20",
        "lt1940-09",
        "le1940-09-05",
        "sa1940-03-29",
        "eb1941",
        "ne1940-03-29",
        "ge2016-01-15",
        "eq2020-04-28",
        "lt1940-03-30T12:00:00+14:00",
    ],
)
def test_date_patient_birthdate(data: World, query: str) -> None:
    assert_search(data, f"Patient?birthdate={query}", _date_pred(("birthDate",), query))


@pytest.mark.parametrize(
    "prefix,value",
    _date_params(
        ["1975-04-07", "1975-04-08", "1975-04", "2013-07"], ["", "ge", "gt", "le", "lt", "sa", "eb", "ne"]
    )
    + _date_params(["1975-04-07T10:00:00Z"], ["lt", "gt"])
    + _date_params(["2013-07-25T12:00:00Z"], ["ge"])
    + _date_params(["2013-07-24T12:00:00+02:00"], ["le"]),
)
def test_date_encounter_period(data: World, prefix: str, value: str) -> None:
    """Encounter.period spanning several days against ranges that cut through it."""
    assert_search(
        data,
        f"Encounter?date={prefix}{value}",
        _date_pred(("period",), prefix + value),
        count=1000,
        nonempty=(prefix, value) != ("", "1975-04-08"),
    )


def test_date_approximately(data: World) -> None:
    """``ap`` is loosely defined: it must find the equal ones and nothing decades away."""
    eq = data.ids("Patient?birthdate=1940-03-29")
    ap = data.ids("Patient?birthdate=ap1940-03-29")
    assert eq and eq <= ap
    far = {p["id"] for p in data.all("Patient") if p.get("birthDate", "0")[:4] > "1960"}
    assert not (ap & far), ap & far


def test_date_and_range(data: World) -> None:
    q = "Observation?date=ge2015-01-01&date=lt2016-01-01T00:00:00-05:00"
    paths = ("effectiveDateTime", "effectivePeriod")
    assert_search(
        data,
        q,
        lambda r: (
            x.date_match(x.values(r, *paths), "ge2015-01-01")
            and x.date_match(x.values(r, *paths), "lt2016-01-01T00:00:00-05:00")
        ),
    )


@pytest.mark.parametrize("value", ["2020-13-01", "20x0", "ge", "2020-01-01T25:00:00Z", "zz2020"])
def test_date_invalid_is_400(data: World, value: str) -> None:
    r = data.fetch(f"Observation?date={value}")
    assert r.status_code == 400, r.text
    assert r.json()["resourceType"] == "OperationOutcome"


# -- number ------------------------------------------------------------------------------------


# Comparisons use values written with more digits than the data so that reading gt/ge/lt/le as exact
# comparisons or as comparisons of implicit ranges gives the same answer.
@pytest.mark.parametrize(
    "query",
    [
        "0.5",
        "0.50",
        "eq0.5",
        "ne0.5",
        "gt0.500",
        "lt0.250",
        "ge0.500",
        "le0.500",
        "sa0.700",
        "eb0.460",
        "1.0",
        "gt0.900",
        "0.1",
    ],
)
def test_number_probability(data: World, query: str) -> None:
    assert_search(
        data,
        f"RiskAssessment?probability={query}",
        lambda r: x.number_match(x.values(r, "prediction.probabilityDecimal"), query),
    )


def test_number_approximately(data: World) -> None:
    ap = data.ids("RiskAssessment?probability=ap0.5")
    assert {"risk-2", "risk-3", "risk-4"} <= ap  # 0.46, 0.5, 0.52: within 10%
    assert not ap & {"risk-0", "risk-1", "risk-6", "risk-7", "risk-none"}


def test_number_missing(data: World) -> None:
    assert data.ids("RiskAssessment?probability:missing=true") == {"risk-none"}


# -- quantity ----------------------------------------------------------------------------------

QUANTITY_CASES = [
    f"gt5.4|{UCUM}|mg",
    "5.4||mg",
    f"5.4|{UCUM}|mg",
    "5.4",
    "lt5.50||mg",
    "ge6|urn:other:units|mg",
    f"gt100|{UCUM}|mg/dL",
    "70||kg",
    f"ge80|{UCUM}|kg",
    "le5.00",
    "ne5.4||mg",
    "ap10||mg",
    f"lt60|{UCUM}|kg",
]


@pytest.mark.parametrize("query", QUANTITY_CASES)
def test_quantity(data: World, query: str) -> None:
    if query.startswith("ap"):  # ap: loosely; 10 mg in, 5.4 mg out
        got = data.ids(f"Observation?value-quantity={query}")
        assert "qty-3" in got and "qty-1" not in got
        return
    assert_search(
        data,
        f"Observation?value-quantity={query}",
        lambda r: x.quantity_match(x.values(r, "valueQuantity"), query),
        nonempty=not query.startswith("70"),
    )


# -- reference ---------------------------------------------------------------------------------

REF_CASES: list[tuple[str, Callable[[Resource], bool]]] = [
    ("Observation?subject=Patient/85", lambda r: x.refers_to(r, ["subject"], "Patient/85")),
    ("Observation?patient=85", lambda r: x.refers_to(r, ["subject"], "Patient/85")),
    ("Observation?patient=Patient/85", lambda r: x.refers_to(r, ["subject"], "Patient/85")),
    (f"Observation?subject={BASE}/Patient/85", lambda r: x.refers_to(r, ["subject"], "Patient/85")),
    ("Observation?subject:Patient=85", lambda r: x.refers_to(r, ["subject"], "Patient/85")),
    ("Observation?subject=85", lambda r: x.refers_to(r, ["subject"], "Patient/85")),
    (
        "Observation?patient=85,355",
        lambda r: x.refers_to(r, ["subject"], "Patient/85") or x.refers_to(r, ["subject"], "Patient/355"),
    ),
    ("Observation?performer=Patient/85", lambda r: x.refers_to(r, ["performer"], "Patient/85")),
    (
        "Observation?subject:identifier=urn:test:mrn|ZU-1",
        lambda r: x.reference_identifier(x.values(r, "subject"), "urn:test:mrn|ZU-1"),
    ),
    (
        "Encounter?service-provider=Organization/c7459800-e42b-3144-a934-59585c9eacff",
        lambda r: x.refers_to(r, ["serviceProvider"], "Organization/c7459800-e42b-3144-a934-59585c9eacff"),
    ),
    ("Condition?encounter:missing=true", lambda r: "encounter" not in r),
    ("Patient?organization:missing=false", lambda r: "managingOrganization" in r),
]


@pytest.mark.parametrize("url,pred", REF_CASES, ids=[c[0] for c in REF_CASES])
def test_reference(data: World, url: str, pred: Callable[[Resource], bool]) -> None:
    assert_search(data, url, pred)


def test_reference_forms_are_equivalent(data: World) -> None:
    forms = [
        "Observation?patient=85",
        "Observation?patient=Patient/85",
        "Observation?subject=Patient/85",
        f"Observation?subject={BASE}/Patient/85",
        "Observation?subject:Patient=85",
    ]
    results = [data.ids(u) for u in forms]
    assert results[0] and all(r == results[0] for r in results), [len(r) for r in results]


# -- uri ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url,want",
    [
        (f"ValueSet?url={VS}/alpha", {"vs-alpha"}),
        (f"ValueSet?url={VS}/alpha/beta", {"vs-beta"}),
        (f"ValueSet?url={VS}/alph", set()),
        (f"ValueSet?url:below={VS}/alpha", {"vs-alpha", "vs-beta", "vs-gamma"}),
        (f"ValueSet?url:below={VS}/alpha/beta", {"vs-beta", "vs-gamma"}),
        (f"ValueSet?url:above={VS}/alpha/beta/gamma/more", {"vs-alpha", "vs-beta", "vs-gamma"}),
        (f"ValueSet?url:above={VS}/alpha/beta", {"vs-alpha", "vs-beta"}),
        (f"ValueSet?url={VS}/delta,{VS}/alpha", {"vs-alpha", "vs-delta"}),
    ],
)
def test_uri(data: World, url: str, want: set[str]) -> None:
    assert data.ids(url) == want


# -- composite ---------------------------------------------------------------------------------


def _composite(
    code_path: str, value_path: str, code_q: str, value_q: str, within: str | None = None
) -> Callable[[Resource], bool]:
    """code and value of the same element (the resource, or one component) match together."""

    def pred(r: Resource) -> bool:
        parts = x.values(r, within) if within else [r]
        return any(
            x.token_match(x.values(p, code_path), code_q)
            and x.quantity_match(x.values(p, value_path), value_q)
            for p in parts
        )

    return pred


@pytest.mark.parametrize(
    "code,value",
    [
        (f"{LOINC}|8302-2", "gt170"),
        ("8302-2", "le160"),
        (f"{LOINC}|29463-7", f"gt70|{UCUM}|kg"),
        (f"{LOINC}|29463-7", "lt40"),
        (f"{LOINC}|8302-2", "190.2"),
    ],
)
def test_composite_code_value_quantity(data: World, code: str, value: str) -> None:
    assert_search(
        data,
        f"Observation?code-value-quantity={code}${value}",
        _composite("code", "valueQuantity", code, value),
    )


@pytest.mark.parametrize(
    "code,value",
    [
        (f"{LOINC}|8480-6", "gt100"),
        (f"{LOINC}|8480-6", "lt110"),
        (f"{LOINC}|8462-4", "ge80"),
        (f"{LOINC}|8462-4", f"lt75|{UCUM}|mm[Hg]"),
    ],
)
def test_composite_component_code_value_quantity(data: World, code: str, value: str) -> None:
    assert_search(
        data,
        f"Observation?component-code-value-quantity={code}${value}",
        _composite("code", "valueQuantity", code, value, within="component"),
    )


def test_composite_pairs_within_one_component(data: World) -> None:
    """Diastolic codes paired with a systolic-only value must not match across components."""
    sys_vals = [
        Decimal(str(c["valueQuantity"]["value"]))
        for o in data.all("Observation")
        for c in o.get("component", [])
        if x.token_match([c["code"]], f"{LOINC}|8480-6") and "valueQuantity" in c
    ]
    dia_vals = [
        Decimal(str(c["valueQuantity"]["value"]))
        for o in data.all("Observation")
        for c in o.get("component", [])
        if x.token_match([c["code"]], f"{LOINC}|8462-4") and "valueQuantity" in c
    ]
    assert sys_vals and dia_vals and max(dia_vals) < min(sys_vals)
    assert data.ids(f"Observation?component-code-value-quantity={LOINC}|8462-4$ge{min(sys_vals)}") == set()


# -- AND, OR, escaping -------------------------------------------------------------------------


def test_and_by_repeating(data: World) -> None:
    assert_search(
        data,
        "Patient?name=Ritchie&name=Dustin",
        lambda r: (
            x.string_match(x.strings(r, "name"), "Ritchie") and x.string_match(x.strings(r, "name"), "Dustin")
        ),
    )
    assert_search(
        data,
        "Observation?category=vital-signs&category=laboratory",
        lambda r: (
            x.token_match(x.values(r, "category"), "vital-signs")
            and x.token_match(x.values(r, "category"), "laboratory")
        ),
        nonempty=False,
    )
    assert_search(
        data,
        "Observation?code=8302-2,29463-7&code=29463-7,8867-4",
        lambda r: x.token_match(x.values(r, "code"), "29463-7"),
    )


def test_or_with_commas(data: World) -> None:
    assert_search(
        data,
        f"Observation?code={LOINC}|8302-2,{LOINC}|29463-7",
        lambda r: (
            x.token_match(x.values(r, "code"), f"{LOINC}|8302-2")
            or x.token_match(x.values(r, "code"), f"{LOINC}|29463-7")
        ),
    )
    assert_search(
        data,
        "Patient?family=bosco,ritchie",
        lambda r: (
            x.string_match(x.strings(r, "name.family"), "bosco")
            or x.string_match(x.strings(r, "name.family"), "ritchie")
        ),
    )


@pytest.mark.parametrize(
    "url,want",
    [
        (r"Patient?identifier=urn:test:esc|A\,B", {"esc-comma"}),
        ("Patient?identifier=urn:test:esc|A,urn:test:esc|B", {"esc-a", "esc-b"}),
        ("Patient?identifier=urn:test:esc|A,B", {"esc-a", "esc-b"}),
        (r"Patient?identifier=urn:test:esc|X\|Y", {"esc-pipe"}),
        ("Patient?identifier=urn:test:esc|", {"esc-comma", "esc-a", "esc-b", "esc-pipe"}),
        (r"Patient?family:exact=Comma\,Name", {"esc-comma"}),
        ("Patient?family:exact=Comma,Name", {"esc-a"}),
        (r"Patient?family=comma\,", {"esc-comma"}),
        ("Patient?family=under_", {"like-under"}),
        ("Patient?family:contains=r_s", {"like-under"}),
        ("Patient?family:contains=%", {"like-percent"}),
        ("Patient?family=per%", {"like-percent"}),
        ("Patient?family:exact=Under_score", {"like-under"}),
        ("Patient?family:contains=K\\\\S", {"like-backslash"}),  # an escaped backslash
    ],
)
def test_escaping(data: World, url: str, want: set[str]) -> None:
    assert data.ids(url) == want


# -- chaining, reverse chaining ----------------------------------------------------------------


def _chain(data: World, path: str, pred: Callable[[Resource], bool]) -> Callable[[Resource], bool]:
    """The reference at ``path`` resolves to a loaded resource for which ``pred`` holds."""

    def check(r: Resource) -> bool:
        for ref in x.reference_strings(x.values(r, path)):
            target = resolve(data, ref)
            if target is not None and pred(target):
                return True
        return False

    return check


def test_chain_one_level(data: World) -> None:
    is_patient = lambda r: r["resourceType"] == "Patient"  # noqa: E731
    assert_search(
        data,
        "Observation?subject:Patient.name=Bosco",
        _chain(data, "subject", lambda p: is_patient(p) and x.string_match(x.strings(p, "name"), "Bosco")),
    )
    assert_search(
        data,
        "Observation?patient.family=Ritchie",
        _chain(
            data,
            "subject",
            lambda p: is_patient(p) and x.string_match(x.strings(p, "name.family"), "Ritchie"),
        ),
    )
    assert_search(
        data,
        "Observation?patient.birthdate=1940-03-29",
        _chain(data, "subject", lambda p: is_patient(p) and p.get("birthDate") == "1940-03-29"),
    )
    assert_search(
        data,
        "Encounter?service-provider.name=holyoke",
        _chain(data, "serviceProvider", lambda o: x.string_match(x.strings(o, "name", "alias"), "holyoke")),
    )
    assert_search(
        data,
        "Observation?patient.identifier=http://hl7.org/fhir/sid/us-ssn|999-61-9797",
        _chain(
            data,
            "subject",
            lambda p: x.token_match(x.values(p, "identifier"), "http://hl7.org/fhir/sid/us-ssn|999-61-9797"),
        ),
    )


def test_chain_two_levels(data: World) -> None:
    assert_search(
        data,
        "Encounter?subject:Patient.organization.name=Chainorg",
        _chain(
            data,
            "subject",
            _chain(data, "managingOrganization", lambda o: x.string_match(x.strings(o, "name"), "Chainorg")),
        ),
    )
    assert_search(
        data,
        "Observation?encounter.service-provider.name=holyoke",
        _chain(
            data,
            "encounter",
            _chain(data, "serviceProvider", lambda o: x.string_match(x.strings(o, "name"), "holyoke")),
        ),
    )


def test_reverse_chain(data: World) -> None:
    def has(rtype: str, path: str, pred: Callable[[Resource], bool]) -> Callable[[Resource], bool]:
        return lambda target: any(
            pred(r) and key(target) in x.reference_strings(x.values(r, path)) for r in data.all(rtype)
        )

    assert_search(
        data,
        f"Patient?_has:Observation:patient:code={LOINC}|8302-2",
        has("Observation", "subject", lambda o: x.token_match(x.values(o, "code"), f"{LOINC}|8302-2")),
    )
    assert_search(
        data,
        "Patient?_has:Observation:subject:code=nosys-code",
        has("Observation", "subject", lambda o: x.token_match(x.values(o, "code"), "nosys-code")),
    )
    assert_search(
        data,
        "Encounter?_has:Condition:encounter:code=http://snomed.info/sct|444814009",
        has(
            "Condition",
            "encounter",
            lambda c: x.token_match(x.values(c, "code"), "http://snomed.info/sct|444814009"),
        ),
    )
    # combined with an ordinary parameter on the same resource
    assert_search(
        data,
        f"Patient?gender=male&_has:Observation:patient:code={LOINC}|8302-2",
        lambda p: (
            p.get("gender") == "male"
            and has(
                "Observation", "subject", lambda o: x.token_match(x.values(o, "code"), f"{LOINC}|8302-2")
            )(p)
        ),
    )


# -- compartments, system search, the forms of a search ----------------------------------------


def test_compartment_search(data: World) -> None:
    """Patient/85/Observation: subject or performer is Patient/85 (R4 compartmentdefinition-patient)."""
    want = data.ids_where("Observation", lambda r: x.refers_to(r, ["subject", "performer"], "Patient/85"))
    assert "perf-85" in want
    assert data.ids("Patient/85/Observation") == want
    assert data.ids("Observation?patient=85") == want - {"perf-85"}
    sample = sorted(data.all("Observation"), key=lambda r: r["id"])
    coding = next(r for r in sample if x.refers_to(r, ["subject"], "Patient/85"))["code"]["coding"][0]
    code = f"{coding['system']}|{coding['code']}"
    assert_search(
        data,
        f"Patient/85/Observation?code={code}",
        lambda r: (
            x.refers_to(r, ["subject", "performer"], "Patient/85")
            and x.token_match(x.values(r, "code"), code)
        ),
    )
    assert data.ids("Patient/85/Encounter") == data.ids_where(
        "Encounter", lambda r: x.refers_to(r, ["subject"], "Patient/85")
    )
    first = data.fetch("Patient/85/Observation", count=5).json()
    assert links(first)["self"].startswith(f"{BASE}/Patient/85/Observation")


def test_system_search(data: World) -> None:
    res = data.search("?_type=Patient,Observation&_lastUpdated=ge2000-01-01", count=500)
    want = {key(r) for r in data.resources() if r["resourceType"] in ("Patient", "Observation")}
    assert want and res.keys == want
    res = data.search("?_type=Patient&_id=85,355")
    assert res.keys == {"Patient/85", "Patient/355"}
    # Without _type: every type.
    assert data.search("?_id=85,perf-85,vs-alpha").keys == {
        "Patient/85",
        "Observation/perf-85",
        "ValueSet/vs-alpha",
    }
    res = data.search("?_tag=urn:test:tags|alpha")
    assert res.keys == {
        key(r) for r in data.resources() if x.token_match(x.values(r, "meta.tag"), "urn:test:tags|alpha")
    }
    assert res.keys


def _ordered(data: World, first: Resource) -> tuple[list[str], int | None]:
    r = data.walk(first)
    return [key(m) for m in r.matches], r.total


def test_get_search_and_post_search_are_identical(data: World) -> None:
    q = "patient=355&code=http://loinc.org|8302-2,http://loinc.org|29463-7&_sort=date"
    plain = data.search(f"Observation?{q}", count=5)
    assert plain.ids
    want = ([key(m) for m in plain.matches], plain.total)
    get_form = data.fetch(f"Observation/_search?{q}", count=5)
    assert get_form.status_code == 200, get_form.text
    assert _ordered(data, get_form.json()) == want
    post = data.fetch(f"Observation/_search?{q}", method="POST", count=5)
    assert post.status_code == 200, post.text
    assert _ordered(data, post.json()) == want
    # Part in the query string, part in the form body.
    mixed = data.client.post(
        "/fhir/Observation/_search?patient=355",
        content=(
            "code=http%3A%2F%2Floinc.org%7C8302-2%2Chttp%3A%2F%2Floinc.org%7C29463-7&_sort=date&_count=5"
        ),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert mixed.status_code == 200, mixed.text
    assert _ordered(data, mixed.json()) == want


def test_unknown_parameter_lenient_and_strict(data: World) -> None:
    r = data.fetch("Patient?name=bosco&no-such-param=1")
    assert r.status_code == 200, r.text
    bundle = r.json()
    matches = [e["resource"]["id"] for e in bundle["entry"] if e["search"]["mode"] == "match"]
    assert sorted(matches) == sorted(data.ids("Patient?name=bosco")) and matches
    outcomes = [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert len(outcomes) == 1 and outcomes[0]["resource"]["resourceType"] == "OperationOutcome"
    assert "no-such-param" in str(outcomes[0]["resource"])
    assert "no-such-param" not in links(bundle)["self"]
    assert "name=bosco" in links(bundle)["self"]
    strict = data.fetch("Patient?name=bosco&no-such-param=1", headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400, strict.text
    assert strict.json()["resourceType"] == "OperationOutcome"
    assert "no-such-param" in strict.text
    ok = data.fetch("Patient?name=bosco", headers={"Prefer": "handling=strict"})
    assert ok.status_code == 200, ok.text
