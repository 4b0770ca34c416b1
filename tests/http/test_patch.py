"""PATCH (R4 http.html#patch): JSON Patch (RFC 6902, application/json-patch+json) and FHIRPath Patch
(fhirpatch.html, a Parameters resource as application/fhir+json).

A patch answers like an update: 200 with the patched resource, a new version, ETag, Prefer
honoured.  A patched result that is not a valid resource is 400, a patch that cannot be applied
is 422, a stale If-Match is 412; in every failing case nothing is written.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest

from tests.http.conftest import BASE, JSON_CT, assert_outcome, create, patient, put, strip_server_fields

JSON_PATCH = "application/json-patch+json"
SYS = "http://hospital.example/mrn"


# -- helpers -------------------------------------------------------------------------------------


def json_patch(client, url: str, ops: Any, headers: dict[str, str] | None = None, **kwargs: Any):  # noqa: ANN001, ANN201
    return client.patch(url, content=json.dumps(ops), headers={"Content-Type": JSON_PATCH, **(headers or {})},
                        **kwargs)


def op(type_: str, path: str, **parts: Any) -> dict[str, Any]:
    """One FHIRPath Patch operation; parts are given as name=(valueX, value), e.g. value=("valueCode", "male")."""
    part = [{"name": "type", "valueCode": type_}, {"name": "path", "valueString": path}]
    for name, spec in parts.items():
        if isinstance(spec, tuple):
            part.append({"name": name, spec[0]: spec[1]})
        elif isinstance(spec, int):
            part.append({"name": name, "valueInteger": spec})
        else:
            part.append({"name": name, "valueString": spec})
    return {"name": "operation", "part": part}


def fhirpath_patch(client, url: str, *ops: dict[str, Any], headers: dict[str, str] | None = None):  # noqa: ANN001, ANN201
    body = {"resourceType": "Parameters", "parameter": list(ops)}
    return client.patch(url, content=json.dumps(body), headers={"Content-Type": JSON_CT, **(headers or {})})


def read(client, rtype: str, id: str) -> dict[str, Any]:  # noqa: ANN001
    r = client.get(f"/fhir/{rtype}/{id}")
    assert r.status_code == 200, r.text
    return r.json()


def count(client, rtype: str = "Patient", **params: str) -> int:  # noqa: ANN001
    r = client.get(f"/fhir/{rtype}", params={**params, "_summary": "count"})
    assert r.status_code == 200, r.text
    return r.json()["total"]


def unchanged(client, before: dict[str, Any]) -> None:  # noqa: ANN001
    assert read(client, before["resourceType"], before["id"]) == before


def patched(r, version: int) -> dict[str, Any]:  # noqa: ANN001
    """A successful patch: 200, JSON body of the new version, ETag and Last-Modified headers."""
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith(JSON_CT)
    body = r.json()
    assert body["meta"]["versionId"] == str(version)
    assert r.headers["etag"] == f'W/"{version}"'
    assert "last-modified" in r.headers
    return body


def _lu(resource: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(resource["meta"]["lastUpdated"].replace("Z", "+00:00"))


@pytest.fixture
def ann(client) -> dict[str, Any]:  # noqa: ANN001
    return create(client, patient(
        identifier=[{"system": SYS, "value": "1"}, {"system": "http://other", "value": "x"}],
        active=True,
        gender="male",
        name=[{"family": "Lee", "given": ["Ann"]}],
        telecom=[{"system": "phone", "value": "555"}, {"system": "fax", "value": "556"}],
        birthDate="1970-01-01",
    ))


def url(res: dict[str, Any]) -> str:
    return f"/fhir/{res['resourceType']}/{res['id']}"


# -- JSON Patch ----------------------------------------------------------------------------------


def test_json_patch_replace(client, ann) -> None:
    r = json_patch(client, url(ann), [{"op": "replace", "path": "/gender", "value": "female"}])
    body = patched(r, 2)
    assert body["id"] == ann["id"] and body["gender"] == "female"
    assert strip_server_fields(body) == {**strip_server_fields(ann), "gender": "female"}
    assert _lu(body) > _lu(ann)
    assert read(client, "Patient", ann["id"]) == body
    v1 = client.get(f"{url(ann)}/_history/1").json()
    assert v1 == ann
    hist = client.get(f"{url(ann)}/_history").json()
    assert [e["resource"]["meta"]["versionId"] for e in hist["entry"]] == ["2", "1"]
    assert hist["entry"][0]["request"]["method"] in ("PUT", "PATCH")
    assert hist["entry"][0]["request"]["url"] == f"Patient/{ann['id']}"


def test_json_patch_all_operations(client, ann) -> None:
    ops = [
        {"op": "test", "path": "/name/0/family", "value": "Lee"},
        {"op": "add", "path": "/name/0/given/-", "value": "Beth"},
        {"op": "add", "path": "/name/-", "value": {"family": "Smith", "use": "maiden"}},
        {"op": "remove", "path": "/telecom/1"},
        {"op": "replace", "path": "/birthDate", "value": "1971-02-03"},
        {"op": "copy", "from": "/identifier/0", "path": "/identifier/-"},
        {"op": "move", "from": "/identifier/0", "path": "/identifier/1"},
        {"op": "remove", "path": "/active"},
        {"op": "add", "path": "/deceasedBoolean", "value": False},
    ]
    body = patched(json_patch(client, url(ann), ops), 2)
    expected = strip_server_fields(ann)
    expected["name"] = [{"family": "Lee", "given": ["Ann", "Beth"]}, {"family": "Smith", "use": "maiden"}]
    expected["telecom"] = [{"system": "phone", "value": "555"}]
    expected["birthDate"] = "1971-02-03"
    expected["identifier"] = [{"system": "http://other", "value": "x"}, {"system": SYS, "value": "1"},
                              {"system": SYS, "value": "1"}]
    del expected["active"]
    expected["deceasedBoolean"] = False
    assert strip_server_fields(body) == expected
    assert read(client, "Patient", ann["id"]) == body


def test_json_patch_is_all_or_nothing(client, ann) -> None:
    r = json_patch(client, url(ann), [{"op": "replace", "path": "/gender", "value": "female"},
                                      {"op": "test", "path": "/birthDate", "value": "1999-09-09"}])
    assert_outcome(r, 422)
    unchanged(client, ann)


@pytest.mark.parametrize(
    "ops",
    [
        pytest.param([{"op": "test", "path": "/gender", "value": "female"}], id="test-fails"),
        pytest.param([{"op": "replace", "path": "/deceasedBoolean", "value": True}], id="replace-missing"),
        pytest.param([{"op": "remove", "path": "/address"}], id="remove-missing"),
        pytest.param([{"op": "remove", "path": "/telecom/5"}], id="remove-index-out-of-range"),
        pytest.param([{"op": "add", "path": "/contact/0/name", "value": {"family": "X"}}], id="add-parent-missing"),
        pytest.param([{"op": "move", "from": "/address", "path": "/birthDate"}], id="move-from-missing"),
        pytest.param([{"op": "test", "path": "/name/0/given/0", "value": "ann"}], id="test-is-case-sensitive"),
    ],
)
def test_json_patch_that_cannot_be_applied_is_422(client, ann, ops: list) -> None:
    assert_outcome(json_patch(client, url(ann), ops), 422)
    unchanged(client, ann)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"[{not json", id="not-json"),
        pytest.param(b'{"op": "replace", "path": "/gender", "value": "female"}', id="object-not-array"),
        pytest.param(b'[{"op": "frobnicate", "path": "/gender"}]', id="unknown-op"),
        pytest.param(b'[{"path": "/gender", "value": "female"}]', id="no-op"),
        pytest.param(b'[{"op": "replace", "value": "female"}]', id="no-path"),
        pytest.param(b'[{"op": "replace", "path": "gender", "value": "female"}]', id="path-not-a-pointer"),
    ],
)
def test_malformed_json_patch_document(client, ann, body: bytes) -> None:
    r = client.patch(url(ann), content=body, headers={"Content-Type": JSON_PATCH})
    assert r.status_code in (400, 422), r.text
    assert_outcome(r, r.status_code)
    unchanged(client, ann)


@pytest.mark.parametrize(
    "ops, expression",
    [
        pytest.param([{"op": "replace", "path": "/gender", "value": "foo"}], "Patient.gender", id="bad-code"),
        pytest.param([{"op": "replace", "path": "/active", "value": "yes"}], "Patient.active", id="bad-boolean"),
        pytest.param([{"op": "add", "path": "/foo", "value": "bar"}], "Patient.foo", id="unknown-element"),
        pytest.param([{"op": "add", "path": "/deceasedDateTime", "value": "2020-01-01"},
                      {"op": "add", "path": "/deceasedBoolean", "value": True}], "Patient.deceased", id="choice-twice"),
        pytest.param([{"op": "replace", "path": "/name", "value": []}], "Patient.name", id="empty-array"),
        pytest.param([{"op": "replace", "path": "/resourceType", "value": "Person"}], None, id="resource-type"),
    ],
)
def test_json_patch_giving_an_invalid_resource_is_400(client, ann, ops: list, expression: str | None) -> None:
    issues = assert_outcome(json_patch(client, url(ann), ops), 400)
    if expression is not None:
        found = [e for i in issues for e in i.get("expression", [])]
        assert any(e == expression or e.startswith(expression) for e in found), issues
    unchanged(client, ann)


def test_removing_a_required_element_is_400(client) -> None:
    obs = create(client, {"resourceType": "Observation", "status": "final", "code": {"text": "x"}})
    issues = assert_outcome(json_patch(client, url(obs), [{"op": "remove", "path": "/status"}]), 400)
    assert any("Observation.status" in e for i in issues for e in i.get("expression", [])), issues
    unchanged(client, obs)


@pytest.mark.parametrize(
    "ops",
    [
        pytest.param([{"op": "replace", "path": "/id", "value": "another-id"}], id="replace"),
        pytest.param([{"op": "remove", "path": "/id"}, {"op": "add", "path": "/id", "value": "another-id"}],
                     id="remove-add"),
    ],
)
def test_json_patch_cannot_change_the_id(client, ann, ops: list) -> None:
    assert_outcome(json_patch(client, url(ann), ops), 400)
    unchanged(client, ann)
    assert_outcome(client.get("/fhir/Patient/another-id"), 404)


def test_successive_patches_count_versions(client, ann) -> None:
    r = json_patch(client, url(ann), [{"op": "add", "path": "/gender", "value": "female"}])
    body = patched(r, 2)
    r = json_patch(client, url(ann), [{"op": "replace", "path": "/gender", "value": "other"}])
    body = patched(r, 3)
    assert body["gender"] == "other"
    assert read(client, "Patient", ann["id"])["meta"]["versionId"] == "3"


# -- the HTTP side -------------------------------------------------------------------------------


def test_if_match(client, ann) -> None:
    r = json_patch(client, url(ann), [{"op": "replace", "path": "/gender", "value": "female"}],
                   headers={"If-Match": 'W/"1"'})
    patched(r, 2)
    current = read(client, "Patient", ann["id"])
    r = json_patch(client, url(ann), [{"op": "replace", "path": "/gender", "value": "other"}],
                   headers={"If-Match": 'W/"1"'})
    assert_outcome(r, 412)
    unchanged(client, current)
    r = json_patch(client, url(ann), [{"op": "replace", "path": "/gender", "value": "other"}],
                   headers={"If-Match": 'W/"2"'})
    assert patched(r, 3)["gender"] == "other"


def test_unknown_resource_is_404(client) -> None:
    assert_outcome(json_patch(client, "/fhir/Patient/nobody", [{"op": "add", "path": "/active", "value": True}]), 404)
    assert_outcome(client.get("/fhir/Patient/nobody"), 404)  # not created either
    r = fhirpath_patch(client, "/fhir/Patient/nobody", op("add", "Patient", name="active", value=("valueBoolean", True)))
    assert_outcome(r, 404)


def test_unknown_type_is_404(client) -> None:
    assert_outcome(json_patch(client, "/fhir/Foo/1", [{"op": "add", "path": "/active", "value": True}]), 404)


def test_deleted_resource_is_410(client, ann) -> None:
    assert client.delete(url(ann)).status_code == 200
    assert_outcome(json_patch(client, url(ann), [{"op": "add", "path": "/active", "value": False}]), 410)
    assert_outcome(client.get(url(ann)), 410)


@pytest.mark.parametrize("content_type", ["text/plain", "application/merge-patch+json",
                                          "application/x-www-form-urlencoded", "application/octet-stream"])
def test_other_content_types_are_415(client, ann, content_type: str) -> None:
    r = client.patch(url(ann), content=json.dumps([{"op": "replace", "path": "/gender", "value": "female"}]),
                     headers={"Content-Type": content_type})
    assert_outcome(r, 415)
    unchanged(client, ann)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"resourceType": "Patient", "gender": "female"}, id="a-resource"),
        pytest.param([{"op": "replace", "path": "/gender", "value": "female"}], id="json-patch-as-fhir-json"),
        pytest.param({"resourceType": "Parameters", "parameter": [{"name": "frobnicate", "valueString": "x"}]},
                     id="not-operations"),
    ],
)
def test_fhir_json_body_must_be_a_fhirpath_patch(client, ann, body: Any) -> None:
    r = client.patch(url(ann), content=json.dumps(body), headers={"Content-Type": JSON_CT})
    assert r.status_code in (400, 415, 422), r.text
    assert_outcome(r, r.status_code)
    unchanged(client, ann)


def test_prefer(client, ann) -> None:
    r = json_patch(client, url(ann), [{"op": "replace", "path": "/gender", "value": "female"}],
                   headers={"Prefer": "return=minimal"})
    assert r.status_code == 200 and r.content == b""
    assert r.headers["etag"] == 'W/"2"'
    r = json_patch(client, url(ann), [{"op": "replace", "path": "/gender", "value": "other"}],
                   headers={"Prefer": "return=OperationOutcome"})
    assert r.status_code == 200
    assert r.json()["resourceType"] == "OperationOutcome"
    assert r.headers["etag"] == 'W/"3"'
    r = json_patch(client, url(ann), [{"op": "replace", "path": "/gender", "value": "unknown"}],
                   headers={"Prefer": "return=representation"})
    assert patched(r, 4)["gender"] == "unknown"


def test_search_index_follows_the_patch(client, ann) -> None:
    assert count(client, identifier=f"{SYS}|1") == 1
    patched(json_patch(client, url(ann), [{"op": "replace", "path": "/identifier/0/value", "value": "2"},
                                          {"op": "replace", "path": "/gender", "value": "female"}]), 2)
    assert count(client, identifier=f"{SYS}|1") == 0
    assert count(client, identifier=f"{SYS}|2") == 1
    assert count(client, gender="male") == 0 and count(client, gender="female") == 1


def test_patch_then_put_keeps_counting_versions(client, ann) -> None:
    body = patched(json_patch(client, url(ann), [{"op": "replace", "path": "/gender", "value": "female"}]), 2)
    r = put(client, {**body, "gender": "male"})
    assert r.status_code == 200 and r.json()["meta"]["versionId"] == "3"
    patched(json_patch(client, url(ann), [{"op": "remove", "path": "/gender"}]), 4)
    assert "gender" not in read(client, "Patient", ann["id"])


# -- FHIRPath Patch ------------------------------------------------------------------------------


def test_fhirpath_replace(client, ann) -> None:
    r = fhirpath_patch(client, url(ann), op("replace", "Patient.gender", value=("valueCode", "female")))
    body = patched(r, 2)
    assert strip_server_fields(body) == {**strip_server_fields(ann), "gender": "female"}
    assert read(client, "Patient", ann["id"]) == body


def test_fhirpath_all_operations(client, ann) -> None:
    r = fhirpath_patch(
        client, url(ann),
        op("add", "Patient", name="deceasedBoolean", value=("valueBoolean", False)),
        op("insert", "Patient.identifier", index=0, value=("valueIdentifier", {"system": "http://new", "value": "n"})),
        op("delete", "Patient.telecom.where(system = 'fax')"),
        op("replace", "Patient.birthDate", value=("valueDate", "1971-02-03")),
        op("add", "Patient.name[0]", name="given", value=("valueString", "Beth")),
        op("move", "Patient.identifier", source=2, destination=0),
        op("delete", "Patient.active"),
    )
    body = patched(r, 2)
    expected = strip_server_fields(ann)
    expected["deceasedBoolean"] = False
    expected["identifier"] = [{"system": "http://other", "value": "x"}, {"system": "http://new", "value": "n"},
                              {"system": SYS, "value": "1"}]
    expected["telecom"] = [{"system": "phone", "value": "555"}]
    expected["birthDate"] = "1971-02-03"
    expected["name"] = [{"family": "Lee", "given": ["Ann", "Beth"]}]
    del expected["active"]
    assert strip_server_fields(body) == expected
    assert read(client, "Patient", ann["id"]) == body


def test_fhirpath_add_complex_value(client, ann) -> None:
    r = fhirpath_patch(client, url(ann), op("add", "Patient", name="maritalStatus",
                                            value=("valueCodeableConcept", {"text": "married"})))
    assert patched(r, 2)["maritalStatus"] == {"text": "married"}


@pytest.mark.parametrize(
    "operation",
    [
        pytest.param(op("replace", "Patient.deceasedBoolean", value=("valueBoolean", True)), id="replace-missing"),
        pytest.param(op("replace", "Patient.telecom.where(system = 'email')", value=("valueContactPoint", {
            "system": "email", "value": "a@b.c"})), id="replace-where-matches-nothing"),
    ],
)
def test_fhirpath_patch_that_cannot_be_applied_is_422(client, ann, operation: dict) -> None:
    assert_outcome(fhirpath_patch(client, url(ann), operation), 422)
    unchanged(client, ann)


@pytest.mark.parametrize(
    "operation",
    [
        # The path must name a single element (fhirpatch.html).
        pytest.param(op("replace", "Patient.telecom.value", value=("valueString", "1")), id="path-matches-two"),
        pytest.param(op("insert", "Patient.identifier", index=7, value=("valueIdentifier", {"value": "z"})),
                     id="insert-index-out-of-range"),
        pytest.param(op("move", "Patient.telecom", source=5, destination=0), id="move-index-out-of-range"),
        pytest.param(op("replace", "Patient.gender", value=("valueBoolean", True)), id="wrong-value-type"),
        pytest.param(op("frobnicate", "Patient.gender", value=("valueCode", "female")), id="unknown-type"),
        pytest.param(op("replace", "Patient.gender(", value=("valueCode", "female")), id="unparsable-path"),
        pytest.param({"name": "operation", "part": [{"name": "path", "valueString": "Patient.gender"}]},
                     id="no-type"),
    ],
)
def test_bad_fhirpath_patch(client, ann, operation: dict) -> None:
    r = fhirpath_patch(client, url(ann), operation)
    assert r.status_code in (400, 422), r.text
    assert_outcome(r, r.status_code)
    unchanged(client, ann)


def test_fhirpath_patch_giving_an_invalid_resource_is_400(client, ann) -> None:
    issues = assert_outcome(fhirpath_patch(client, url(ann), op("replace", "Patient.gender", value=("valueCode", "foo"))),
                            400)
    assert any("Patient.gender" in e for i in issues for e in i.get("expression", [])), issues
    unchanged(client, ann)
    obs = create(client, {"resourceType": "Observation", "status": "final", "code": {"text": "x"}})
    assert_outcome(fhirpath_patch(client, url(obs), op("delete", "Observation.status")), 400)
    unchanged(client, obs)


def test_fhirpath_patch_cannot_change_the_id(client, ann) -> None:
    assert_outcome(fhirpath_patch(client, url(ann), op("replace", "Patient.id", value=("valueId", "another-id"))), 400)
    unchanged(client, ann)
    assert_outcome(client.get("/fhir/Patient/another-id"), 404)


def test_fhirpath_patch_if_match(client, ann) -> None:
    r = fhirpath_patch(client, url(ann), op("replace", "Patient.gender", value=("valueCode", "female")),
                       headers={"If-Match": 'W/"7"'})
    assert_outcome(r, 412)
    unchanged(client, ann)


# -- conditional patch ---------------------------------------------------------------------------


def test_conditional_patch(client, ann) -> None:
    other = create(client, patient(identifier=[{"system": SYS, "value": "other"}]))
    r = json_patch(client, f"/fhir/Patient?identifier={SYS}|1", [{"op": "replace", "path": "/gender", "value": "female"}])
    body = patched(r, 2)
    assert body["id"] == ann["id"] and body["gender"] == "female"
    unchanged(client, other)


def test_conditional_patch_no_match_is_404(client, ann) -> None:
    r = json_patch(client, f"/fhir/Patient?identifier={SYS}|nobody", [{"op": "add", "path": "/active", "value": True}])
    assert_outcome(r, 404)
    unchanged(client, ann)
    assert count(client) == 1


def test_conditional_patch_two_matches_is_412(client, ann) -> None:
    twin = create(client, patient(identifier=[{"system": SYS, "value": "1"}]))
    r = fhirpath_patch(client, f"/fhir/Patient?identifier={SYS}|1",
                       op("replace", "Patient.gender", value=("valueCode", "female")))
    assert_outcome(r, 412)
    unchanged(client, ann)
    unchanged(client, twin)


@pytest.mark.parametrize("query", ["", "foo=bar"])
def test_conditional_patch_needs_known_criteria(client, ann, query: str) -> None:
    r = json_patch(client, f"/fhir/Patient?{query}" if query else "/fhir/Patient",
                   [{"op": "replace", "path": "/gender", "value": "female"}])
    assert 400 <= r.status_code < 500, r.text
    assert_outcome(r, r.status_code)
    unchanged(client, ann)


# -- CapabilityStatement -------------------------------------------------------------------------


def test_capability_statement_lists_patch(client) -> None:
    cs = client.get("/fhir/metadata").json()
    assert cs["implementation"]["url"] == BASE
    for res in cs["rest"][0]["resource"]:
        assert "patch" in {i["code"] for i in res["interaction"]}, res["type"]
