"""The access policy: type-level checks, compartments, granular scopes, and the search conditions
that express the same rules to the storage planner (checked against ``allows`` on a real database)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import orjson
import pytest

from fhir_server.auth.policy import (
    NOTHING,
    AccessPolicy,
    Principal,
    permission_for,
)
from fhir_server.auth.scopes import parse_scopes
from fhir_server.errors import FhirError
from fhir_server.interactions.common import stamp
from fhir_server.search.extract import Indexer
from fhir_server.search.parse import parse_search
from fhir_server.search.query import AllOf, AnyOf, Condition, InCompartment, TokenValue, TypeIn
from fhir_server.storage.base import StoredResource, WriteRequest
from fhir_server.storage.sql.backend import SqlBackend
from tests.storage.conftest import pg_database

BASE = "http://fhir.example/r4"
OBS_CAT = "http://terminology.hl7.org/CodeSystem/observation-category"
COND_CAT = "http://terminology.hl7.org/CodeSystem/condition-category"
US_CORE_COND_CAT = "http://hl7.org/fhir/us/core/CodeSystem/condition-category"
VITALS = f"{OBS_CAT}|vital-signs"
LAB = f"{OBS_CAT}|laboratory"
PROBLEM = f"{COND_CAT}|problem-list-item"
DIAGNOSIS = f"{COND_CAT}|encounter-diagnosis"

Resource = dict[str, Any]


def policy(scopes: str, patient: str | None = "p1", fhir_user: str | None = None,
           subject: str | None = "alice") -> AccessPolicy:
    return AccessPolicy(Principal("app", subject, parse_scopes(scopes), patient, None, fhir_user), BASE)


def ref(target: str) -> dict[str, str]:
    return {"reference": target}


def obs(id: str, subject: str, category: str | None = "vital-signs", **extra: Any) -> Resource:
    r: Resource = {"resourceType": "Observation", "id": id, "status": "final",
                   "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                   "subject": ref(subject), **extra}
    if category is not None:
        r["category"] = [{"coding": [{"system": OBS_CAT, "code": category}]}]
    return r


def cond(id: str, subject: str, category: str, system: str = COND_CAT, **extra: Any) -> Resource:
    return {"resourceType": "Condition", "id": id, "subject": ref(subject),
            "category": [{"coding": [{"system": system, "code": category}]}],
            "code": {"text": "something"}, **extra}


def enc(id: str, subject: str) -> Resource:
    return {"resourceType": "Encounter", "id": id, "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": ref(subject)}


def patient(id: str, **extra: Any) -> Resource:
    return {"resourceType": "Patient", "id": id, **extra}


ORG: Resource = {"resourceType": "Organization", "id": "org1", "name": "Clinic"}
MED: Resource = {"resourceType": "Medication", "id": "med1",
                 "code": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "1"}]}}


# -- interactions and type-level checks --------------------------------------------------------


@pytest.mark.parametrize(
    ("interaction", "exists", "perm"),
    [("read", True, "r"), ("vread", True, "r"), ("history-instance", True, "r"), ("search-type", True, "s"),
     ("search-system", True, "s"), ("search-compartment", True, "s"), ("history-type", True, "s"),
     ("history-system", True, "s"), ("create", True, "c"), ("update", True, "u"), ("update", False, "c"),
     ("patch", True, "u"), ("delete", True, "d")],
)
def test_permission_for(interaction: str, exists: bool, perm: str) -> None:
    assert permission_for(interaction, exists=exists) == perm


def test_permission_for_unknown_interaction() -> None:
    with pytest.raises(ValueError):
        permission_for("transmogrify")


def test_can_by_type_and_permission() -> None:
    p = policy(f"patient/Observation.rs?category={VITALS} patient/Condition.read user/Encounter.cud system/*.d")
    assert p.can("r", "Observation") and p.can("s", "Observation")
    assert not p.can("c", "Observation")
    assert p.can("s", "Condition") and not p.can("u", "Condition")
    assert p.can("u", "Encounter") and not p.can("r", "Encounter")
    assert p.can("d", "Organization")
    assert not p.can("r", "Organization")


def test_require_names_a_scope_that_would_do() -> None:
    p = policy("patient/Observation.rs")
    p.require("r", "Observation")
    with pytest.raises(FhirError) as err:
        p.require("r", "Condition")
    assert err.value.status == 403
    assert err.value.issues[0].code == "forbidden"
    assert "'r' on Condition" in str(err.value)
    assert "patient/Condition.rs" in str(err.value)
    with pytest.raises(FhirError, match=r"system/Condition\.c"):
        policy("system/Observation.cruds", patient=None, subject=None).require("c", "Condition")
    with pytest.raises(FhirError, match=r"user/Condition\.d"):
        policy("user/Observation.cruds", patient=None).require("d", "Condition")


def test_patient_scopes_grant_nothing_without_a_patient() -> None:
    p = policy("patient/*.cruds", patient=None)
    assert not p.can("r", "Observation")
    assert not p.allows("Organization", ORG)
    with pytest.raises(FhirError, match="without a patient in the launch context") as err:
        p.require("r", "Observation")
    assert err.value.status == 403


def test_unknown_permission_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        policy("patient/*.rs").can("x", "Observation")
    with pytest.raises(ValueError):
        policy("patient/*.rs").can("rs", "Observation")


# -- compartments ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        (obs("o1", "Patient/p1"), True),
        (obs("o2", "Patient/p2"), False),
        (obs("o3", "Patient/p2", performer=[ref("Patient/p1")]), True),  # performer is a compartment link
        (obs("o4", f"{BASE}/Patient/p1"), True),  # absolute reference to this server
        (obs("o7", "Patient/p2", focus=[ref("Patient/p1")]), False),  # focus is not a compartment link
        (obs("o5", "Group/g1"), False),
        ({"resourceType": "Observation", "id": "o6", "status": "final", "code": {"text": "x"}}, False),
        (enc("e1", "Patient/p1"), True),
        (enc("e2", "Patient/p2"), False),
        (cond("c1", "Patient/p1", "problem-list-item"), True),
        (cond("c2", "Patient/p2", "problem-list-item"), False),
        (cond("c3", "Patient/p2", "problem-list-item", asserter=ref("Patient/p1")), True),
        (patient("p1"), True),
        (patient("p2"), False),
        (patient("p3", link=[{"other": ref("Patient/p1"), "type": "seealso"}]), True),  # CompartmentDefinition
        ({"resourceType": "Patient", "name": [{"family": "New"}]}, False),  # no id yet
        (ORG, True),  # shared data
        (MED, True),
        ({"resourceType": "Practitioner", "id": "dr"}, True),
    ],
)
def test_patient_scope_and_compartment(resource: Resource, expected: bool) -> None:
    p = policy("patient/*.rs")
    assert p.allows(resource["resourceType"], resource) is expected
    assert p.allows(resource["resourceType"], resource, "s") is expected
    assert not p.allows(resource["resourceType"], resource, "u")


def test_patient_scope_on_one_type_only() -> None:
    p = policy("patient/Observation.rs patient/Medication.rs")
    assert p.allows("Observation", obs("o1", "Patient/p1"))
    assert not p.allows("Condition", cond("c1", "Patient/p1", "problem-list-item"))
    assert p.allows("Medication", MED)
    assert not p.allows("Organization", ORG)


def test_resource_type_must_match_the_body() -> None:
    assert not policy("patient/*.rs").allows("Encounter", obs("o1", "Patient/p1"))


def test_user_scopes() -> None:
    other = obs("o2", "Patient/p2")
    assert policy("user/*.rs", patient=None).allows("Observation", other)
    assert policy("user/*.rs", fhir_user="Practitioner/dr").allows("Observation", other)
    as_patient = policy("user/*.rs", patient=None, fhir_user="Patient/p1")
    assert not as_patient.allows("Observation", other)
    assert as_patient.allows("Observation", obs("o1", "Patient/p1"))
    assert as_patient.allows("Organization", ORG)
    absolute = policy("user/*.rs", patient=None, fhir_user=f"{BASE}/Patient/p1")
    assert not absolute.allows("Observation", other)
    assert absolute.allows("Observation", obs("o1", "Patient/p1"))


def test_user_patient_follows_fhir_user_not_launch_context() -> None:
    p = policy("user/Observation.rs", patient="p2", fhir_user="Patient/p1")
    assert p.allows("Observation", obs("o1", "Patient/p1"))
    assert not p.allows("Observation", obs("o2", "Patient/p2"))


def test_system_scopes_are_unrestricted() -> None:
    p = policy("system/*.cruds", patient=None, subject=None)
    for r in (obs("o2", "Patient/p2"), patient("p9"), ORG):
        assert p.allows(r["resourceType"], r, "d")
    assert p.search_condition("Observation") is None


def test_union_of_contexts() -> None:
    # A patient scope for p1 and a user scope as Patient/p2: either compartment.
    p = policy("patient/Observation.rs user/Observation.r", patient="p1", fhir_user="Patient/p2")
    assert p.allows("Observation", obs("o1", "Patient/p1"))
    assert p.allows("Observation", obs("o2", "Patient/p2"))
    assert not p.allows("Observation", obs("o3", "Patient/p3"))
    # Only the patient scope searches.
    assert p.allows("Observation", obs("o1", "Patient/p1"), "s")
    assert not p.allows("Observation", obs("o2", "Patient/p2"), "s")


# -- granular scopes ----------------------------------------------------------------------------


def test_granular_observation_category() -> None:
    p = policy(f"patient/Observation.rs?category={VITALS}")
    assert p.allows("Observation", obs("o1", "Patient/p1", "vital-signs"))
    assert not p.allows("Observation", obs("o2", "Patient/p1", "laboratory"))
    assert not p.allows("Observation", obs("o3", "Patient/p1", None))
    assert not p.allows("Observation", obs("o4", "Patient/p2", "vital-signs"))
    wrong_system = obs("o5", "Patient/p1", None)
    wrong_system["category"] = [{"coding": [{"system": "urn:other", "code": "vital-signs"}]}]
    assert not p.allows("Observation", wrong_system)
    both = obs("o6", "Patient/p1", "laboratory")
    both["category"].append({"coding": [{"system": OBS_CAT, "code": "vital-signs"}]})
    assert p.allows("Observation", both)


def test_granular_us_core_condition_categories_union() -> None:
    p = policy(f"patient/Condition.rs?category={PROBLEM} patient/Condition.rs?category={DIAGNOSIS}")
    assert p.allows("Condition", cond("c1", "Patient/p1", "problem-list-item"))
    assert p.allows("Condition", cond("c2", "Patient/p1", "encounter-diagnosis"))
    assert not p.allows("Condition", cond("c3", "Patient/p1", "health-concern", US_CORE_COND_CAT))
    assert not p.allows("Condition", cond("c4", "Patient/p2", "problem-list-item"))


def test_granular_token_forms() -> None:
    vital = obs("o1", "Patient/p1", "vital-signs")
    no_system = obs("o2", "Patient/p1", None)
    no_system["category"] = [{"coding": [{"code": "vital-signs"}]}]
    assert policy("patient/Observation.rs?category=vital-signs").allows("Observation", vital)
    assert policy("patient/Observation.rs?category=vital-signs").allows("Observation", no_system)
    assert not policy("patient/Observation.rs?category=%7Cvital-signs").allows("Observation", vital)
    assert policy("patient/Observation.rs?category=%7Cvital-signs").allows("Observation", no_system)
    assert policy(f"patient/Observation.rs?category={OBS_CAT}|").allows("Observation", vital)
    assert not policy(f"patient/Observation.rs?category={OBS_CAT}|").allows("Observation", no_system)
    assert policy(f"patient/Observation.rs?category=laboratory,{VITALS}").allows("Observation", vital)


def test_granular_codes_of_case_insensitive_systems() -> None:
    """Scope parameters match codes as searches do: LOINC (case-insensitive) in any case, other
    systems' codes exactly (search.html#token)."""
    lab = obs("o1", "Patient/p1", code={"coding": [{"system": "http://loinc.org", "code": "LP1234-5"}]})
    local = obs("o2", "Patient/p1", code={"coding": [{"system": "urn:local", "code": "LP1234-5"}]})
    for scope in ("code=http://loinc.org|lp1234-5", "code=lp1234-5", "code=Lp1234-5"):
        assert policy(f"patient/Observation.rs?{scope}").allows("Observation", lab), scope
        assert not policy(f"patient/Observation.rs?{scope}").allows("Observation", local), scope
    assert policy("patient/Observation.rs?code=urn:local|LP1234-5").allows("Observation", local)
    assert not policy("patient/Observation.rs?code=urn:local|lp1234-5").allows("Observation", local)


