"""Result control (R4 search.html#return): _count and paging links, _sort, _total, _summary, _elements,
_include and _revinclude."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from tests.search import expected as x
from tests.search.loader import BASE, Resource, SearchResult, World, key, links, local

SUBSETTED = ("http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "SUBSETTED")
# Patient elements with isSummary=true in the R4 base definition (besides id and meta).
PATIENT_SUMMARY = {
    "identifier",
    "active",
    "name",
    "telecom",
    "gender",
    "birthDate",
    "deceasedBoolean",
    "deceasedDateTime",
    "address",
    "managingOrganization",
    "link",
    "implicitRules",
}
OBS_MANDATORY = {"status", "code"}
CAREPLAN_MANDATORY = {"status", "intent", "subject"}
ENCOUNTER_REFS = (
    "subject",
    "participant.individual",
    "location.location",
    "serviceProvider",
    "reasonReference",
    "diagnosis.condition",
    "partOf",
    "basedOn",
    "account",
    "appointment",
    "episodeOfCare",
)


def _obs_of(world: World, pid: str) -> set[str]:
    return world.ids_where("Observation", lambda r: x.refers_to(r, ["subject"], f"Patient/{pid}"))


def _page_ids(page: Resource) -> list[str]:
    return [e["resource"]["id"] for e in page.get("entry", []) if e["search"]["mode"] == "match"]


def _subsetted(res: Resource) -> bool:
    return any((t.get("system"), t.get("code")) == SUBSETTED for t in res.get("meta", {}).get("tag", []))


def _first(world: World, url: str, **kwargs: Any) -> Resource:
    r = world.fetch(url, **kwargs)
    assert r.status_code == 200, (url, r.status_code, r.text[:1000])
    return r.json()


# -- _count and paging -------------------------------------------------------------------------


def test_default_count_is_20(world: World) -> None:
    want = _obs_of(world, "85")
    assert len(want) > 40
    first = _first(world, "Observation?patient=85", count=None)
    assert len(_page_ids(first)) == 20
    assert first["total"] == len(want)
    res = world.walk(first)
    assert [len(_page_ids(p)) for p in res.pages[:-1]] == [20] * (len(res.pages) - 1)
    assert res.ids == want and len(res.matches) == len(want)


def test_count_zero_gives_the_total_only(world: World) -> None:
    page = _first(world, "Observation?patient=85&_count=0", count=None)
    assert page["total"] == len(_obs_of(world, "85"))
    assert not [e for e in page.get("entry", []) if e["search"]["mode"] == "match"]
    assert "next" not in links(page)


@pytest.mark.parametrize("count", [1, 7, 25])
def test_paging_forward_and_back(world: World, count: int) -> None:
    url = f"Observation?patient=355&_count={count}"
    want = _obs_of(world, "355")
    first = _first(world, url, count=None)
    fwd = world.walk(first, max_pages=200)
    pages = [_page_ids(p) for p in fwd.pages]
    assert all(len(p) == count for p in pages[:-1]) and 1 <= len(pages[-1]) <= count
    flat = [i for p in pages for i in p]
    assert len(flat) == len(set(flat)) == len(want) and set(flat) == want, "duplicates or gaps"
    for p in fwd.pages:
        for rel, link in links(p).items():
            assert link.startswith(BASE + "/Observation?"), (rel, link)
    assert "previous" not in links(fwd.pages[0])
    # Back from the last page along the previous links: the same pages, reversed.
    back = [fwd.pages[-1]]
    while "previous" in links(back[-1]):
        r = world.client.get(local(links(back[-1])["previous"]))
        assert r.status_code == 200, r.text
        back.append(r.json())
        assert len(back) <= len(pages) + 1
    assert [_page_ids(p) for p in reversed(back)] == pages
    # The self link of a page fetches that page again.
    middle = fwd.pages[len(fwd.pages) // 2]
    again = world.client.get(local(links(middle)["self"])).json()
    assert _page_ids(again) == _page_ids(middle)


@pytest.mark.parametrize("sort", ["", "_id", "-date", "date"])
def test_paging_is_stable_when_a_resource_is_created_between_pages(world: World, sort: str) -> None:
    """A resource created while paging neither repeats nor hides resources of the original result."""
    pid = "355"
    url = f"Observation?patient={pid}&_count=10" + (f"&_sort={sort}" if sort else "")
    want = _obs_of(world, pid)
    first = _first(world, url, count=None)
    second = world.client.get(local(links(first)["next"])).json()
    seen = _page_ids(first) + _page_ids(second)
    # Sorts into the part already seen: before everything by id, and latest/earliest by date.
    new = world.put(
        {
            "resourceType": "Observation",
            "id": f"0000-paging{sort.replace('_', '')}",
            "status": "final",
            "code": {"text": "paging"},
            "subject": {"reference": f"Patient/{pid}"},
            "effectiveDateTime": "2099-01-01T00:00:00Z" if sort == "-date" else "1900-01-01T00:00:00Z",
        }
    )
    page = second
    while "next" in links(page):
        page = world.client.get(local(links(page)["next"])).json()
        seen += _page_ids(page)
    assert len(seen) == len(set(seen)), "a resource appears twice"
    assert want <= set(seen), f"missing {sorted(want - set(seen))[:5]}"
    assert set(seen) - want <= {new["id"]}
    # A page already fetched is unaffected: its self link gives the same resources.
    if sort:
        assert _page_ids(world.client.get(local(links(second)["self"])).json()) == _page_ids(second)


# -- _sort -------------------------------------------------------------------------------------


def _date_key(res: Resource, paths: tuple[str, ...], descending: bool) -> datetime | None:
    """Ascending sorts by the lowest value (a range's start), descending by the highest (its end)."""
    ranges = [rg for v in x.values(res, *paths) if (rg := x.element_range(v)) is not None]
    if not ranges:
        return None
    return max(r[1] for r in ranges) if descending else min(r[0] for r in ranges)


def _sorted_ids(items: list[Resource], keys: list[tuple[Callable[[Resource], Any], bool]]) -> list[str]:
    """Multi-key sort; resources without a value for a key come after those with one."""
    out = list(items)
    for fn, desc in reversed(keys):
        with_value = [r for r in out if fn(r) is not None]
        without = [r for r in out if fn(r) is None]
        with_value.sort(key=fn, reverse=desc)
        out = with_value + without
    return [r["id"] for r in out]


def _walk_ids(world: World, url: str) -> list[str]:
    return world.search(url, count=15).ordered_ids


def test_sort_date_descending_then_id(world: World) -> None:
    paths = ("effectiveDateTime", "effectivePeriod", "effectiveInstant")
    obs = [r for r in world.all("Observation") if x.refers_to(r, ["subject"], "Patient/85")]
    # An open-ended Period has no highest value that all servers agree on: leave those out.
    open_ended = {
        r["id"] for r in obs if any(isinstance(p, dict) and "end" not in p for p in x.values(r, *paths))
    }
    want = _sorted_ids(obs, [(lambda r: _date_key(r, paths, True), True), (lambda r: r["id"], False)])
    got = _walk_ids(world, "Observation?patient=85&_sort=-date,_id")
    assert [i for i in got if i not in open_ended] == [i for i in want if i not in open_ended]
    got_asc = _walk_ids(world, "Observation?patient=85&_sort=date,_id")
    want_asc = _sorted_ids(obs, [(lambda r: _date_key(r, paths, False), False), (lambda r: r["id"], False)])
    assert got_asc == want_asc


def test_sort_without_value_last(world: World) -> None:
    patients = world.all("Patient")
    assert any("gender" not in p for p in patients)
    want = _sorted_ids(patients, [(lambda r: r.get("gender"), False), (lambda r: r["id"], False)])
    assert _walk_ids(world, "Patient?_sort=gender,_id") == want
    want_desc = _sorted_ids(patients, [(lambda r: r.get("gender"), True), (lambda r: r["id"], False)])
    assert _walk_ids(world, "Patient?_sort=-gender,_id") == want_desc


def _lowest(res: Resource, path: str) -> str | None:
    vals = [x.norm(v) for v in x.values(res, path) if isinstance(v, str)]
    return min(vals) if vals else None


def test_sort_family_given(world: World) -> None:
    patients = world.all("Patient")
    want = _sorted_ids(
        patients,
        [
            (lambda r: _lowest(r, "name.family"), False),
            (lambda r: _lowest(r, "name.given"), False),
            (lambda r: r["id"], False),
        ],
    )
    assert _walk_ids(world, "Patient?_sort=family,given,_id") == want


def test_sort_last_updated(world: World) -> None:
    res = world.search("Patient?_sort=_lastUpdated", count=4)
    stamps = [x.date_range(m["meta"]["lastUpdated"])[0] for m in res.matches]
    assert stamps == sorted(stamps) and res.ids == {p["id"] for p in world.all("Patient")}
    res = world.search("Patient?_sort=-_lastUpdated", count=4)
    stamps = [x.date_range(m["meta"]["lastUpdated"])[0] for m in res.matches]
    assert stamps == sorted(stamps, reverse=True)


def test_sort_id_and_string(world: World) -> None:
    assert _walk_ids(world, "Encounter?patient=85&_sort=_id") == sorted(
        world.ids_where("Encounter", lambda r: x.refers_to(r, ["subject"], "Patient/85"))
    )
    orgs = world.all("Organization")
    want = _sorted_ids(
        orgs, [(lambda r: x.norm(r["name"]) if "name" in r else None, True), (lambda r: r["id"], False)]
    )
    assert _walk_ids(world, "Organization?_sort=-name,_id") == want


def test_sort_unknown_parameter_is_400(world: World) -> None:
    assert world.fetch("Patient?_sort=no-such-param").status_code == 400


# -- _total ------------------------------------------------------------------------------------


def test_total(world: World) -> None:
    n = len(_obs_of(world, "85"))
    accurate = _first(world, "Observation?patient=85&_total=accurate&_count=5", count=None)
    assert accurate["total"] == n
    estimate = _first(world, "Observation?patient=85&_total=estimate&_count=5", count=None)
    assert isinstance(estimate.get("total", 0), int)
    none = _first(world, "Observation?patient=85&_total=none&_count=5", count=None)
    assert "total" not in none
    assert len(_page_ids(none)) == 5 and "next" in links(none)


# -- _summary and _elements --------------------------------------------------------------------


def _one(world: World, url: str) -> tuple[Resource, Resource]:
    page = _first(world, url)
    matches = [e["resource"] for e in page["entry"] if e["search"]["mode"] == "match"]
    assert len(matches) == 1, url
    return page, matches[0]


def _without_subsetted(meta: dict[str, Any]) -> dict[str, Any]:
    tags = [t for t in meta.get("tag", []) if (t.get("system"), t.get("code")) != SUBSETTED]
    out = {k: v for k, v in meta.items() if k != "tag"}
    return {**out, "tag": tags} if tags else out


def test_summary_true(world: World) -> None:
    stored = world.get("Patient", "85")
    _, got = _one(world, "Patient?_id=85&_summary=true")
    assert _subsetted(got)
    names = {k.lstrip("_") for k in got}
    assert names <= PATIENT_SUMMARY | {"resourceType", "id", "meta"}, names - PATIENT_SUMMARY
    for k in ("identifier", "name", "gender", "birthDate", "deceasedDateTime", "telecom"):
        assert got[k] == stored[k], k
    assert len(got["address"]) == len(stored["address"])
    assert "text" in stored and "text" not in got
    assert "communication" in stored and "communication" not in got


def test_summary_text(world: World) -> None:
    stored = world.get("Patient", "85")
    _, got = _one(world, "Patient?_id=85&_summary=text")
    assert _subsetted(got)
    assert set(got) <= {"resourceType", "id", "meta", "text"}
    assert got["text"] == stored["text"]
    plan = sorted((p for p in world.all("CarePlan") if "text" in p), key=lambda p: p["id"])[0]
    _, got_plan = _one(world, f"CarePlan?_id={plan['id']}&_summary=text")
    assert set(got_plan) <= {"resourceType", "id", "meta", "text"} | CAREPLAN_MANDATORY
    assert got_plan["text"] == plan["text"]
    assert "category" in plan and "category" not in got_plan


def test_summary_data(world: World) -> None:
    stored = world.get("Patient", "85")
    _, got = _one(world, "Patient?_id=85&_summary=data")
    assert _subsetted(got)
    assert "text" not in got
    rest = {k: v for k, v in stored.items() if k not in ("text", "meta")}
    assert {k: v for k, v in got.items() if k != "meta"} == rest
    assert _without_subsetted(got["meta"]) == stored["meta"]


def test_summary_count(world: World) -> None:
    page = _first(world, "Observation?patient=85&_summary=count")
    assert page["total"] == len(_obs_of(world, "85"))
    assert not [e for e in page.get("entry", []) if e["search"]["mode"] == "match"]


def test_summary_false(world: World) -> None:
    _, got = _one(world, "Patient?_id=85&_summary=false")
    assert got == world.get("Patient", "85")
    assert not _subsetted(got)


def test_summary_invalid_is_400(world: World) -> None:
    assert world.fetch("Patient?_summary=maybe").status_code == 400


def test_elements(world: World) -> None:
    stored = world.get("Patient", "85")
    _, got = _one(world, "Patient?_id=85&_elements=identifier,name")
    assert _subsetted(got)
    assert set(got) <= {"resourceType", "id", "meta", "identifier", "name"}
    assert got["identifier"] == stored["identifier"] and got["name"] == stored["name"]
    assert got["id"] == "85"
    obs = next(iter(_obs_of(world, "85")))
    _, got_obs = _one(world, f"Observation?_id={obs}&_elements=subject")
    assert set(got_obs) <= {"resourceType", "id", "meta", "subject"} | OBS_MANDATORY
    assert got_obs["subject"] == world.get("Observation", obs)["subject"]
    assert _subsetted(got_obs)


def test_elements_on_every_page(world: World) -> None:
    res = world.search("Observation?patient=85&_elements=code", count=10)
    assert res.ids == _obs_of(world, "85")
    for m in res.matches:
        assert set(m) <= {"resourceType", "id", "meta", "code"} | OBS_MANDATORY and "code" in m
    for p in res.pages[1:]:
        assert "_elements=code" in links(p)["self"]


# -- _include and _revinclude ------------------------------------------------------------------


def _check_includes(res: SearchResult) -> None:
    for page in res.pages:
        inc = [key(e["resource"]) for e in page.get("entry", []) if e["search"]["mode"] == "include"]
        assert len(inc) == len(set(inc)), "an included resource appears twice on a page"
        matches = {key(e["resource"]) for e in page.get("entry", []) if e["search"]["mode"] == "match"}
        assert not matches & set(inc), "a match is repeated as an include"


def _existing(world: World, refs: set[str]) -> set[str]:
    return {
        r
        for r in refs
        if r.split("/")[0] in world.store and r.split("/", 1)[1] in world.store[r.split("/")[0]]
    }


def test_include_with_target_type(world: World) -> None:
    res = world.search("MedicationRequest?patient=85&_include=MedicationRequest:medication:Medication")
    want = _existing(
        world, {r for m in res.matches for r in x.reference_strings(x.values(m, "medicationReference"))}
    )
    assert want and res.include_keys == want
    _check_includes(res)
    none = world.search("MedicationRequest?patient=85&_include=MedicationRequest:requester:Organization")
    assert not any(k.startswith("Practitioner/") for k in none.include_keys)


def test_include_iterate(world: World) -> None:
    url = (
        "MedicationDispense?patient=85&_include=MedicationDispense:prescription"
        "&_include:iterate=MedicationRequest:medication"
    )
    res = world.search(url)
    assert res.ids == world.ids_where(
        "MedicationDispense", lambda r: x.refers_to(r, ["subject"], "Patient/85")
    )
    requests = _existing(
        world, {r for m in res.matches for r in x.reference_strings(x.values(m, "authorizingPrescription"))}
    )
    meds = _existing(
        world,
        {
            r
            for q in requests
            for r in x.reference_strings(
                x.values(world.get("MedicationRequest", q.split("/")[1]), "medicationReference")
            )
        },
    )
    assert requests and meds
    assert res.include_keys == requests | meds
    # Without the :iterate include the Medication is not reached.
    flat = world.search("MedicationDispense?patient=85&_include=MedicationDispense:prescription")
    assert flat.include_keys == requests
    _check_includes(res)


def test_include_iterate_two_levels(world: World) -> None:
    url = (
        "Observation?patient=355&code=http://loinc.org|8302-2&_include=Observation:encounter"
        "&_include:iterate=Encounter:service-provider"
    )
    res = world.search(url)
    encounters = _existing(
        world, {r for m in res.matches for r in x.reference_strings(x.values(m, "encounter"))}
    )
    orgs = _existing(
        world,
        {
            r
            for e in encounters
            for r in x.reference_strings(x.values(world.get("Encounter", e.split("/")[1]), "serviceProvider"))
        },
    )
    assert encounters and orgs
    assert res.include_keys == encounters | orgs
    _check_includes(res)


def test_include_star(world: World) -> None:
    enc = next(
        e
        for e in world.all("Encounter")
        if x.refers_to(e, ["subject"], "Patient/85") and "serviceProvider" in e and "location" in e
    )
    res = world.search(f"Encounter?_id={enc['id']}&_include=*")
    want = _existing(world, set(x.reference_strings(x.values(enc, *ENCOUNTER_REFS))))
    assert len(want) >= 3 and res.include_keys == want
    _check_includes(res)


def test_revinclude(world: World) -> None:
    res = world.search(
        "Patient?_id=85&_revinclude=Encounter:patient&_revinclude=Condition:subject", count=None
    )
    want = {
        f"Encounter/{i}"
        for i in world.ids_where("Encounter", lambda r: x.refers_to(r, ["subject"], "Patient/85"))
    }
    want |= {
        f"Condition/{i}"
        for i in world.ids_where("Condition", lambda r: x.refers_to(r, ["subject"], "Patient/85"))
    }
    assert res.ids == {"85"} and res.include_keys == want
    assert res.total == 1, "included resources do not count in total"
    for page in res.pages:
        for e in page.get("entry", []):
            if e["resource"]["resourceType"] != "Patient":
                assert e["search"]["mode"] == "include"
    _check_includes(res)


def test_revinclude_per_page(world: World) -> None:
    """With several pages, each page carries the includes of its own matches."""
    res = world.search("Encounter?patient=355&_revinclude=Provenance:target&_sort=_id", count=10)
    assert len(res.pages) > 3 and res.total == len(res.matches)
    seen: set[str] = set()
    for page in res.pages:
        matches = {key(e["resource"]) for e in page.get("entry", []) if e["search"]["mode"] == "match"}
        for e in page.get("entry", []):
            if e["search"]["mode"] == "include":
                targets = set(x.reference_strings(x.values(e["resource"], "target")))
                assert targets & matches, "an include that targets no match of its page"
                seen.add(key(e["resource"]))
    want = {
        key(p) for p in world.all("Provenance") if res.keys & set(x.reference_strings(x.values(p, "target")))
    }
    assert want and seen == want


def test_include_not_duplicated(world: World) -> None:
    res = world.search(
        "Observation?patient=85&_include=Observation:patient&_include=Observation:subject", count=30
    )
    for page in res.pages:
        inc = [key(e["resource"]) for e in page.get("entry", []) if e["search"]["mode"] == "include"]
        assert inc == ["Patient/85"], inc
    _check_includes(res)


@pytest.mark.parametrize(
    "value", ["Observation:status", "Observation:no-such", "Nope:subject", "Observation:subject:NotAType"]
)
def test_invalid_include_is_400(world: World, value: str) -> None:
    r = world.fetch(f"Observation?patient=85&_include={value}")
    assert r.status_code == 400, (value, r.status_code, r.text[:300])
    assert r.json()["resourceType"] == "OperationOutcome"
    r = world.fetch(f"Patient?_id=85&_revinclude={value}")
    assert r.status_code == 400, (value, r.status_code, r.text[:300])
