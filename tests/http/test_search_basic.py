"""search with _id and _lastUpdated, paging, _search forms, system search, parameter handling (R4 search.html)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import parse_qsl, urlsplit

import pytest

from tests.http.conftest import (
    BASE,
    assert_outcome,
    bundle_links,
    create,
    local,
    match_entries,
    patient,
    put,
    walk_pages,
)

OBS = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}


def _dt(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def _ms(s: str) -> int:
    return int(_dt(s).timestamp() * 1000)


def _ids(bundle: dict) -> list[str]:
    return [e["resource"]["id"] for e in match_entries(bundle)]


def _search(client, url: str, **params: str) -> dict:
    r = client.get(url, params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/fhir+json")
    bundle = r.json()
    _check_searchset(bundle)
    return bundle


def _check_searchset(bundle: dict) -> None:
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "searchset"
    assert isinstance(bundle.get("total"), int)
    links = bundle_links(bundle)
    assert links["self"].startswith(BASE), links
    for e in bundle.get("entry", []):
        mode = e["search"]["mode"]
        assert mode in ("match", "include", "outcome")
        if mode == "match":
            res = e["resource"]
            assert e["fullUrl"] == f"{BASE}/{res['resourceType']}/{res['id']}"


@pytest.fixture
def patients(client) -> list[dict]:
    return [create(client, patient(birthDate=f"19{n}0")) for n in range(5)]


# -- _id ---------------------------------------------------------------------------------------


def test_search_by_id(client, patients) -> None:
    a, b = patients[1]["id"], patients[3]["id"]
    bundle = _search(client, "/fhir/Patient", _id=f"{a},{b}")
    assert sorted(_ids(bundle)) == sorted([a, b])
    assert bundle["total"] == 2
    for e in bundle["entry"]:
        assert e["search"]["mode"] == "match"
        assert e["resource"] in (patients[1], patients[3])
    bundle = _search(client, "/fhir/Patient", _id=a)
    assert _ids(bundle) == [a] and bundle["total"] == 1
    assert _search(client, "/fhir/Patient", _id="nope")["total"] == 0
    assert _search(client, "/fhir/Patient", _id="nope").get("entry", []) == []


def test_search_by_id_and_is_intersection(client, patients) -> None:
    a, b, c = (p["id"] for p in patients[:3])
    r = client.get(f"/fhir/Patient?_id={a},{b}&_id={b},{c}")
    assert _ids(r.json()) == [b]


def test_search_returns_current_versions_only_and_skips_deleted(client, patients) -> None:
    p0, p1 = patients[0], patients[1]
    updated = put(client, {**p0, "gender": "male"}).json()
    client.delete(f"/fhir/Patient/{p1['id']}")
    bundle = _search(client, "/fhir/Patient", _count="100")
    assert bundle["total"] == 4
    assert p1["id"] not in _ids(bundle)
    got = {e["resource"]["id"]: e["resource"] for e in bundle["entry"]}
    assert got[p0["id"]] == updated
    assert _search(client, "/fhir/Patient", _id=p1["id"])["total"] == 0


def test_search_is_per_type(client, patients) -> None:
    obs = create(client, OBS)
    bundle = _search(client, "/fhir/Observation")
    assert _ids(bundle) == [obs["id"]] and bundle["total"] == 1
    assert _search(client, "/fhir/Observation", _id=patients[0]["id"])["total"] == 0
    assert obs["id"] not in _ids(_search(client, "/fhir/Patient"))


# -- _lastUpdated ------------------------------------------------------------------------------


def _expected(patients: list[dict], pred) -> list[str]:  # noqa: ANN001
    return sorted(p["id"] for p in patients if pred(_ms(p["meta"]["lastUpdated"])))


@pytest.mark.parametrize(
    "prefix,pred",
    [
        ("", lambda x, v: x == v),
        ("eq", lambda x, v: x == v),
        ("ne", lambda x, v: x != v),
        ("gt", lambda x, v: x > v),
        ("lt", lambda x, v: x < v),
        ("ge", lambda x, v: x >= v),
        ("le", lambda x, v: x <= v),
        # For a value and a target that are both one millisecond wide: starts after / ends before.
        ("sa", lambda x, v: x > v),
        ("eb", lambda x, v: x < v),
    ],
)
def test_last_updated_prefixes_at_millisecond_precision(client, patients, prefix, pred) -> None:  # noqa: ANN001
    for pivot in (patients[0], patients[2], patients[4]):
        value = pivot["meta"]["lastUpdated"]
        v = _ms(value)
        bundle = _search(client, "/fhir/Patient", _lastUpdated=prefix + value, _count="100")
        assert sorted(_ids(bundle)) == _expected(patients, lambda x, v=v: pred(x, v)), (prefix, value)
        assert bundle["total"] == len(_ids(bundle))


@pytest.mark.parametrize("prefix", ["eq", "ne", "gt", "lt", "ge", "le"])
def test_last_updated_implicit_range_of_a_second(client, patients, prefix) -> None:  # noqa: ANN001
    # A value with seconds precision stands for the whole second [s, s+1).
    pivot = _dt(patients[2]["meta"]["lastUpdated"]).astimezone(UTC)
    second = pivot.replace(microsecond=0)
    lo = int(second.timestamp() * 1000)
    hi = lo + 1000
    value = second.strftime("%Y-%m-%dT%H:%M:%SZ")
    pred = {
        "eq": lambda x: lo <= x < hi,
        "ne": lambda x: not (lo <= x < hi),
        "gt": lambda x: x >= hi,
        "lt": lambda x: x < lo,
        "ge": lambda x: x >= lo,
        "le": lambda x: x < hi,
    }[prefix]
    bundle = _search(client, "/fhir/Patient", _lastUpdated=prefix + value, _count="100")
    assert sorted(_ids(bundle)) == _expected(patients, pred), (prefix, value)


def test_last_updated_day_precision(client, patients) -> None:
    day = _dt(patients[0]["meta"]["lastUpdated"]).astimezone(UTC).date()
    start = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)
    end = start + 86_400_000
    bundle = _search(client, "/fhir/Patient", _lastUpdated=day.isoformat(), _count="100")
    assert sorted(_ids(bundle)) == _expected(patients, lambda x: start <= x < end)
    assert bundle["total"] >= 1
    assert _search(client, "/fhir/Patient", _lastUpdated="gt2000-01-01")["total"] == 5
    assert _search(client, "/fhir/Patient", _lastUpdated="lt2000-01-01")["total"] == 0
    assert _search(client, "/fhir/Patient", _lastUpdated="ge2999")["total"] == 0
    nxt = (day + timedelta(days=1)).isoformat()
    assert sorted(_ids(_search(client, "/fhir/Patient", _lastUpdated="lt" + nxt, _count="100"))) == _expected(
        patients, lambda x: x < end)


def test_last_updated_range_and_or(client, patients) -> None:
    lo = patients[1]["meta"]["lastUpdated"]
    hi = patients[3]["meta"]["lastUpdated"]
    r = client.get("/fhir/Patient", params=[("_lastUpdated", "ge" + lo), ("_lastUpdated", "le" + hi),
                                             ("_count", "100")])
    assert sorted(_ids(r.json())) == _expected(patients, lambda x: _ms(lo) <= x <= _ms(hi))
    r = client.get("/fhir/Patient", params={"_lastUpdated": f"lt{lo},gt{hi}", "_count": "100"})
    assert sorted(_ids(r.json())) == _expected(patients, lambda x: x < _ms(lo) or x > _ms(hi))


def test_last_updated_with_offset(client, patients) -> None:
    # The same instant written with a +02:00 offset selects the same resources.
    pivot = _dt(patients[2]["meta"]["lastUpdated"])
    shifted = pivot.astimezone(timezone(timedelta(hours=2))).isoformat(timespec="milliseconds")
    bundle = _search(client, "/fhir/Patient", _lastUpdated="ge" + shifted, _count="100")
    assert sorted(_ids(bundle)) == _expected(patients, lambda x: x >= _ms(patients[2]["meta"]["lastUpdated"]))


@pytest.mark.parametrize("value", ["yesterday", "gt2020-13-01", "xx2020-01-01", "2020-01-01T25:00:00Z"])
def test_last_updated_invalid_is_400(client, value: str) -> None:
    assert_outcome(client.get("/fhir/Patient", params={"_lastUpdated": value}), 400)


# -- paging ------------------------------------------------------------------------------------


def test_paging_walks_all_results_once(client) -> None:
    created = [create(client, patient())["id"] for _ in range(7)]
    r = client.get("/fhir/Patient", params={"_count": "3"})
    first = r.json()
    _check_searchset(first)
    links = bundle_links(first)
    assert urlsplit(links["self"]).path == "/fhir/Patient"
    assert ("_count", "3") in parse_qsl(urlsplit(links["self"]).query)
    pages = walk_pages(client, first)
    assert [len(match_entries(p)) for p in pages] == [3, 3, 1]
    seen: list[str] = []
    for p in pages:
        _check_searchset(p)
        assert p["total"] == 7
        seen += _ids(p)
        if "next" in bundle_links(p):
            assert bundle_links(p)["next"].startswith(BASE + "/Patient?")
    assert "next" not in bundle_links(pages[-1])
    assert len(seen) == len(set(seen))
    assert sorted(seen) == sorted(created)


def test_paging_keeps_the_criteria(client) -> None:
    ps = [create(client, patient()) for _ in range(6)]
    wanted = [p["id"] for p in ps[:5]]
    r = client.get("/fhir/Patient", params={"_id": ",".join(wanted), "_count": "2"})
    pages = walk_pages(client, r.json())
    assert len(pages) == 3
    assert "_id=" in bundle_links(pages[0])["next"]
    seen = [i for p in pages for i in _ids(p)]
    assert sorted(seen) == sorted(wanted) and len(seen) == len(set(seen))
    assert all(p["total"] == 5 for p in pages)


def test_paging_self_link_reproduces_the_page(client) -> None:
    for _ in range(4):
        create(client, patient())
    first = client.get("/fhir/Patient", params={"_count": "2"}).json()
    second = client.get(local(bundle_links(first)["next"])).json()
    again = client.get(local(bundle_links(second)["self"])).json()
    assert _ids(again) == _ids(second)


def test_paging_not_disturbed_by_a_new_resource(client) -> None:
    for _ in range(4):
        create(client, patient())
    first = client.get("/fhir/Patient", params={"_count": "2"}).json()
    create(client, patient())  # a write between pages
    pages = walk_pages(client, first)
    seen = [i for p in pages for i in _ids(p)]
    assert len(seen) == len(set(seen))
    assert len(seen) >= 4


def test_count_zero_gives_total_only(client, patients) -> None:
    bundle = _search(client, "/fhir/Patient", _count="0")
    assert bundle["total"] == 5
    assert match_entries(bundle) == []


def test_summary_count_gives_total_only(client, patients) -> None:
    bundle = _search(client, "/fhir/Patient", _summary="count")
    assert bundle["total"] == 5
    assert match_entries(bundle) == []
    bundle = _search(client, "/fhir/Patient", _summary="count", _id=patients[0]["id"])
    assert bundle["total"] == 1


@pytest.mark.parametrize("value", ["-1", "abc", "1.5"])
def test_count_invalid_is_400(client, value: str) -> None:
    assert_outcome(client.get("/fhir/Patient", params={"_count": value}), 400)


# -- _search forms -----------------------------------------------------------------------------


def test_get_and_post_search_agree(client, patients) -> None:
    wanted = f"{patients[0]['id']},{patients[2]['id']},{patients[4]['id']}"
    plain = _search(client, "/fhir/Patient", _id=wanted)
    via_get = _search(client, "/fhir/Patient/_search", _id=wanted)
    r = client.post("/fhir/Patient/_search", data={"_id": wanted},
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200, r.text
    via_post = r.json()
    _check_searchset(via_post)
    assert sorted(_ids(plain)) == sorted(_ids(via_get)) == sorted(_ids(via_post)) == sorted(wanted.split(","))
    assert plain["total"] == via_get["total"] == via_post["total"] == 3


def test_post_search_combines_query_and_form(client, patients) -> None:
    lu = patients[2]["meta"]["lastUpdated"]
    r = client.post("/fhir/Patient/_search?_lastUpdated=ge" + lu.replace("+", "%2B"),
                    data={"_id": f"{patients[1]['id']},{patients[3]['id']}"})
    assert r.status_code == 200, r.text
    expected = [p["id"] for p in (patients[1], patients[3]) if _ms(p["meta"]["lastUpdated"]) >= _ms(lu)]
    assert sorted(_ids(r.json())) == sorted(expected)


def test_post_search_paging_next_link_works(client, patients) -> None:
    r = client.post("/fhir/Patient/_search", data={"_count": "2"})
    assert r.status_code == 200
    pages = walk_pages(client, r.json())
    seen = [i for p in pages for i in _ids(p)]
    assert sorted(seen) == sorted(p["id"] for p in patients)


# -- system search -----------------------------------------------------------------------------


def test_system_search_with_type(client, patients) -> None:
    obs = [create(client, OBS) for _ in range(2)]
    create(client, {"resourceType": "Organization", "name": "x"})
    bundle = _search(client, "/fhir", _type="Patient,Observation", _lastUpdated="gt2000-01-01", _count="100")
    got = sorted((e["resource"]["resourceType"], e["resource"]["id"]) for e in match_entries(bundle))
    assert got == sorted([("Patient", p["id"]) for p in patients] + [("Observation", o["id"]) for o in obs])
    assert bundle["total"] == 7
    only = _search(client, "/fhir", _type="Observation", _count="100")
    assert sorted(_ids(only)) == sorted(o["id"] for o in obs)


def test_system_search_last_updated(client, patients) -> None:
    obs = create(client, OBS)
    bundle = _search(client, "/fhir", _type="Patient,Observation",
                     _lastUpdated="ge" + obs["meta"]["lastUpdated"], _count="100")
    got = [(e["resource"]["resourceType"], e["resource"]["id"]) for e in match_entries(bundle)]
    expected = [("Patient", p["id"]) for p in patients if _ms(p["meta"]["lastUpdated"]) >= _ms(
        obs["meta"]["lastUpdated"])] + [("Observation", obs["id"])]
    assert sorted(got) == sorted(expected)


def test_system_search_paging(client, patients) -> None:
    create(client, OBS)
    first = _search(client, "/fhir", _type="Patient,Observation", _count="2")
    pages = walk_pages(client, first)
    seen = [(e["resource"]["resourceType"], e["resource"]["id"]) for p in pages for e in match_entries(p)]
    assert len(seen) == 6 == len(set(seen))
    assert bundle_links(first)["next"].startswith(BASE + "?")


def test_system_search_unknown_type_is_400(client) -> None:
    assert_outcome(client.get("/fhir", params={"_type": "Patient,NotAType"}), 400)


# -- parameter handling ------------------------------------------------------------------------


def test_unknown_parameter_lenient(client, patients) -> None:
    pid = patients[0]["id"]
    bundle = _search(client, "/fhir/Patient", _id=pid, foo="bar")
    assert _ids(bundle) == [pid]
    assert bundle["total"] == 1
    self_link = bundle_links(bundle)["self"]
    assert "foo" not in self_link
    assert ("_id", pid) in parse_qsl(urlsplit(self_link).query)
    outcomes = [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert len(outcomes) == 1
    oo = outcomes[0]["resource"]
    assert oo["resourceType"] == "OperationOutcome"
    assert any("foo" in (i.get("diagnostics") or "") for i in oo["issue"])
    assert all(i["severity"] in ("warning", "information") for i in oo["issue"])


def test_unknown_parameter_lenient_explicit(client, patients) -> None:
    r = client.get("/fhir/Patient", params={"foo": "bar"}, headers={"Prefer": "handling=lenient"})
    assert r.status_code == 200
    assert sorted(_ids(r.json())) == sorted(p["id"] for p in patients)


def test_unknown_parameter_strict(client, patients) -> None:
    r = client.get("/fhir/Patient", params={"foo": "bar"}, headers={"Prefer": "handling=strict"})
    issues = assert_outcome(r, 400)
    assert any("foo" in (i.get("diagnostics") or "") for i in issues), issues


@pytest.mark.parametrize(
    "name,value",
    [("_contained", "true"), ("_filter", "name eq x"), ("_text", "x"), ("_content", "x"),
     ("gender:in", "http://hl7.org/fhir/ValueSet/administrative-gender"), ("_sort", "nonsense")],
)
def test_unsupported_result_parameters_are_refused(client, patients, name: str, value: str) -> None:
    issues = assert_outcome(client.get("/fhir/Patient", params={name: value}), 400)
    assert any(name.split(":")[0] in (i.get("diagnostics") or "") for i in issues), issues


def test_empty_parameter_value_is_ignored(client, patients) -> None:
    bundle = _search(client, "/fhir/Patient", _id="")
    assert bundle["total"] == 5


def test_empty_search(client) -> None:
    bundle = _search(client, "/fhir/Patient")
    assert bundle["total"] == 0
    assert bundle.get("entry", []) == []


def test_system_search_without_type_searches_all_types(client, patients) -> None:
    obs = create(client, OBS)
    bundle = _search(client, "/fhir", _count="100")
    got = sorted((e["resource"]["resourceType"], e["resource"]["id"]) for e in match_entries(bundle))
    assert got == sorted([("Patient", p["id"]) for p in patients] + [("Observation", obs["id"])])
    assert bundle["total"] == 6


def test_system_post_search(client, patients) -> None:
    obs = create(client, OBS)
    r = client.post("/fhir/_search", data={"_type": "Observation"})
    assert r.status_code == 200, r.text
    assert _ids(r.json()) == [obs["id"]]
    via_get = _search(client, "/fhir/_search", _type="Observation")
    assert _ids(via_get) == [obs["id"]]


def test_count_is_capped_at_the_server_maximum(make_client) -> None:
    client = make_client(max_count=3)
    for _ in range(5):
        create(client, patient())
    bundle = _search(client, "/fhir/Patient", _count="50")
    assert len(match_entries(bundle)) == 3
    assert bundle["total"] == 5
    assert ("_count", "3") in parse_qsl(urlsplit(bundle_links(bundle)["self"]).query)
    pages = walk_pages(client, bundle)
    assert sum(len(match_entries(p)) for p in pages) == 5


def test_default_page_size(make_client) -> None:
    client = make_client(default_count=2)
    for _ in range(3):
        create(client, patient())
    bundle = _search(client, "/fhir/Patient")
    assert len(match_entries(bundle)) == 2 and "next" in bundle_links(bundle)


def test_total_none(client, patients) -> None:
    r = client.get("/fhir/Patient", params={"_total": "none"})
    assert r.status_code == 200
    body = r.json()
    assert "total" not in body
    assert sorted(_ids(body)) == sorted(p["id"] for p in patients)


def test_tampered_cursor_is_400(client, patients) -> None:
    assert_outcome(client.get("/fhir/Patient", params={"_cursor": "not-a-cursor"}), 400)


def test_type_parameter_on_type_search_is_not_silently_used(client, patients) -> None:
    create(client, OBS)
    r = client.get("/fhir/Patient", params={"_type": "Observation"})
    assert r.status_code in (200, 400)
    if r.status_code == 200:
        assert {e["resource"]["resourceType"] for e in match_entries(r.json())} == {"Patient"}