def test_granular_all_parameters_must_match() -> None:
    p = policy(f"patient/Observation.rs?category={VITALS}&status=final")
    assert p.allows("Observation", obs("o1", "Patient/p1", "vital-signs"))
    assert not p.allows("Observation", obs("o2", "Patient/p1", "vital-signs") | {"status": "amended"})


@pytest.mark.parametrize(
    "query",
    [
        "date=2020",  # a date parameter
        "subject=Patient/p1",  # a reference parameter
        "value-quantity=5",
        "category:not=laboratory",  # a modifier
        "category:text=vital",
        "_count=1",  # a result parameter: would otherwise drop the restriction
        "_sort=date",
        "_include=Observation:subject",
        "no-such-parameter=1",
        "subject.name=x",  # a chain
        "_has:Observation:subject:code=x",
        "code:of-type=a|b|c",
    ],
)
def test_unsupported_granular_queries_match_nothing(query: str) -> None:
    p = policy(f"patient/Observation.rs?{query}")
    assert p.can("s", "Observation")  # type level ignores the query
    assert not p.allows("Observation", obs("o1", "Patient/p1", "vital-signs", effectiveDateTime="2020-01-01"))
    assert p.search_condition("Observation") == NOTHING
    # Beside a usable scope it changes nothing.
    both = policy(f"patient/Observation.rs?{query} patient/Observation.rs?category={VITALS}")
    assert both.allows("Observation", obs("o1", "Patient/p1", "vital-signs"))
    assert not both.allows("Observation", obs("o2", "Patient/p1", "laboratory"))


