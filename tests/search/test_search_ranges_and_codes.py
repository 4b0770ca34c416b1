"""Open-ended Ranges in number and quantity searches, and case-insensitive code systems in token
searches, on SQLite and PostgreSQL: the ids each search finds equal the ids the independent
matchers of ``expected.py`` compute over the resources created here.

- A Range without ``high`` extends to +infinity, one without ``low`` to -infinity (R4
  datatypes.html#Range); every prefix of search.html#prefix must see it so.  A Range with neither
  value has no value (``:missing=true``).
- search.html#token: codes of a case-insensitive code system (SNOMED CT, LOINC) match whatever
  their case; other systems' codes, codes without a system and Identifier values match exactly.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from decimal import Decimal
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fhir_server.app import create_app
from fhir_server.config import Settings
from tests.search import expected as x
from tests.search.loader import BASE, Resource, World, assert_search
from tests.storage.conftest import pg_database

UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
LOCAL = "urn:test:cs"
USAGE = "http://terminology.hl7.org/CodeSystem/usage-context-type"


def _risk(id: str, prediction: list[Resource]) -> Resource:
    res: Resource = {"resourceType": "RiskAssessment", "id": id, "status": "final",
                     "subject": {"reference": "Patient/rg-p"}}
    if prediction:
        res["prediction"] = prediction
    return res


def _years(value: float) -> Resource:
    return {"value": value, "unit": "a", "system": UCUM, "code": "a"}


def _condition(id: str, **onset: Resource) -> Resource:
    return {"resourceType": "Condition", "id": id, "subject": {"reference": "Patient/rg-p"}, **onset}


def _obs(id: str, *codings: Resource, **more: object) -> Resource:
    return {"resourceType": "Observation", "id": id, "status": "final",
            "code": {"coding": list(codings)}, **more}


RESOURCES: list[Resource] = [
    {"resourceType": "Patient", "id": "rg-p"},
    # RiskAssessment.prediction.probability[x]: decimal | Range (a number parameter)
    _risk("ra-dec", [{"probabilityDecimal": 0.4}]),
    _risk("ra-low-020", [{"probabilityRange": {"low": {"value": 0.2}}}]),
    _risk("ra-low-070", [{"probabilityRange": {"low": {"value": 0.7}}}]),
    _risk("ra-high-060", [{"probabilityRange": {"high": {"value": 0.6}}}]),
    _risk("ra-high-010", [{"probabilityRange": {"high": {"value": 0.1}}}]),
    _risk("ra-both", [{"probabilityRange": {"low": {"value": 0.3}, "high": {"value": 0.5}}}]),
    _risk("ra-point", [{"probabilityRange": {"low": {"value": 0.45}, "high": {"value": 0.45}}}]),
    _risk("ra-empty", [{"probabilityRange": {"low": {"unit": "%"}}}]),
    _risk("ra-none", []),
    # Condition.onset[x] as Age | Range (the quantity parameter onset-age)
    _condition("c-age-45", onsetAge=_years(45)),
    _condition("c-low-40", onsetRange={"low": _years(40)}),
    _condition("c-high-30", onsetRange={"high": _years(30)}),
    _condition("c-both", onsetRange={"low": _years(20), "high": _years(60)}),
    _condition("c-months", onsetRange={"low": {"value": 6, "unit": "mo", "system": UCUM, "code": "mo"}}),
    _condition("c-none"),
    # useContext.valueRange: context-quantity, and the composite context-type-quantity
    {"resourceType": "ValueSet", "id": "vs-adults", "status": "active", "url": "http://example.org/vs/adults",
     "useContext": [{"code": {"system": USAGE, "code": "age"}, "valueRange": {"low": _years(18)}}]},
    {"resourceType": "ValueSet", "id": "vs-children", "status": "active", "url": "http://example.org/vs/children",
     "useContext": [{"code": {"system": USAGE, "code": "age"}, "valueRange": {"high": _years(17)}}]},
    # Tokens.  SNOMED CT and LOINC codes are digits in practice; letters make the case visible.
    _obs("o-loinc-up", {"system": LOINC, "code": "LA6576-8"},
         valueQuantity={"value": 5, "unit": "mg", "system": UCUM, "code": "mg"}),
    _obs("o-loinc-low", {"system": LOINC, "code": "la6576-8"}),
    _obs("o-local-up", {"system": LOCAL, "code": "LA6576-8"}),
    _obs("o-local-low", {"system": LOCAL, "code": "la6576-8"}),
    _obs("o-nosys", {"code": "LA6576-8"}),
    _obs("o-snomed", {"system": SNOMED, "code": "AbC123"}),
    _obs("o-ident", {"system": LOINC, "code": "1234-5"}, identifier=[{"system": "urn:test:id", "value": "AbC-1"}]),
]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """An empty server holding only RESOURCES (no shared data needed)."""
    with ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{Path(tmp_path_factory.mktemp('ranges'))}/r.db"
        else:
            url = stack.enter_context(pg_database())
        app = create_app(Settings(database_url=url, base_url=BASE))
        client = stack.enter_context(TestClient(app, raise_server_exceptions=False))
        w = World(client, request.param)
        for res in RESOURCES:
            w.put(copy.deepcopy(res))
        yield w


Pred = Callable[[Resource], bool]


def _probability(q: str) -> Pred:
    return lambda r: (x.number_match(x.values(r, "prediction.probabilityDecimal"), q)
                      or x.number_range_match(x.values(r, "prediction.probabilityRange"), q))


def _onset_age(q: str) -> Pred:
    return lambda r: (x.quantity_match(x.values(r, "onsetAge"), q)
                      or x.quantity_range_match(x.values(r, "onsetRange"), q))


def _code(q: str) -> Pred:
    """``code=a,b``: any of the comma-separated values."""
    return lambda r: any(x.token_match(x.values(r, "code"), one) for one in q.split(","))


def _has_value(*paths: str) -> Pred:
    def pred(r: Resource) -> bool:
        return any(x.range_ends(v) is not None if "Range" in p else True for p in paths for v in x.values(r, p))
    return pred


PROBABILITY = ["eq0.4", "0.45", "ne0.4", "gt0.55", "lt0.25", "ge0.6", "le0.2", "sa0.25", "eb0.55", "ap0.4",
               "gt0.8", "lt0.05"]
ONSET_AGE = [f"ge50|{UCUM}|a", f"lt25|{UCUM}|a", "gt100", "eb35||a", f"sa41|{UCUM}|a", f"45|{UCUM}|a",
             f"ap45|{UCUM}|a", f"ne45|{UCUM}|a", f"le30|{UCUM}|a", "gt1||mo"]

CASES: list[tuple[str, Pred]] = [
    *[(f"RiskAssessment?probability={q}", _probability(q)) for q in PROBABILITY],
    ("RiskAssessment?probability=gt0.55&probability=lt0.25",
     lambda r: _probability("gt0.55")(r) and _probability("lt0.25")(r)),
    ("RiskAssessment?probability:missing=true",
     lambda r: not _has_value("prediction.probabilityDecimal", "prediction.probabilityRange")(r)),
    ("RiskAssessment?probability:missing=false",
     _has_value("prediction.probabilityDecimal", "prediction.probabilityRange")),
    *[(f"Condition?onset-age={q}", _onset_age(q)) for q in ONSET_AGE],
    ("Condition?onset-age:missing=true", lambda r: not _has_value("onsetAge", "onsetRange")(r)),
    ("ValueSet?context-quantity=gt100", lambda r: x.quantity_range_match(x.values(r, "useContext.valueRange"), "gt100")),
    ("ValueSet?context-quantity=lt5", lambda r: x.quantity_range_match(x.values(r, "useContext.valueRange"), "lt5")),
    (f"ValueSet?context-type-quantity={USAGE}|age$gt70|{UCUM}|a",
     lambda r: any(x.token_match([c["code"]], f"{USAGE}|age")
                   and x.quantity_range_match([c.get("valueRange")], f"gt70|{UCUM}|a")
                   for c in r.get("useContext", []))),
    # tokens
    *[(f"Observation?code={q}", _code(q)) for q in (
        f"{LOINC}|la6576-8", f"{LOINC}|LA6576-8", f"{LOINC}|La6576-8", f"{LOCAL}|la6576-8",
        f"{LOCAL}|LA6576-8", "la6576-8", "LA6576-8", "|LA6576-8", f"{SNOMED}|abc123", "ABC123",
        f"abc123,{LOINC}|LA6576-8",
    )],
    (f"Observation?code:not={LOINC}|la6576-8", lambda r: not x.token_match(x.values(r, "code"), f"{LOINC}|la6576-8")),
    (f"Observation?code-value-quantity={LOINC}|la6576-8$gt1",
     lambda r: x.token_match(x.values(r, "code"), f"{LOINC}|la6576-8")
     and x.quantity_match(x.values(r, "valueQuantity"), "gt1")),
    ("Observation?identifier=urn:test:id|AbC-1", lambda r: x.token_match(x.values(r, "identifier"), "urn:test:id|AbC-1")),
]

# Searches that must find nothing: the exact-only cases.
EMPTY: list[tuple[str, Pred]] = [
    ("Observation?code=|la6576-8", lambda r: x.token_match(x.values(r, "code"), "|la6576-8")),
    (f"Observation?code={LOCAL}|La6576-8", lambda r: x.token_match(x.values(r, "code"), f"{LOCAL}|La6576-8")),
    ("Observation?identifier=urn:test:id|abc-1", lambda r: x.token_match(x.values(r, "identifier"), "urn:test:id|abc-1")),
    ("Observation?identifier=ABC-1", lambda r: x.token_match(x.values(r, "identifier"), "ABC-1")),
]


@pytest.mark.parametrize("url,pred", CASES, ids=[c[0] for c in CASES])
def test_search_matches_the_independent_matcher(world: World, url: str, pred: Pred) -> None:
    want = assert_search(world, url, pred)
    # Discriminating: a search that found every resource of its type would prove little.
    assert want != world.ids_where(url.split("?")[0], lambda r: True), url


@pytest.mark.parametrize("url,pred", EMPTY, ids=[c[0] for c in EMPTY])
def test_exact_only_searches_find_nothing(world: World, url: str, pred: Pred) -> None:
    assert_search(world, url, pred, nonempty=False)
    assert not world.ids(url)


def test_open_ranges_match_every_prefix_they_extend_into(world: World) -> None:
    """Spelled out for one Range per side, independently of the matchers above."""
    low_only, high_only = "ra-low-020", "ra-high-060"  # [0.2, +inf) and (-inf, 0.6]
    for q, lo_hit, hi_hit in [
        ("gt100", True, False), ("ge0.2", True, True), ("lt-100", False, True), ("le0.6", True, True),
        ("sa0.1", True, False), ("eb0.7", False, True), ("ap1000", True, False), ("ap-1000", False, True),
        ("eq0.2", False, False), ("ne0.2", True, True), ("lt0.2", False, True), ("gt0.6", True, False),
    ]:
        found = world.ids(f"RiskAssessment?probability={q}")
        assert (low_only in found, high_only in found) == (lo_hit, hi_hit), (world.name, q, sorted(found))


def test_summary_count_agrees_for_case_insensitive_codes(world: World) -> None:
    for q in ("la6576-8", f"{LOINC}|LA6576-8", f"{SNOMED}|ABC123"):
        want = len(world.ids_where("Observation", lambda r, q=q: x.token_match(x.values(r, "code"), q)))
        r = world.fetch(f"Observation?code={q}&_summary=count", count=None)
        assert r.status_code == 200 and r.json()["total"] == want, (world.name, q, r.text[:300])


def _sort_key(r: Resource, descending: bool) -> Decimal | None:
    """The lowest value a resource has (ascending) or its highest (descending); an open end is
    -inf / +inf.  None: no value."""
    ends: list[tuple[Decimal | None, Decimal | None]] = [
        (Decimal(str(v)), Decimal(str(v))) for v in x.values(r, "prediction.probabilityDecimal")
    ]
    ends += [e for v in x.values(r, "prediction.probabilityRange") if (e := x.range_ends(v)) is not None]
    if not ends:
        return None
    inf = Decimal("Infinity")
    if descending:
        return max(inf if hi is None else hi for _, hi in ends)
    return min(-inf if lo is None else lo for lo, _ in ends)


@pytest.mark.parametrize("descending", [False, True])
def test_sort_puts_open_ends_first_and_pages_through_them(world: World, descending: bool) -> None:
    url = f"RiskAssessment?_sort={'-' if descending else ''}probability,_id"
    got = world.search(url, count=3).ordered_ids  # several pages: cursors carry the open ends
    keyed = [(r["id"], _sort_key(r, descending)) for r in world.all("RiskAssessment")]
    with_value = sorted((i, k) for i, k in keyed if k is not None)
    with_value.sort(key=lambda ik: ik[1], reverse=descending)  # stable: ties stay in _id order
    want = [i for i, _ in with_value] + sorted(i for i, k in keyed if k is None)
    assert got == want, world.name
