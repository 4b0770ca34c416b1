"""Patient/[id]/$everything and Encounter/[id]/$everything (R4 patient-operation-everything.html,
encounter-operation-everything.html), tested as a black box over HTTP.

The expected results are computed here, independently of the server:

* compartment membership comes from the R4 CompartmentDefinitions (``patient``, ``encounter``):
  taken from an hl7.fhir.r4.core package in ``../shared/fhir-packages`` when one holds them, else
  from the CompartmentDefinition extract in ``fhir_server/model/r4_facts.json`` (data, not code);
* the parameters' FHIRPath expressions come from the R4 ``search-parameters.json`` in
  ``../shared/fhir-packages/hl7.fhir.r4.core-4.0.1`` and are evaluated by the tiny evaluator below
  (simple paths, unions ``a | b`` and ``.where(resolve() is T)``);
* care dates (``start``/``end``) use the R4 ``date`` search parameter of each type and the
  range-overlap semantics of date search (search.html#date).

Tests that need ``../shared`` skip with a message when it is absent; the hand-made ones always run.
"""

from __future__ import annotations

import functools
import json
import re
import tarfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from tests.http.conftest import (
    BASE,
    FHIR_NS,
    JSON_CT,
    SHARED,
    SYNTHEA_SMALL,
    XML_CT,
    assert_outcome,
    bundle_links,
    create,
    local,
    patient,
    put,
    walk_pages,
)

Key = tuple[str, str]  # (resourceType, id)

NS = "{" + FHIR_NS + "}"
FHIR_PACKAGES = SHARED / "fhir-packages"
R4_SEARCH_PARAMETERS = FHIR_PACKAGES / "hl7.fhir.r4.core-4.0.1" / "search-parameters.json"
FACTS = Path(__file__).resolve().parents[2] / "fhir_server" / "model" / "r4_facts.json"


# -- the R4 definitions ----------------------------------------------------------------------------