def test_wildcard_granular_scope_applies_per_type() -> None:
    p = policy(f"patient/*.rs?category={VITALS}")
    assert p.allows("Observation", obs("o1", "Patient/p1", "vital-signs"))
    # Encounter and Organization have no category parameter: nothing matches.
    assert not p.allows("Encounter", enc("e1", "Patient/p1"))
    assert not p.allows("Organization", ORG)


def test_granular_shared_type() -> None:
    p = policy("patient/Medication.rs?code=http://www.nlm.nih.gov/research/umls/rxnorm|1")
    assert p.allows("Medication", MED)
    assert not p.allows("Medication", MED | {"code": {"text": "other"}})


# -- writes -------------------------------------------------------------------------------------


def test_writes_in_the_compartment() -> None:
    p = policy("patient/Observation.cu")
    mine, theirs = obs("o1", "Patient/p1"), obs("o2", "Patient/p2")
    assert p.allows("Observation", mine, "c")
    assert not p.allows("Observation", theirs, "c")
    assert not p.allows("Observation", mine, "r")
    p.require_resource("Observation", mine, "c")
    with pytest.raises(FhirError) as err:
        p.require_resource("Observation", theirs, "c")
    assert err.value.status == 403
    assert "Observation/o2" in str(err.value)
    p.require_update("Observation", mine, mine | {"status": "amended"})
    with pytest.raises(FhirError):
        p.require_update("Observation", mine, mine | {"subject": ref("Patient/p2")})  # moving it out
    with pytest.raises(FhirError):
        p.require_update("Observation", theirs, mine)  # taking over someone else's


def test_update_as_create_needs_c() -> None:
    mine = obs("o1", "Patient/p1")
    policy("patient/Observation.c").require_update("Observation", None, mine)
    with pytest.raises(FhirError, match="'c'"):
        policy("patient/Observation.u").require_update("Observation", None, mine)
    with pytest.raises(FhirError, match="'u'"):
        policy("patient/Observation.c").require_update("Observation", mine, mine)


def test_require_resource_checks_the_type_first() -> None:
    with pytest.raises(FhirError, match=r"patient/Condition\.d"):
        policy("patient/Observation.d").require_resource("Condition", cond("c1", "Patient/p1", "x"), "d")


def test_visible() -> None:
    p = policy("patient/Observation.rs")
    body = orjson.dumps(obs("o1", "Patient/p1"))
    assert p.visible(StoredResource("Observation", "o1", 1, "", 0, False, body))
    assert not p.visible(StoredResource("Observation", "o2", 1, "", 0, False, orjson.dumps(obs("o2", "Patient/p2"))))
    # A deleted version has no content: only an unrestricted type shows it.
    assert not p.visible(StoredResource("Observation", "o1", 2, "", 0, True, None))
    assert policy("patient/*.rs").visible(StoredResource("Organization", "org1", 2, "", 0, True, None))
    assert not p.visible(StoredResource("Condition", "c1", 1, "", 0, False, orjson.dumps(cond("c1", "Patient/p1", "x"))))


# -- search conditions (structure) --------------------------------------------------------------