def _compartment_from_resource(cd: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    return {r["code"]: tuple(r["param"]) for r in cd.get("resource", []) if r.get("param")}


@functools.cache
def compartment_definition(code: str) -> tuple[dict[str, tuple[str, ...]], str]:
    """(resource type -> compartment parameters, where it came from) for the R4 compartment ``code``.

    Preferred: CompartmentDefinition-<code>.json of an hl7.fhir.r4.core package (folder or .tgz) in
    ../shared/fhir-packages; otherwise the CompartmentDefinition extract of r4_facts.json."""
    name = f"CompartmentDefinition-{code.lower()}.json"
    if FHIR_PACKAGES.is_dir():
        for pkg in sorted(FHIR_PACKAGES.glob("hl7.fhir.r4.core*")):
            if pkg.is_dir():
                for candidate in (pkg / name, pkg / "package" / name):
                    if candidate.is_file():
                        return _compartment_from_resource(json.loads(candidate.read_bytes())), str(candidate)
            elif pkg.name.endswith((".tgz", ".tar.gz")):
                with tarfile.open(pkg) as t:
                    try:
                        member = t.getmember(f"package/{name}")
                    except KeyError:
                        continue
                    data = t.extractfile(member)
                    assert data is not None
                    return _compartment_from_resource(json.load(data)), f"{pkg}!package/{name}"
    facts = json.loads(FACTS.read_bytes())["compartments"][code]
    return {rt: tuple(params) for rt, params in facts.items()}, f"{FACTS} (compartments.{code})"


@functools.cache
def _search_parameters() -> dict[tuple[str, str], tuple[str, str]] | None:
    if not R4_SEARCH_PARAMETERS.is_file():
        return None
    out: dict[tuple[str, str], tuple[str, str]] = {}
    for entry in json.loads(R4_SEARCH_PARAMETERS.read_bytes())["entry"]:
        sp = entry["resource"]
        for base in sp.get("base", []):
            out[(base, sp["code"])] = (sp["type"], sp.get("expression") or "")
    return out


def search_parameters() -> dict[tuple[str, str], tuple[str, str]]:
    """(base type, code) -> (param type, FHIRPath expression) of the R4 base search parameters."""
    sps = _search_parameters()
    if sps is None:
        pytest.skip(f"R4 search-parameters.json not present at {R4_SEARCH_PARAMETERS} (optional ../shared folder)")
    return sps


# -- a tiny evaluator for the simple FHIRPath expressions of reference and date parameters --------


class Unsupported(Exception):
    """An expression (part) the evaluator below does not handle."""


_PATH = re.compile(
    r"(?P<root>[A-Z][A-Za-z]*)(?P<path>(?:\.[a-z][A-Za-z]*)+)(?:\.where\(resolve\(\) is (?P<is>[A-Z][A-Za-z]*)\))?"
)
Compiled = list[tuple[tuple[str, ...], str | None]]  # (path below the root, resolve() is T filter)


def compile_expression(expression: str, base: str) -> Compiled:
    """The union members of ``expression`` that apply to ``base``; Unsupported for those it cannot read."""
    out: Compiled = []
    for part in (p.strip() for p in expression.split("|")):
        m = _PATH.fullmatch(part)
        if m is None:
            root = re.match(r"\(?([A-Z][A-Za-z]*)\.", part)
            if root is not None and root[1] != base:
                continue  # a member for another base type
            raise Unsupported(f"{base}: {part!r}")
        if m["root"] == base:
            out.append((tuple(m["path"][1:].split(".")), m["is"]))
    return out


def navigate(resource: dict[str, Any], path: Iterable[str]) -> list[Any]:
    """All values at ``path``; a name that is not present matches a choice element (name + Type)."""
    nodes: list[Any] = [resource]
    for name in path:
        nxt: list[Any] = []
        for node in nodes:
            if not isinstance(node, dict):
                continue
            if name in node:
                values = [node[name]]
            else:
                values = [v for k, v in node.items() if k.startswith(name) and k[len(name):][:1].isupper()]
            for v in values:
                nxt.extend(v if isinstance(v, list) else [v])
        nodes = nxt
    return nodes


_REF = re.compile(r"(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?")


def ref_target(reference: str) -> Key | None:
    """The local resource a literal reference points at (relative, or absolute on this server)."""
    if reference.startswith(BASE + "/"):
        reference = reference[len(BASE) + 1:]
    m = _REF.fullmatch(reference)
    return (m["type"], m["id"]) if m else None


class Compartment:
    """Membership in the compartment of one owner per the R4 CompartmentDefinition ``code``."""

    def __init__(self, code: str) -> None:
        self.code = code
        self.definition, self.source = compartment_definition(code)
        sps = search_parameters()
        self.paths: dict[str, Compiled] = {}
        self.unsupported: dict[str, list[str]] = {}
        for rt, params in self.definition.items():
            for param in params:
                if param == "{def}":
                    continue  # the owner itself
                found = sps.get((rt, param))
                if found is None or found[0] != "reference":
                    self.unsupported.setdefault(rt, []).append(f"{param}: no R4 reference parameter")
                    continue
                try:
                    self.paths.setdefault(rt, []).extend(compile_expression(found[1], rt))
                except Unsupported as exc:
                    self.unsupported.setdefault(rt, []).append(f"{param}: {exc}")

    def members(self, owner: Key, stored: dict[Key, dict[str, Any]]) -> set[Key]:
        """The owner and every stored resource that references it through a compartment parameter."""
        out = {owner}
        for key, resource in stored.items():
            rt = key[0]
            # Parameters the evaluator cannot read are acceptable only when no such resource exists.
            assert rt not in self.unsupported, (key, self.unsupported[rt])
            for path, is_type in self.paths.get(rt, ()):
                for node in navigate(resource, path):
                    if not (isinstance(node, dict) and isinstance(node.get("reference"), str)):
                        continue
                    if ref_target(node["reference"]) == owner and is_type in (None, owner[0]):
                        out.add(key)
        return out


# -- dates ------------------------------------------------------------------------------------------

_DATE = re.compile(
    r"(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d+))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?"
)
INF = float("inf")


def date_range(value: str) -> tuple[float, float] | None:
    """The half-open [lo, hi) UTC range (epoch ms) a date/dateTime/instant stands for; no zone = UTC."""
    m = _DATE.fullmatch(value)
    if m is None:
        return None
    y = int(m["y"])
    if m["m"] is None:
        lo, hi = datetime(y, 1, 1, tzinfo=UTC), datetime(y + 1, 1, 1, tzinfo=UTC)
    elif m["d"] is None:
        mo = int(m["m"])
        lo = datetime(y, mo, 1, tzinfo=UTC)
        hi = datetime(y + mo // 12, mo % 12 + 1, 1, tzinfo=UTC)
    elif m["H"] is None:
        lo = datetime(y, int(m["m"]), int(m["d"]), tzinfo=UTC)
        hi = lo + timedelta(days=1)
    else:
        tz: timezone = UTC
        if m["tz"] and m["tz"] != "Z":
            sign = 1 if m["tz"][0] == "+" else -1
            tz = timezone(sign * timedelta(hours=int(m["tz"][1:3]), minutes=int(m["tz"][4:6])))
        frac = m["f"] or ""
        lo = datetime(y, int(m["m"]), int(m["d"]), int(m["H"]), int(m["M"]), int(m["S"] or 0),
                      int((frac + "000000")[:6]), tzinfo=tz)
        step = (timedelta(minutes=1) if m["S"] is None else timedelta(seconds=1) if not frac
                else timedelta(microseconds=10 ** (6 - min(len(frac), 6))))
        hi = lo + step
    return lo.timestamp() * 1000, hi.timestamp() * 1000


def value_ranges(value: Any) -> list[tuple[float, float]]:
    """The ranges of one date-typed value: a date/dateTime/instant, a Period or a Timing's events."""
    if isinstance(value, str):
        r = date_range(value)
        return [r] if r else []
    if isinstance(value, dict):
        if "start" in value or "end" in value:  # Period; a missing end is ongoing
            start = date_range(value["start"]) if "start" in value else None
            end = date_range(value["end"]) if "end" in value else None
            return [(start[0] if start else -INF, end[1] if end else INF)]
        if "event" in value:  # Timing
            return [r for e in value["event"] if (r := date_range(e))]
    return []


class CareDates:
    """The R4 ``date`` search parameter per type, and the start/end filter of $everything."""

    def __init__(self) -> None:
        self.paths: dict[str, Compiled] = {}
        self.unsupported: dict[str, str] = {}
        for (base, code), (kind, expression) in search_parameters().items():
            if code != "date" or kind != "date":
                continue
            try:
                self.paths[base] = compile_expression(expression, base)
            except Unsupported as exc:
                self.unsupported[base] = str(exc)

    def dated(self, rt: str) -> bool:
        return rt in self.paths or rt in self.unsupported

    def keep(self, key: Key, resource: dict[str, Any], start: str | None, end: str | None) -> bool:
        """In the care period: types without a date parameter always; others when their date
        overlaps (each bound as a date search: ``ge start`` and ``le end``)."""
        rt = key[0]
        if not self.dated(rt):
            return True
        assert rt not in self.unsupported, (key, self.unsupported[rt])
        ranges = [r for path, _ in self.paths[rt] for v in navigate(resource, path) for r in value_ranges(v)]
        ok = True
        if start is not None:
            start_r = date_range(start)
            assert start_r is not None
            ok = ok and any(hi > start_r[0] for _, hi in ranges)
        if end is not None:
            end_r = date_range(end)
            assert end_r is not None
            ok = ok and any(lo < end_r[1] for lo, _ in ranges)
        return ok


# -- HTTP helpers -------------------------------------------------------------------------------------


def key_of(resource: dict[str, Any]) -> Key:
    return resource["resourceType"], resource["id"]


def ref(key: Key) -> dict[str, str]:
    return {"reference": f"{key[0]}/{key[1]}"}


def everything(client: Any, owner: Key, params: Iterable[tuple[str, str]] = (), count: int = 50,
               ) -> dict[Key, dict[str, Any]]:
    """All resources of ``owner``/$everything over all pages, checking the searchset and the paging:
    same total on every page, at most ``count`` entries a page, no duplicates, total == what came."""
    query = [("_count", str(count)), *params]
    r = client.get(f"/fhir/{owner[0]}/{owner[1]}/$everything", params=query)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith(JSON_CT), r.headers["content-type"]
    first = r.json()
    pages = walk_pages(client, first)
    found: dict[Key, dict[str, Any]] = {}
    for page in pages:
        assert page["resourceType"] == "Bundle", page
        assert page["type"] == "searchset", page["type"]
        assert page.get("total") == first.get("total"), (page.get("total"), first.get("total"))
        self_url = bundle_links(page)["self"]
        assert f"/{owner[0]}/{owner[1]}/$everything" in self_url, self_url
        entries = page.get("entry", [])
        assert len(entries) <= count, len(entries)
        for e in entries:
            res = e["resource"]
            key = key_of(res)
            assert key not in found, f"{key} came twice"
            assert e["fullUrl"] == f"{BASE}/{key[0]}/{key[1]}", e["fullUrl"]
            assert e.get("search", {}).get("mode", "match") == "match", e.get("search")
            found[key] = res
    assert isinstance(first.get("total"), int), first.get("total")
    assert first["total"] == len(found), (first["total"], len(found))
    return found


def stored_resources(client: Any) -> dict[Key, dict[str, Any]]:
    """Every current (not deleted) resource of the server, by a system-level search over all pages."""
    r = client.get("/fhir", params={"_count": "1000"})
    assert r.status_code == 200, r.text
    out: dict[Key, dict[str, Any]] = {}
    for page in walk_pages(client, r.json()):
        for e in page.get("entry", []):
            key = key_of(e["resource"])
            assert key not in out, key
            out[key] = e["resource"]
    return out


def post_transaction(client: Any, bundle: dict[str, Any]) -> dict[str, Key]:
    """POST a transaction; returns the original fullUrl of each entry -> its new (type, id)."""
    r = client.post("/fhir", json=bundle)
    assert r.status_code == 200, r.text[:2000]
    body = r.json()
    assert body["type"] == "transaction-response", body["type"]
    assert len(body["entry"]) == len(bundle["entry"])
    out: dict[str, Key] = {}
    for sent, got in zip(bundle["entry"], body["entry"], strict=True):
        assert got["response"]["status"].startswith("201"), got["response"]
        rtype, rid = got["response"]["location"].split("/")[:2]
        assert rtype == sent["resource"]["resourceType"], got["response"]
        out[sent.get("fullUrl", str(len(out)))] = (rtype, rid)
    return out


def entry(resource: dict[str, Any], full_url: str) -> dict[str, Any]:
    return {"fullUrl": full_url, "resource": resource, "request": {"method": "POST", "url": resource["resourceType"]}}


def obs(subject: Key | dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    if subject is not None:
        out["subject"] = subject if isinstance(subject, dict) else ref(subject)
    return {**out, **extra}


def condition(subject: Key, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Condition", "subject": ref(subject), "code": {"text": "c"}, **extra}


def encounter(subject: Key | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "Encounter", "status": "finished",
                           "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}}
    if subject is not None:
        out["subject"] = ref(subject)
    return {**out, **extra}


def new(client: Any, resource: dict[str, Any]) -> Key:
    return key_of(create(client, resource))


# -- Synthea -------------------------------------------------------------------------------------------


def smallest_synthea_patient_bundles(n: int) -> list[dict[str, Any]]:
    if not SYNTHEA_SMALL.is_dir():
        pytest.skip(f"Synthea test data not present at {SYNTHEA_SMALL} (optional ../shared folder)")
    out = []
    for path in sorted(SYNTHEA_SMALL.glob("*.json"), key=lambda p: p.stat().st_size):
        data = json.loads(path.read_bytes())
        if any(e.get("resource", {}).get("resourceType") == "Patient" for e in data.get("entry", [])):
            out.append(data)
            if len(out) == n:
                return out
    pytest.skip(f"fewer than {n} patient bundles in {SYNTHEA_SMALL}")


@dataclass
class Synthea:
    patients: list[Key]
    stored: dict[Key, dict[str, Any]]


@pytest.fixture
def synthea(client) -> Synthea:  # noqa: ANN001
    """The two smallest Synthea patient bundles, loaded by transaction (their own Organizations and
    Practitioners come along; references to anything else may dangle)."""
    bundles = smallest_synthea_patient_bundles(2)
    patients = []
    for b in bundles:
        ids = post_transaction(client, b)
        (p,) = [k for k in ids.values() if k[0] == "Patient"]
        patients.append(p)
    stored = stored_resources(client)
    # The system search is the server's too: check it against what was sent.
    assert len(stored) == sum(len(b["entry"]) for b in bundles)
    return Synthea(patients, stored)


# -- 1. Patient/$everything == the R4 patient compartment (Synthea) ----------------------------------


def test_compartment_definitions_look_like_r4() -> None:
    """A few memberships read off hl7.org/fhir/R4/compartmentdefinition-{patient,encounter}.html, so a
    broken definition source cannot make the computed expectations vacuous."""
    pat, _ = compartment_definition("Patient")
    assert set(pat["Observation"]) == {"subject", "performer"}
    assert set(pat["Encounter"]) == {"patient"}
    assert set(pat["Claim"]) == {"patient", "payee"}
    assert set(pat["CareTeam"]) == {"patient", "participant"}
    assert set(pat["Patient"]) == {"link"}
    for not_member in ("Organization", "Practitioner", "Device", "Medication", "Location"):
        assert not_member not in pat, not_member
    enc, _ = compartment_definition("Encounter")
    assert set(enc["Encounter"]) == {"{def}"}
    assert set(enc["Observation"]) == {"encounter"}
    assert set(enc["Claim"]) == {"encounter"}
    assert "Immunization" not in enc and "Patient" not in enc


def test_patient_everything_is_the_patient_compartment(client, synthea) -> None:  # noqa: ANN001
    comp = Compartment("Patient")
    expected_all = {p: comp.members(p, synthea.stored) for p in synthea.patients}
    a, b = synthea.patients
    # The evaluator found real content: the usual Synthea types, not the shared directory resources.
    types_a = {k[0] for k in expected_all[a]}
    assert {"Patient", "Observation", "Encounter", "Claim", "ExplanationOfBenefit", "Immunization"} <= types_a, types_a
    assert not types_a & {"Organization", "Practitioner"}
    assert any(k[0] in ("Organization", "Practitioner") for k in synthea.stored)
    assert not expected_all[a] & expected_all[b]
    for p in synthea.patients:
        found = everything(client, p, count=50)
        assert set(found) == expected_all[p], (
            f"{comp.source}: missing {sorted(expected_all[p] - set(found))[:10]}, "
            f"extra {sorted(set(found) - expected_all[p])[:10]}")
        other = b if p == a else a
        for key, res in found.items():
            assert f"Patient/{other[1]}" not in json.dumps(res), f"{key} of the other patient"
            assert res == synthea.stored[key], key  # the current version, unchanged


def test_patient_everything_paging_with_small_pages(client, synthea) -> None:  # noqa: ANN001
    a = synthea.patients[1]
    big = everything(client, a, count=1000)
    assert len(big) > 50
    for count in (7, 50):
        assert set(everything(client, a, count=count)) == set(big), count


# -- 2. Encounter/$everything == the R4 encounter compartment (Synthea) ------------------------------


def test_encounter_everything_is_the_encounter_compartment(client, synthea) -> None:  # noqa: ANN001
    comp = Compartment("Encounter")
    encounters = [k for k in synthea.stored if k[0] == "Encounter"]
    assert encounters
    richest: set[Key] = set()
    for enc in encounters:
        expected = comp.members(enc, synthea.stored)
        found = everything(client, enc, count=50)
        assert set(found) == expected, (
            f"{enc} ({comp.source}): missing {sorted(expected - set(found))[:10]}, "
            f"extra {sorted(set(found) - expected)[:10]}")
        richest = max(richest, expected, key=len)
    # Claim/ExplanationOfBenefit (item.encounter) and Observation (encounter) were really exercised.
    assert {"Encounter", "Observation", "Claim", "ExplanationOfBenefit"} <= {k[0] for k in richest}


# -- care dates on Synthea ---------------------------------------------------------------------------


@pytest.mark.parametrize(("start", "end"), [
    ("2014-01-01", "2017-12-31"),
    ("2016-05-20T23:03:08Z", None),  # exactly an encounter time (19:03:08-04:00): ge keeps it
    (None, "2013"),
])
def test_patient_everything_start_end_on_synthea(client, synthea, start, end) -> None:  # noqa: ANN001
    comp = Compartment("Patient")
    care = CareDates()
    p = synthea.patients[1]
    members = comp.members(p, synthea.stored)
    expected = {k for k in members if care.keep(k, synthea.stored[k], start, end)}
    assert members - expected, "the range filters nothing: a vacuous test"
    assert any(care.dated(k[0]) for k in expected), "no dated resource in range: a vacuous test"
    params = [(n, v) for n, v in (("start", start), ("end", end)) if v is not None]
    found = everything(client, p, params, count=50)
    assert set(found) == expected, (
        f"missing {sorted(expected - set(found))[:10]}, extra {sorted(set(found) - expected)[:10]}")


# -- hand-made compartments ------------------------------------------------------------------------


def test_patient_compartment_edge_cases(client) -> None:  # noqa: ANN001
    a = new(client, patient(name=[{"family": "A"}]))
    b = new(client, patient(name=[{"family": "B"}]))
    linked = new(client, patient(link=[{"other": ref(a), "type": "seealso"}]))
    org = new(client, {"resourceType": "Organization", "name": "Org"})
    pract = new(client, {"resourceType": "Practitioner", "name": [{"family": "Doc"}]})
    enc_a = new(client, encounter(a, serviceProvider=ref(org)))
    expected = {
        a, linked, enc_a,
        new(client, obs(a, performer=[ref(pract)])),
        new(client, obs(b, performer=[ref(a)])),  # subject B, performer A: in both compartments
        new(client, obs({"reference": f"{BASE}/Patient/{a[1]}"})),  # absolute, on this server
        new(client, condition(a, encounter=ref(enc_a))),
        new(client, {"resourceType": "CareTeam", "participant": [{"member": ref(a)}]}),
        new(client, {"resourceType": "AllergyIntolerance", "patient": ref(b), "recorder": ref(a),
                     "code": {"text": "peanut"}}),
        new(client, {"resourceType": "Claim", "status": "active", "type": {"text": "t"}, "use": "claim",
                     "patient": ref(b), "created": "2020-01-01", "provider": ref(org),
                     "priority": {"text": "normal"}, "payee": {"type": {"text": "t"}, "party": ref(a)},
                     "insurance": [{"sequence": 1, "focal": True, "coverage": {"display": "c"}}]}),
        new(client, {"resourceType": "RelatedPerson", "patient": ref(a)}),
        new(client, {"resourceType": "Group", "type": "person", "actual": True, "member": [{"entity": ref(a)}]}),
    }
    not_expected = {
        b, org, pract,
        new(client, obs(b)),
        new(client, encounter(b)),
        new(client, obs({"identifier": {"value": a[1]}})),  # a logical reference only
        new(client, {"resourceType": "Device", "patient": ref(a)}),  # Device is not in the R4 patient compartment
        new(client, {"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
                     "subject": ref(("Group", a[1]))}),  # .where(resolve() is Patient)
        new(client, {"resourceType": "Patient", "generalPractitioner": [ref(pract)]}),
    }
    gone = new(client, obs(a))
    assert client.delete(f"/fhir/Observation/{gone[1]}").status_code in (200, 204)
    found = everything(client, a, count=3)
    assert set(found) == expected, (sorted(expected - set(found)), sorted(set(found) - expected))
    assert not set(found) & not_expected
    if _search_parameters() is not None:  # the evaluator agrees with the hand-made expectation
        assert Compartment("Patient").members(a, stored_resources(client)) == expected
    # Patient B: only its own; A's Encounter/Condition never.
    found_b = everything(client, b)
    assert enc_a not in found_b and a not in found_b and b in found_b


def test_reference_to_another_server_is_not_in_the_compartment(client) -> None:  # noqa: ANN001
    """An absolute reference to a Patient on another server does not point at this server's
    Patient with the same id (R4 references.html: a literal reference is resolved by its full URL;
    search.html#reference: [base]/Patient/23 matches only with this server's base)."""
    a = new(client, patient())
    mine = new(client, obs({"reference": f"{BASE}/Patient/{a[1]}"}))
    elsewhere = new(client, obs({"reference": f"http://elsewhere.example/fhir/Patient/{a[1]}"}))
    found = everything(client, a)
    assert mine in found
    assert elsewhere not in found, "a reference to http://elsewhere.example/fhir/Patient/<id> was taken as local"
    assert set(found) == {a, mine}


def test_encounter_compartment_edge_cases(client) -> None:  # noqa: ANN001
    a = new(client, patient())
    e = new(client, encounter(a))
    e2 = new(client, encounter(a))
    obs_e2 = new(client, obs(a, encounter=ref(e2)))
    expected = {
        e,
        new(client, obs(a, encounter=ref(e))),
        new(client, condition(a, encounter=ref(e))),
        new(client, {"resourceType": "DocumentReference", "status": "current", "subject": ref(a),
                     "content": [{"attachment": {"url": "http://x.example/doc"}}], "context": {"encounter": [ref(e)]}}),
        new(client, {"resourceType": "Claim", "status": "active", "type": {"text": "t"}, "use": "claim",
                     "patient": ref(a), "created": "2020-01-01", "provider": {"display": "p"},
                     "priority": {"text": "normal"},
                     "insurance": [{"sequence": 1, "focal": True, "coverage": {"display": "c"}}],
                     "item": [{"sequence": 1, "productOrService": {"text": "x"}, "encounter": [ref(e)]}]}),
        new(client, {"resourceType": "MedicationRequest", "status": "active", "intent": "order", "subject": ref(a),
                     "medicationCodeableConcept": {"text": "m"}, "encounter": ref(e)}),
    }
    not_expected = {
        a, e2, obs_e2,
        new(client, obs(a)),
        new(client, encounter(a, partOf=ref(e))),  # Encounter is in its compartment only as {def}
        new(client, {"resourceType": "Immunization", "status": "completed", "vaccineCode": {"text": "v"},
                     "patient": ref(a), "occurrenceDateTime": "2020-01-01", "encounter": ref(e)}),
    }
    found = everything(client, e, count=2)
    assert set(found) == expected, (sorted(expected - set(found)), sorted(set(found) - expected))
    assert not set(found) & not_expected
    if _search_parameters() is not None:
        assert Compartment("Encounter").members(e, stored_resources(client)) == expected
    assert set(everything(client, e2)) == {e2, obs_e2}


# -- 3. parameters -----------------------------------------------------------------------------------


@dataclass
class Clinic:
    a: Key
    b: Key
    enc: Key
    a_obs: list[Key]
    a_conds: list[Key]
    a_all: set[Key]


@pytest.fixture
def clinic(client) -> Clinic:  # noqa: ANN001
    a = new(client, patient(name=[{"family": "A"}]))
    b = new(client, patient(name=[{"family": "B"}]))
    enc = new(client, encounter(a))
    a_obs = [new(client, obs(a, encounter=ref(enc), valueString=str(i))) for i in range(4)]
    a_conds = [new(client, condition(a)) for _ in range(2)]
    imm = new(client, {"resourceType": "Immunization", "status": "completed", "vaccineCode": {"text": "v"},
                       "patient": ref(a), "occurrenceDateTime": "2020-01-01"})
    for _ in range(3):
        new(client, obs(b))
    new(client, condition(b))
    new(client, encounter(b))
    new(client, {"resourceType": "Organization", "name": "Org"})
    return Clinic(a, b, enc, a_obs, a_conds, {a, enc, imm, *a_obs, *a_conds})


def test_everything_without_parameters(client, clinic) -> None:  # noqa: ANN001
    assert set(everything(client, clinic.a)) == clinic.a_all
    for count in (1, 2, 3, 1000):
        assert set(everything(client, clinic.a, count=count)) == clinic.a_all, count


def test_default_count_pages_too(client, clinic) -> None:  # noqa: ANN001
    r = client.get(f"/fhir/Patient/{clinic.a[1]}/$everything")
    assert r.status_code == 200, r.text
    pages = walk_pages(client, r.json())
    keys = [key_of(e["resource"]) for p in pages for e in p.get("entry", [])]
    assert len(keys) == len(set(keys)) and set(keys) == clinic.a_all


def test_type_restricts(client, clinic) -> None:  # noqa: ANN001
    found = everything(client, clinic.a, [("_type", "Observation,Condition")], count=2)
    assert set(found) == {*clinic.a_obs, *clinic.a_conds}
    found = everything(client, clinic.a, [("_type", "Patient,Observation")], count=2)
    assert set(found) == {clinic.a, *clinic.a_obs}
    assert set(everything(client, clinic.a, [("_type", "Encounter")])) == {clinic.enc}
    assert set(everything(client, clinic.a, [("_type", "ServiceRequest")])) == set()  # in the compartment, none stored
    # the type filter travels in the paging links
    r = client.get(f"/fhir/Patient/{clinic.a[1]}/$everything", params={"_type": "Observation", "_count": "1"})
    assert r.status_code == 200
    for url in bundle_links(r.json()).values():
        assert ("_type", "Observation") in parse_qsl(urlsplit(url).query), url


def test_type_repeated_is_a_union(client, clinic) -> None:  # noqa: ANN001
    """R4: _type 0..*: "One or more parameters, each containing one or more comma-delimited FHIR
    resource types to include in the return resources"."""
    found = everything(client, clinic.a, [("_type", "Observation"), ("_type", "Condition")], count=2)
    assert set(found) == {*clinic.a_obs, *clinic.a_conds}


@pytest.mark.parametrize("types", ["Organization", "Practitioner", "Observation,Organization", "NotAType"])
def test_type_outside_the_compartment_is_400(client, clinic, types) -> None:  # noqa: ANN001
    r = client.get(f"/fhir/Patient/{clinic.a[1]}/$everything", params={"_type": types})
    assert_outcome(r, 400)


def test_encounter_type_outside_its_compartment_is_400(client, clinic) -> None:  # noqa: ANN001
    for types in ("Patient", "Immunization", "Organization"):
        r = client.get(f"/fhir/Encounter/{clinic.enc[1]}/$everything", params={"_type": types})
        assert_outcome(r, 400)
    found = everything(client, clinic.enc, [("_type", "Observation")])
    assert set(found) == set(clinic.a_obs)


def _last_updated(client: Any, key: Key) -> str:
    r = client.get(f"/fhir/{key[0]}/{key[1]}")
    assert r.status_code == 200, r.text
    return r.json()["meta"]["lastUpdated"]


def _instant(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def test_since(client, clinic) -> None:  # noqa: ANN001
    last_create = max(_instant(_last_updated(client, k)) for k in clinic.a_all)
    time.sleep(0.02)
    changed = [clinic.a_obs[1], clinic.a_conds[0]]
    stamps = []
    for key in changed:
        res = client.get(f"/fhir/{key[0]}/{key[1]}").json()
        r = put(client, {**res, "note": [{"text": "changed"}]})
        assert r.status_code == 200, r.text
        stamps.append(r.json()["meta"]["lastUpdated"])
    first_update = min(stamps, key=_instant)
    assert _instant(first_update) > last_create
    # exactly the server's own lastUpdated of the first change: >= keeps it
    assert set(everything(client, clinic.a, [("_since", first_update)], count=1)) == set(changed)
    # an instant strictly between the two writes, written with a +00:00 offset (the '+' must survive
    # the paging links) and with a -05:00 offset
    between = last_create + timedelta(milliseconds=1)
    assert between < _instant(first_update)
    for tz in (UTC, timezone(timedelta(hours=-5))):
        since = between.astimezone(tz).isoformat(timespec="milliseconds")
        assert set(everything(client, clinic.a, [("_since", since)], count=1)) == set(changed), since
    # before everything: all of it; in the future: nothing
    assert set(everything(client, clinic.a, [("_since", "2000-01-01T00:00:00Z")])) == clinic.a_all
    assert everything(client, clinic.a, [("_since", "2999-01-01T00:00:00Z")]) == {}
    # combined with _type
    assert set(everything(client, clinic.a, [("_since", first_update), ("_type", "Condition")])) == {changed[1]}


def test_since_invalid_is_400(client, clinic) -> None:  # noqa: ANN001
    r = client.get(f"/fhir/Patient/{clinic.a[1]}/$everything", params={"_since": "yesterday"})
    assert_outcome(r, 400)


@pytest.fixture
def care(client) -> dict[str, Key]:  # noqa: ANN001
    a = new(client, patient(birthDate="1990-01-01"))
    other = new(client, patient())
    made = {
        "patient": a,
        "obs_before": new(client, obs(a, effectiveDateTime="2019-06-15T10:00:00Z")),
        "obs_in": new(client, obs(a, effectiveDateTime="2020-03-10")),
        "obs_period_over_start": new(client, obs(a, effectivePeriod={"start": "2019-12-01", "end": "2020-01-15"})),
        "obs_tz_in": new(client, obs(a, effectiveDateTime="2019-12-31T23:30:00-05:00")),  # 2020-01-01T04:30Z
        "obs_last_day": new(client, obs(a, effectiveDateTime="2020-12-31T23:30:00Z")),
        "obs_after": new(client, obs(a, effectiveDateTime="2021-02-01T00:00:00Z")),
        "obs_no_date": new(client, obs(a)),
        "cond_no_date_param": new(client, condition(a, onsetDateTime="2010-01-01")),  # Condition: no `date` param
        "enc_in": new(client, encounter(a, period={"start": "2020-05-01", "end": "2020-05-02"})),
        "enc_before": new(client, encounter(a, period={"start": "2018-01-01", "end": "2018-01-02"})),
        "enc_ongoing": new(client, encounter(a, period={"start": "2019-01-01"})),
    }
    new(client, obs(other, effectiveDateTime="2020-03-10"))
    return made


@pytest.mark.parametrize(("params", "names"), [
    ([], "obs_before obs_in obs_period_over_start obs_tz_in obs_last_day obs_after obs_no_date "
         "enc_in enc_before enc_ongoing"),
    ([("start", "2020-01-01")],
     "obs_in obs_period_over_start obs_tz_in obs_last_day obs_after enc_in enc_ongoing"),
    ([("end", "2020-12-31")],
     "obs_before obs_in obs_period_over_start obs_tz_in obs_last_day enc_in enc_before enc_ongoing"),
    ([("start", "2020-01-01"), ("end", "2020-12-31")],
     "obs_in obs_period_over_start obs_tz_in obs_last_day enc_in enc_ongoing"),
    ([("start", "2020-01-02T00:00:00Z"), ("end", "2020-06")], "obs_in obs_period_over_start enc_in enc_ongoing"),
    ([("start", "2022-01-01")], "enc_ongoing"),
], ids=["none", "start", "end", "start-end", "instant-month", "after-all"])
def test_start_end(client, care, params, names) -> None:  # noqa: ANN001
    """Dated types (Observation, Encounter: R4 `date` param) must overlap the care period; a resource
    of such a type without a date is out; types without a `date` param (Patient, Condition) are in."""
    expected = {care[n] for n in {*names.split(), "patient", "cond_no_date_param"}}
    found = everything(client, care["patient"], params, count=2)
    assert set(found) == expected, (
        sorted(n for n, k in care.items() if k in expected - set(found)),
        sorted(n for n, k in care.items() if k in set(found) - expected))


def test_start_end_invalid_is_400(client, care) -> None:  # noqa: ANN001
    for params in ({"start": "last week"}, {"end": "2020-13-01"}):
        r = client.get(f"/fhir/Patient/{care['patient'][1]}/$everything", params=params)
        assert_outcome(r, 400)


def test_deleted_resources_never_appear(client, clinic) -> None:  # noqa: ANN001
    victims = [clinic.a_obs[0], clinic.a_conds[1], clinic.enc]
    for key in victims:
        r = client.delete(f"/fhir/{key[0]}/{key[1]}")
        assert r.status_code in (200, 204), r.text
    assert set(everything(client, clinic.a, count=2)) == clinic.a_all - set(victims)
    assert set(everything(client, clinic.a, [("_since", "2000-01-01T00:00:00Z")])) == clinic.a_all - set(victims)
    # the references to the deleted Encounter remain in the Observations, which are still the patient's
    assert {k for k in everything(client, clinic.a, [("_type", "Observation")])} == set(clinic.a_obs[1:])


def test_unknown_and_deleted_owner(client, clinic) -> None:  # noqa: ANN001
    for path in ("Patient/does-not-exist", "Encounter/does-not-exist", f"Patient/{clinic.enc[1]}",
                 f"Encounter/{clinic.a[1]}"):
        assert_outcome(client.get(f"/fhir/{path}/$everything"), 404)
    for key in (clinic.a, clinic.enc):
        assert client.delete(f"/fhir/{key[0]}/{key[1]}").status_code in (200, 204)
        assert_outcome(client.get(f"/fhir/{key[0]}/{key[1]}/$everything"), 410)
    # B is untouched
    assert clinic.b in everything(client, clinic.b)


@pytest.mark.parametrize("params", [{"foo": "bar"}, {"patient": "x"}, {"_sort": "_lastUpdated"},
                                    {"_include": "Observation:subject"}, {"_elements": "id"}])
def test_unknown_parameter_is_400(client, clinic, params) -> None:  # noqa: ANN001
    for owner in (clinic.a, clinic.enc):
        assert_outcome(client.get(f"/fhir/{owner[0]}/{owner[1]}/$everything", params=params), 400)


def test_invalid_count_is_400(client, clinic) -> None:  # noqa: ANN001
    assert_outcome(client.get(f"/fhir/Patient/{clinic.a[1]}/$everything", params={"_count": "abc"}), 400)


def test_links(client, clinic) -> None:  # noqa: ANN001
    r = client.get(f"/fhir/Patient/{clinic.a[1]}/$everything", params={"_count": "2", "_type": "Observation"})
    assert r.status_code == 200, r.text
    links = bundle_links(r.json())
    assert links["self"].startswith(f"{BASE}/Patient/{clinic.a[1]}/$everything"), links["self"]
    assert "$everything" in links["self"]
    assert links["next"].startswith(f"{BASE}/Patient/{clinic.a[1]}/$everything"), links["next"]
    nxt = client.get(local(links["next"])).json()
    assert "$everything" in bundle_links(nxt)["self"]
    r = client.get(f"/fhir/Encounter/{clinic.enc[1]}/$everything")
    assert bundle_links(r.json())["self"].startswith(f"{BASE}/Encounter/{clinic.enc[1]}/$everything")


def _xml_pages(client: Any, url: str) -> tuple[list[ET.Element], set[Key]]:
    pages: list[ET.Element] = []
    keys: set[Key] = set()
    while url:
        r = client.get(url)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith(XML_CT), r.headers["content-type"]
        root = ET.fromstring(r.content)
        assert root.tag == NS + "Bundle"
        assert root.find(f"{NS}type").get("value") == "searchset"
        pages.append(root)
        for e in root.findall(f"{NS}entry"):
            (res,) = list(e.find(f"{NS}resource"))
            key = (res.tag[len(NS):], res.find(f"{NS}id").get("value"))
            assert key not in keys, key
            keys.add(key)
        nexts = [link.find(f"{NS}url").get("value") for link in root.findall(f"{NS}link")
                 if link.find(f"{NS}relation").get("value") == "next"]
        url = local(nexts[0]) if nexts else ""
        if nexts:
            assert "_format=xml" in nexts[0], nexts[0]
        assert len(pages) < 100
    return pages, keys


def test_format_xml(client, clinic) -> None:  # noqa: ANN001
    pages, keys = _xml_pages(client, f"/fhir/Patient/{clinic.a[1]}/$everything?_format=xml&_count=3")
    assert len(pages) > 1
    assert keys == clinic.a_all
    assert int(pages[0].find(f"{NS}total").get("value")) == len(clinic.a_all)
    _, keys = _xml_pages(client, f"/fhir/Encounter/{clinic.enc[1]}/$everything?_format=xml")
    assert keys == {clinic.enc, *clinic.a_obs}
    r = client.get(f"/fhir/Patient/{clinic.a[1]}/$everything", headers={"Accept": XML_CT})
    assert r.headers["content-type"].startswith(XML_CT)


def test_owner_id_is_matched_exactly(client) -> None:  # noqa: ANN001
    """Two patients whose ids share a prefix do not see each other's resources."""
    base_id = uuid.uuid4().hex[:12]
    p1 = ("Patient", f"p{base_id}")
    p2 = ("Patient", f"p{base_id}x")
    for key in (p1, p2):
        assert put(client, {"resourceType": "Patient", "id": key[1]}).status_code == 201
    o1 = new(client, obs(p1))
    o2 = new(client, obs(p2))
    assert set(everything(client, p1)) == {p1, o1}
    assert set(everything(client, p2)) == {p2, o2}