def _obs_compartment(owner: str) -> InCompartment:
    return InCompartment("Patient", owner, (("Observation", "subject"), ("Observation", "performer")))


def _category(code: str, rt: str = "Observation", system: str = OBS_CAT) -> Condition:
    return Condition(rt, "category", "token", (TokenValue(system, code),))


def test_search_condition_structures() -> None:
    assert policy("system/*.rs", patient=None, subject=None).search_condition("Observation") is None
    assert policy("user/*.rs", patient=None).search_condition("Observation") is None
    assert policy("patient/*.rs").search_condition("Organization") is None  # shared
    assert policy("patient/*.rs").search_condition("Observation") == _obs_compartment("p1")
    assert policy("patient/*.rs").search_condition("Patient") == InCompartment("Patient", "p1", (("Patient", "link"),))
    granular = policy(f"patient/Observation.rs?category={VITALS}").search_condition("Observation")
    assert granular == AllOf((_obs_compartment("p1"), _category("vital-signs")))
    union = policy(f"patient/Observation.rs?category={VITALS} patient/Observation.rs?category={LAB}")
    assert union.search_condition("Observation") == AnyOf((
        AllOf((_obs_compartment("p1"), _category("vital-signs"))),
        AllOf((_obs_compartment("p1"), _category("laboratory"))),
    ))
    # An unrestricted scope in the union lifts every restriction.
    assert policy(f"patient/Observation.rs?category={VITALS} system/Observation.s").search_condition(
        "Observation") is None
    # Duplicated grants give one branch.
    assert policy("patient/Observation.rs patient/*.read").search_condition("Observation") == _obs_compartment("p1")
    two = policy("patient/Observation.rs user/Observation.rs", fhir_user="Patient/p2")
    assert two.search_condition("Observation") == AnyOf((_obs_compartment("p1"), _obs_compartment("p2")))
    user_granular = policy(f"user/Condition.rs?category={PROBLEM}", patient=None)
    assert user_granular.search_condition("Condition") == _category("problem-list-item", "Condition", COND_CAT)


def test_search_condition_needs_s() -> None:
    with pytest.raises(FhirError) as err:
        policy("patient/Observation.r").search_condition("Observation")
    assert err.value.status == 403
    with pytest.raises(FhirError):
        policy("patient/Observation.rs").search_condition("Condition")


def test_multi_type_condition() -> None:
    types = ["Observation", "Condition", "Organization", "Encounter", "Patient"]
    assert policy("system/*.rs", patient=None, subject=None).multi_type_condition(types) == (types, None)
    allowed, c = policy("patient/*.rs").multi_type_condition(types)
    assert allowed == types
    compartment = InCompartment("Patient", "p1", (
        ("Observation", "subject"), ("Observation", "performer"), ("Condition", "patient"),
        ("Condition", "asserter"), ("Encounter", "patient"), ("Patient", "link"),
    ))
    assert c == AnyOf((
        TypeIn(("Organization",)),
        AllOf((TypeIn(("Observation", "Condition", "Encounter", "Patient")), compartment)),
    ))
    allowed, c = policy(f"patient/Observation.rs?category={VITALS} patient/Encounter.r").multi_type_condition(types)
    assert allowed == ["Observation"]
    assert c == AllOf((TypeIn(("Observation",)), _obs_compartment("p1"), _category("vital-signs")))
    assert policy("patient/Encounter.r").multi_type_condition(types) == ([], NOTHING)
    # $everything: both r and s.
    allowed, c = policy("patient/Observation.rs patient/Condition.s patient/Organization.rs").multi_type_condition(
        types, permissions="rs")
    assert allowed == ["Observation", "Organization"]
    assert c == AnyOf((TypeIn(("Organization",)), AllOf((TypeIn(("Observation",)), _obs_compartment("p1")))))


def test_answers_are_cached() -> None:
    p = policy("patient/*.rs")
    assert p.search_condition("Observation") is p.search_condition("Observation")
    assert p.can("r", "Observation") and p.can("r", "Observation")


# -- the conditions on a real database agree with allows ------------------------------------------


def _resources() -> list[Resource]:
    out: list[Resource] = [patient("p1"), patient("p2"), patient("p3", link=[{"other": ref("Patient/p1"),
                                                                               "type": "seealso"}]), ORG, MED]
    for pid in ("p1", "p2"):
        out += [
            obs(f"{pid}-vitals", f"Patient/{pid}", "vital-signs"),
            obs(f"{pid}-lab", f"Patient/{pid}", "laboratory"),
            obs(f"{pid}-nocat", f"Patient/{pid}", None),
            cond(f"{pid}-problem", f"Patient/{pid}", "problem-list-item"),
            cond(f"{pid}-diagnosis", f"Patient/{pid}", "encounter-diagnosis"),
            cond(f"{pid}-concern", f"Patient/{pid}", "health-concern", US_CORE_COND_CAT),
            enc(f"{pid}-enc", f"Patient/{pid}"),
        ]
    out += [
        obs("p2-performed-by-p1", "Patient/p2", "vital-signs", performer=[ref("Patient/p1")]),
        obs("p1-absolute", f"{BASE}/Patient/p1", "laboratory"),
        obs("p2-about-p1", "Patient/p2", "vital-signs", focus=[ref("Patient/p1")]),
        cond("p2-asserted-by-p1", "Patient/p2", "problem-list-item", asserter=ref("Patient/p1")),
    ]
    return out


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def loaded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[SqlBackend, list[tuple[str, Resource]]]]:
    with ExitStack() as stack:
        if request.param == "sqlite":
            path: Path = tmp_path_factory.mktemp("auth")
            url = f"sqlite:///{path}/auth.db"
        else:
            url = stack.enter_context(pg_database())
        backend = SqlBackend(url, indexer=Indexer(BASE))
        stack.callback(backend.close)
        backend.start()
        stored: list[tuple[str, Resource]] = []
        for r in _resources():
            body = dict(r)
            rid = body.pop("id")
            s = backend.create(WriteRequest(r["resourceType"], body, id=rid), stamp).resource
            assert s.body is not None
            stored.append((s.resource_type, orjson.loads(s.body)))
        yield backend, stored


POLICIES: dict[str, dict[str, Any]] = {
    "patient-all": {"scopes": "patient/*.rs"},
    "patient-p2": {"scopes": "patient/*.rs", "patient": "p2"},
    "patient-granular": {"scopes": f"patient/Observation.rs?category={VITALS} patient/Condition.rs?category={PROBLEM}"
                                   " patient/Encounter.rs patient/Organization.rs"},
    "patient-granular-union": {"scopes": f"patient/Observation.rs?category={VITALS} "
                                         f"patient/Observation.rs?category={LAB} "
                                         f"patient/Condition.rs?category={PROBLEM} "
                                         f"patient/Condition.rs?category={DIAGNOSIS}"},
    "patient-wildcard-granular": {"scopes": f"patient/*.rs?category={VITALS}"},
    "patient-unsupported": {"scopes": "patient/Observation.rs?date=2020 patient/Condition.rs"},
    "user-as-patient": {"scopes": "user/*.rs", "patient": None, "fhir_user": "Patient/p2"},
    "user-granular": {"scopes": f"user/Observation.rs?category={LAB} user/Condition.rs", "patient": None,
                      "fhir_user": "Practitioner/dr"},
    "patient-and-user": {"scopes": "patient/Observation.rs user/Observation.rs?category=laboratory "
                                   "patient/Condition.rs", "fhir_user": "Patient/p2"},
    "system": {"scopes": "system/*.rs", "patient": None, "subject": None},
}

# What the main policies must let a search find, written out so that ``allows`` and the search
# conditions cannot agree on a wrong answer.
EXPECTED: dict[str, dict[str, set[str]]] = {
    "patient-all": {
        "Observation": {"p1-vitals", "p1-lab", "p1-nocat", "p2-performed-by-p1", "p1-absolute"},
        "Condition": {"p1-problem", "p1-diagnosis", "p1-concern", "p2-asserted-by-p1"},
        "Encounter": {"p1-enc"},
        "Patient": {"p1", "p3"},
        "Organization": {"org1"},
        "Medication": {"med1"},
    },
    "patient-granular": {
        "Observation": {"p1-vitals", "p2-performed-by-p1"},
        "Condition": {"p1-problem", "p2-asserted-by-p1"},
        "Encounter": {"p1-enc"},
        "Organization": {"org1"},
    },
    "patient-granular-union": {
        "Observation": {"p1-vitals", "p1-lab", "p2-performed-by-p1", "p1-absolute"},
        "Condition": {"p1-problem", "p1-diagnosis", "p2-asserted-by-p1"},
    },
    "patient-wildcard-granular": {
        "Observation": {"p1-vitals", "p2-performed-by-p1"},
        "Condition": set(), "Encounter": set(), "Patient": set(), "Organization": set(), "Medication": set(),
    },
    "patient-unsupported": {
        "Observation": set(),
        "Condition": {"p1-problem", "p1-diagnosis", "p1-concern", "p2-asserted-by-p1"},
    },
    "user-as-patient": {
        "Observation": {"p2-vitals", "p2-lab", "p2-nocat", "p2-performed-by-p1", "p2-about-p1"},
        "Patient": {"p2"},
        "Medication": {"med1"},
    },
    "user-granular": {
        "Observation": {"p1-lab", "p2-lab", "p1-absolute"},
        "Condition": {"p1-problem", "p1-diagnosis", "p1-concern", "p2-problem", "p2-diagnosis", "p2-concern",
                      "p2-asserted-by-p1"},
    },
    "patient-and-user": {
        "Observation": {"p1-vitals", "p1-lab", "p1-nocat", "p2-performed-by-p1", "p1-absolute", "p2-lab"},
    },
}

TYPES = ["Observation", "Condition", "Encounter", "Patient", "Organization", "Medication"]


def _search(backend: SqlBackend, types: list[str], extra: Any | None,
            params: list[tuple[str, str]] | None = None) -> set[tuple[str, str]]:
    query = parse_search(types, params or [], default_count=1000, max_count=1000, system=len(types) > 1,
                         base_url=BASE)
    if extra is not None:
        query.conditions = (*query.conditions, extra)
    page = backend.search(query)
    assert page.next_cursor is None
    return {(s.resource_type, s.id) for s in page.items}


def _make(spec: dict[str, Any]) -> AccessPolicy:
    return policy(spec["scopes"], patient=spec.get("patient", "p1"), fhir_user=spec.get("fhir_user"),
                  subject=spec.get("subject", "alice"))


@pytest.mark.parametrize("name", list(POLICIES))
def test_type_search_matches_allows(loaded: tuple[SqlBackend, list[tuple[str, Resource]]], name: str) -> None:
    backend, stored = loaded
    p = _make(POLICIES[name])
    for rt in TYPES:
        permitted = {r["id"] for t, r in stored if t == rt and p.allows(t, r, "s")}
        if not p.can("s", rt):
            assert not permitted
            with pytest.raises(FhirError):
                p.search_condition(rt)
            continue
        found = {rid for _, rid in _search(backend, [rt], p.search_condition(rt))}
        assert found == permitted, (name, rt, p.search_condition(rt))
        if rt in EXPECTED.get(name, {}):
            assert found == EXPECTED[name][rt], (name, rt)
    for rt, ids in EXPECTED.get(name, {}).items():
        if not ids:
            continue
        assert p.can("s", rt)


@pytest.mark.parametrize("name", list(POLICIES))
def test_system_search_matches_allows(loaded: tuple[SqlBackend, list[tuple[str, Resource]]], name: str) -> None:
    backend, stored = loaded
    p = _make(POLICIES[name])
    allowed, c = p.multi_type_condition(TYPES)
    permitted = {(t, r["id"]) for t, r in stored if t in TYPES and p.allows(t, r, "s")}
    assert {t for t, _ in permitted} <= set(allowed)
    found = _search(backend, allowed, c) if allowed else set()
    assert found == permitted
    expected = {(t, rid) for t, ids in EXPECTED.get(name, {}).items() for rid in ids}
    assert expected <= found


def test_policy_condition_ands_with_the_search(loaded: tuple[SqlBackend, list[tuple[str, Resource]]]) -> None:
    backend, _ = loaded
    p = _make(POLICIES["patient-granular"])
    c = p.search_condition("Observation")
    assert _search(backend, ["Observation"], c, [("category", "laboratory")]) == set()
    assert _search(backend, ["Observation"], c, [("subject", "Patient/p2")]) == {("Observation", "p2-performed-by-p1")}
    assert _search(backend, ["Observation"], c, [("category", "vital-signs"), ("subject", "Patient/p1")]) == {
        ("Observation", "p1-vitals")}


def test_nothing_matches_nothing(loaded: tuple[SqlBackend, list[tuple[str, Resource]]]) -> None:
    backend, _ = loaded
    assert _search(backend, ["Observation"], NOTHING) == set()
    assert _search(backend, TYPES, NOTHING) == set()
