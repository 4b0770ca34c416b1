"""create / read / vread / update / delete (R4 http.html), validation on write, the stored form."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest

from tests.http.conftest import (
    BASE,
    JSON_CT,
    assert_outcome,
    create,
    expressions,
    load_synthea,
    patient,
    put,
    strip_server_fields,
)

FACTS = json.loads((Path(__file__).resolve().parents[2] / "fhir_server" / "model" / "r4_facts.json").read_bytes())
R4_TYPES = set(FACTS["resources"])
SERVED = R4_TYPES & set(FACTS["r4bModels"])
INSTANT_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def _instant(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


# -- served types ------------------------------------------------------------------------------


def test_facts_sanity() -> None:
    # The examples below are chosen from the facts file; make sure they mean what the tests assume.
    for t in ("Patient", "Observation", "Evidence", "ActivityDefinition"):
        assert t in SERVED
    for t in ("MedicinalProduct", "SubstancePolymer", "EffectEvidenceSynthesis", "RiskEvidenceSynthesis"):
        assert t in R4_TYPES and t not in SERVED
    for t in ("SubscriptionTopic", "Citation", "ClinicalUseDefinition", "Ingredient"):
        assert t not in R4_TYPES


@pytest.mark.parametrize(
    "rtype",
    ["SubscriptionTopic", "Citation", "ClinicalUseDefinition", "Ingredient",  # R4B only
     "MedicinalProduct", "SubstancePolymer", "EffectEvidenceSynthesis", "RiskEvidenceSynthesis",  # R4, no model
     "Foo", "patient"],  # not a type at all (type names are case-sensitive)
)
def test_unserved_types_answer_404(client, rtype: str) -> None:
    assert_outcome(client.get(f"/fhir/{rtype}"), 404)
    assert_outcome(client.get(f"/fhir/{rtype}/1"), 404)
    assert_outcome(client.get(f"/fhir/{rtype}/1/_history"), 404)
    assert_outcome(client.get(f"/fhir/{rtype}/_history"), 404)
    assert_outcome(client.post(f"/fhir/{rtype}", json={"resourceType": rtype}), 404)
    assert_outcome(client.put(f"/fhir/{rtype}/1", json={"resourceType": rtype, "id": "1"}), 404)
    assert_outcome(client.delete(f"/fhir/{rtype}/1"), 404)


def test_every_served_type_can_be_searched(client) -> None:
    for rtype in sorted(SERVED):
        r = client.get(f"/fhir/{rtype}")
        assert r.status_code == 200, (rtype, r.text)
        body = r.json()
        assert body["resourceType"] == "Bundle" and body["type"] == "searchset" and body["total"] == 0, rtype


@pytest.mark.parametrize(
    "resource",
    [
        # R4 Evidence (R4B changed this resource completely): exposureBackground is required in R4.
        {"resourceType": "Evidence", "status": "draft", "exposureBackground": {"reference": "EvidenceVariable/1"}},
        {"resourceType": "ActivityDefinition", "status": "active"},
        {"resourceType": "Basic", "code": {"text": "x"}},
        {"resourceType": "Organization", "name": "Acme"},
    ],
)
def test_other_served_types_accept_writes(client, resource: dict) -> None:
    created = create(client, resource)
    r = client.get(f"/fhir/{resource['resourceType']}/{created['id']}")
    assert r.status_code == 200
    assert strip_server_fields(r.json()) == resource


# -- validation on every write -----------------------------------------------------------------

def _normalise(expr: str) -> str:
    # FHIRPath may name a choice element as multipleBirth.ofType(integer): the JSON name is multipleBirthInteger.
    return re.sub(r"\.ofType\((\w)(\w*)\)", lambda m: m.group(1).upper() + m.group(2), expr)


def names_element(found: list[str], expr: str) -> bool:
    """Some issue expression names ``expr`` (or an item or child of it)."""
    return any(e == expr or e.startswith(expr + "[") or e.startswith(expr + ".") for e in map(_normalise, found))


# (valid variant, invalid variant, expected expression)
INVALID_CASES = {
    "gender-code": (patient(gender="male"), patient(gender="foo"), "Patient.gender"),
    "boolean-as-string": (patient(active=True), patient(active="true"), "Patient.active"),
    "integer-as-string": (patient(multipleBirthInteger=2), patient(multipleBirthInteger="2"),
                          "Patient.multipleBirthInteger"),
    "decimal-as-string": (
        {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
         "valueQuantity": {"value": 1.5, "unit": "mg"}},
        {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
         "valueQuantity": {"value": "1.5", "unit": "mg"}},
        "Observation.valueQuantity.value",
    ),
    "empty-object": (patient(maritalStatus={"text": "x"}), patient(maritalStatus={}), "Patient.maritalStatus"),
    "empty-array": (patient(name=[{"family": "A"}]), patient(name=[]), "Patient.name"),
    "empty-string": (patient(birthDate="2000-01-01"), patient(birthDate=""), "Patient.birthDate"),
    "null-in-array": (patient(name=[{"given": ["A", "B"]}]), patient(name=[{"given": ["A", None]}]),
                      "Patient.name[0].given"),
    "unknown-element": (patient(gender="male"), patient(gender="male", foo="bar"), "Patient.foo"),
    "bad-date": (patient(birthDate="2000-01-01"), patient(birthDate="2000-13-01"), "Patient.birthDate"),
    "r4-required-element-of-evidence": (
        {"resourceType": "Evidence", "status": "draft", "exposureBackground": {"reference": "EvidenceVariable/1"}},
        {"resourceType": "Evidence", "status": "draft"},
        "Evidence.exposureBackground",
    ),
    "choice-twice": (patient(deceasedBoolean=True), patient(deceasedBoolean=True, deceasedDateTime="2020-01-01"),
                     "Patient.deceased"),
    "array-for-single": (patient(gender="male"), patient(gender=["male"]), "Patient.gender"),
    "object-for-array": (patient(name=[{"family": "x"}]), patient(name={"family": "x"}), "Patient.name"),
    "number-for-string": (patient(name=[{"family": "x"}]), patient(name=[{"family": 1}]), "Patient.name[0].family"),
    "null-value": (patient(gender="male"), patient(gender=None), "Patient.gender"),
    "whitespace-only-string": (patient(name=[{"family": "x"}]), patient(name=[{"family": "   "}]),
                               "Patient.name[0].family"),
    "integer-out-of-range": (patient(multipleBirthInteger=3), patient(multipleBirthInteger=3_000_000_000),
                             "Patient.multipleBirthInteger"),
    "datetime-without-timezone": (
        {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
         "effectiveDateTime": "2020-01-01T10:00:00Z"},
        {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
         "effectiveDateTime": "2020-01-01T10:00:00"},
        "Observation.effectiveDateTime",
    ),
    "uri-with-space": (patient(identifier=[{"system": "http://a/b", "value": "1"}]),
                       patient(identifier=[{"system": "http://a b", "value": "1"}]), "Patient.identifier[0].system"),
    "boolean-as-string-nested": (
        patient(maritalStatus={"coding": [{"system": "http://x", "code": "M", "userSelected": True}]}),
        patient(maritalStatus={"coding": [{"system": "http://x", "code": "M", "userSelected": "true"}]}),
        "Patient.maritalStatus.coding[0].userSelected",
    ),
    "ext-1-value-and-extensions": (
        patient(extension=[{"url": "http://x", "valueString": "a"}]),
        patient(extension=[{"url": "http://x", "valueString": "a", "extension": [{"url": "y", "valueString": "b"}]}]),
        "Patient.extension[0]",
    ),
    "extension-without-url": (patient(extension=[{"url": "http://x", "valueString": "a"}]),
                              patient(extension=[{"valueString": "a"}]), "Patient.extension[0]"),
    "narrative-script": (
        patient(text={"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml"><p>a</p></div>'}),
        patient(text={"status": "generated",
                      "div": '<div xmlns="http://www.w3.org/1999/xhtml"><script>alert(1)</script></div>'}),
        "Patient.text.div",
    ),
    "narrative-without-xhtml-namespace": (
        patient(text={"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml"><p>a</p></div>'}),
        patient(text={"status": "generated", "div": "<div><p>a</p></div>"}),
        "Patient.text.div",
    ),
    "dom-2-nested-contained": (
        patient(contained=[{"resourceType": "Organization", "id": "o"}], managingOrganization={"reference": "#o"}),
        patient(contained=[{"resourceType": "Organization", "id": "o",
                            "contained": [{"resourceType": "Organization", "id": "o2"}]}],
                managingOrganization={"reference": "#o"}),
        "Patient.contained[0]",
    ),
    "dom-3-unreferenced-contained": (
        patient(contained=[{"resourceType": "Organization", "id": "o"}], managingOrganization={"reference": "#o"}),
        patient(contained=[{"resourceType": "Organization", "id": "o"}]),
        "Patient.contained[0]",
    ),
    "dom-4-contained-version": (
        patient(contained=[{"resourceType": "Organization", "id": "o"}], managingOrganization={"reference": "#o"}),
        patient(contained=[{"resourceType": "Organization", "id": "o", "meta": {"versionId": "1"}}],
                managingOrganization={"reference": "#o"}),
        "Patient.contained[0]",
    ),
    "resourceType-inside-a-datatype": (patient(name=[{"family": "x"}]),
                                       patient(name=[{"resourceType": "HumanName", "family": "x"}]), "Patient.name[0]"),
    "invalid-base64": (
        {"resourceType": "Binary", "contentType": "text/plain", "data": "aGVsbG8="},
        {"resourceType": "Binary", "contentType": "text/plain", "data": "!!!"},
        "Binary.data",
    ),
    "required-binding-status": (
        {"resourceType": "Observation", "status": "final", "code": {"text": "x"}},
        {"resourceType": "Observation", "status": "done", "code": {"text": "x"}},
        "Observation.status",
    ),
    "missing-required-element": (
        {"resourceType": "Observation", "status": "final", "code": {"text": "x"}},
        {"resourceType": "Observation", "status": "final"},
        "Observation.code",
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID_CASES))
def test_create_validates(client, case: str) -> None:
    valid, bad, expr = INVALID_CASES[case]
    rtype = valid["resourceType"]
    # The valid twin is accepted: only the defect makes the difference.
    create(client, valid)
    r = client.post(f"/fhir/{rtype}", json=bad)
    issues = assert_outcome(r, 400, severity="error")
    assert names_element(expressions(issues), expr), (expr, issues)
    # Nothing was stored by the refused write.
    total = client.get(f"/fhir/{rtype}", params={"_summary": "count"}).json()["total"]
    assert total == 1


def test_null_in_array_with_extension_companion_is_valid(client) -> None:
    # json.html: null stands in a primitive array when the _ array carries id/extensions for that item.
    sent = patient(name=[{"given": ["A", None, "C"],
                          "_given": [None, {"id": "g2", "extension": [{"url": "http://x", "valueString": "v"}]}, None]}],
                   _gender={"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
                                           "valueCode": "unknown"}]})
    created = create(client, sent)
    assert strip_server_fields(client.get(f"/fhir/Patient/{created['id']}").json()) == sent
    # ... but the two arrays must line up, and a null needs a companion.
    bad = patient(name=[{"given": ["A", None], "_given": [None, None]}])
    assert_outcome(client.post("/fhir/Patient", json=bad), 400)


def test_local_reference_without_contained_resource_is_refused(client) -> None:
    r = client.post("/fhir/Patient", json=patient(managingOrganization={"reference": "#nope"}))
    issues = assert_outcome(r, 400)
    assert names_element(expressions(issues), "Patient.managingOrganization"), issues


def test_invalid_gender_outcome_exact(client) -> None:
    issues = assert_outcome(client.post("/fhir/Patient", json=patient(gender="foo")), 400)
    errors = [i for i in issues if i["severity"] in ("error", "fatal")]
    assert len(errors) == 1
    assert errors[0]["code"] == "code-invalid"
    assert errors[0]["expression"] == ["Patient.gender"]


@pytest.mark.parametrize("case", sorted(INVALID_CASES))
def test_update_validates(client, case: str) -> None:
    valid, bad, expr = INVALID_CASES[case]
    rtype = valid["resourceType"]
    r = client.put(f"/fhir/{rtype}/v1", json={**valid, "id": "v1"})
    assert r.status_code == 201, r.text
    r = client.put(f"/fhir/{rtype}/v1", json={**bad, "id": "v1"})
    issues = assert_outcome(r, 400, severity="error")
    assert names_element(expressions(issues), expr), (expr, issues)
    # The refused update left version 1 current.
    r = client.get(f"/fhir/{rtype}/v1")
    assert r.status_code == 200 and r.json()["meta"]["versionId"] == "1"
    assert r.headers["etag"] == 'W/"1"'


def test_update_as_create_validates(client) -> None:
    assert_outcome(client.put("/fhir/Patient/p1", json=patient(id="p1", gender="foo")), 400)
    assert_outcome(client.get("/fhir/Patient/p1"), 404)


def test_body_that_is_not_an_object_is_refused(client) -> None:
    for body in (b"[]", b'"Patient"', b"42", b"null"):
        assert_outcome(client.post("/fhir/Patient", content=body, headers={"Content-Type": JSON_CT}), 400)


def test_resource_type_missing_or_other_is_refused_on_create(client) -> None:
    assert_outcome(client.post("/fhir/Patient", json={"gender": "male"}), 400)
    assert_outcome(client.post("/fhir/Patient", json={"resourceType": "Observation", "status": "final",
                                                        "code": {"text": "x"}}), 400)
    assert client.get("/fhir/Observation", params={"_summary": "count"}).json()["total"] == 0


def test_synthea_resources_are_accepted_and_stored_as_sent(client) -> None:
    bundles = load_synthea()
    sent = 0
    for bundle in bundles:
        small = len(bundle["entry"]) < 220
        seen_types: set[str] = set()
        for entry in bundle["entry"]:
            res = entry["resource"]
            rt = res["resourceType"]
            # Every resource of the small bundles, the first of each type of the others.
            if not small and rt in seen_types:
                continue
            seen_types.add(rt)
            r = client.post(f"/fhir/{rt}", json=res)
            assert r.status_code == 201, (rt, res.get("id"), r.text)
            stored = r.json()
            assert strip_server_fields(stored) == strip_server_fields(res), (rt, res.get("id"))
            sent += 1
    assert sent > 100


# -- the stored form ---------------------------------------------------------------------------


def test_created_resource_has_server_id_and_meta(client) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    sent = patient(id="client-chosen", gender="female", meta={"versionId": "77", "lastUpdated": "2001-01-01T00:00:00Z"})
    r = client.post("/fhir/Patient", json=sent)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["id"] != "client-chosen"
    assert re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", body["id"])
    assert body["meta"]["versionId"] == "1"
    assert INSTANT_RE.match(body["meta"]["lastUpdated"]), body["meta"]
    lu = _instant(body["meta"]["lastUpdated"])
    assert before <= lu <= datetime.now(UTC) + timedelta(seconds=5)
    assert body["gender"] == "female"
    assert_outcome(client.get("/fhir/Patient/client-chosen"), 404)


def test_decimal_precision_kept_byte_for_byte(client) -> None:
    raw = (b'{"resourceType":"Patient","extension":[{"url":"http://example.org/d","valueDecimal":1.50},'
           b'{"url":"http://example.org/e","valueDecimal":1.0e2},'
           b'{"url":"http://example.org/f","valueDecimal":0.000100}]}')
    r = client.post("/fhir/Patient", content=raw, headers={"Content-Type": JSON_CT})
    assert r.status_code == 201, r.text
    for body in (r.content, client.get(f"/fhir/Patient/{r.json()['id']}").content):
        assert b'"valueDecimal":1.50' in body.replace(b" ", b""), body
        assert b'"valueDecimal":1.0e2' in body.replace(b" ", b""), body
        assert b'"valueDecimal":0.000100' in body.replace(b" ", b""), body


def test_quantity_value_exponent_kept(client) -> None:
    raw = (b'{"resourceType":"Observation","status":"final","code":{"text":"w"},'
           b'"valueQuantity":{"value":1.0e2,"unit":"kg"}}')
    r = client.post("/fhir/Observation", content=raw, headers={"Content-Type": JSON_CT})
    assert r.status_code == 201, r.text
    back = client.get(f"/fhir/Observation/{r.json()['id']}")
    assert b'"value":1.0e2' in back.content.replace(b" ", b""), back.content
    # In search results too: the stored bytes are served as they are.
    s = client.get("/fhir/Observation")
    assert b'"value":1.0e2' in s.content.replace(b" ", b""), s.content


def test_timestamps_not_rewritten(client) -> None:
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
           "effectiveDateTime": "2020-01-01T10:00:00.123+02:00", "issued": "2020-01-01T08:00:00.1Z"}
    created = create(client, obs)
    back = client.get(f"/fhir/Observation/{created['id']}").json()
    assert back["effectiveDateTime"] == "2020-01-01T10:00:00.123+02:00"
    assert back["issued"] == "2020-01-01T08:00:00.1Z"
    raw = client.get(f"/fhir/Observation/{created['id']}").content
    assert b"2020-01-01T10:00:00.123+02:00" in raw


def test_member_order_and_meta_members_kept(client) -> None:
    sent = {
        "resourceType": "Patient",
        "meta": {"profile": ["http://example.org/StructureDefinition/p"],
                 "tag": [{"system": "http://example.org/tags", "code": "t1"}],
                 "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "N"}]},
        "telecom": [{"system": "phone", "value": "123"}],
        "gender": "other",
        "name": [{"given": ["Zed"], "family": "Alpha"}],
        "active": False,
        "birthDate": "1970",
    }
    created = create(client, sent)
    back = client.get(f"/fhir/Patient/{created['id']}").json()
    client_order = [k for k in sent if k not in ("meta",)]
    assert [k for k in back if k not in ("id", "meta")] == client_order
    assert list(back["name"][0]) == ["given", "family"]
    assert back["meta"]["profile"] == sent["meta"]["profile"]
    assert back["meta"]["tag"] == sent["meta"]["tag"]
    assert back["meta"]["security"] == sent["meta"]["security"]
    assert back["meta"]["versionId"] == "1"
    assert strip_server_fields(back) == sent


# -- read / vread ------------------------------------------------------------------------------


def test_read(client) -> None:
    created = create(client, patient(gender="male"))
    r = client.get(f"/fhir/Patient/{created['id']}")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith(JSON_CT)
    assert r.headers["etag"] == 'W/"1"'
    lm = parsedate_to_datetime(r.headers["last-modified"])
    lu = _instant(created["meta"]["lastUpdated"])
    assert lm == lu.replace(microsecond=0)
    assert r.json() == created


def test_read_unknown_id_is_404_outcome(client) -> None:
    create(client, patient())
    issues = assert_outcome(client.get("/fhir/Patient/does-not-exist"), 404)
    assert issues[0]["severity"] in ("error", "fatal")


def test_read_does_not_cross_types(client) -> None:
    created = create(client, patient())
    assert_outcome(client.get(f"/fhir/Observation/{created['id']}"), 404)


def test_vread(client) -> None:
    created = create(client, patient(gender="male"))
    pid = created["id"]
    assert put(client, {**created, "gender": "female"}).status_code == 200
    r1 = client.get(f"/fhir/Patient/{pid}/_history/1")
    assert r1.status_code == 200
    assert r1.json() == created
    assert r1.headers["etag"] == 'W/"1"'
    assert "last-modified" in r1.headers
    r2 = client.get(f"/fhir/Patient/{pid}/_history/2")
    assert r2.status_code == 200
    assert r2.json()["gender"] == "female" and r2.json()["meta"]["versionId"] == "2"
    assert r2.headers["etag"] == 'W/"2"'


@pytest.mark.parametrize("version", ["3", "0", "abc", "-1"])
def test_vread_unknown_version_is_404(client, version: str) -> None:
    created = create(client, patient())
    put(client, created)
    assert_outcome(client.get(f"/fhir/Patient/{created['id']}/_history/{version}"), 404)


def test_vread_unknown_id_is_404(client) -> None:
    assert_outcome(client.get("/fhir/Patient/nope/_history/1"), 404)


# -- create ------------------------------------------------------------------------------------


def test_create_response(client) -> None:
    sent = patient(gender="male", name=[{"family": "Smith"}])
    r = client.post("/fhir/Patient", json=sent)
    assert r.status_code == 201
    body = r.json()
    pid = body["id"]
    assert r.headers["location"] == f"{BASE}/Patient/{pid}/_history/1"
    assert r.headers["etag"] == 'W/"1"'
    assert parsedate_to_datetime(r.headers["last-modified"]) == _instant(body["meta"]["lastUpdated"]).replace(
        microsecond=0)
    assert r.headers["content-type"].startswith(JSON_CT)
    assert strip_server_fields(body) == sent
    assert client.get(f"/fhir/Patient/{pid}").json() == body


def test_create_assigns_distinct_ids(client) -> None:
    ids = {create(client, patient(id="same"))["id"] for _ in range(5)}
    assert len(ids) == 5
    assert client.get("/fhir/Patient", params={"_summary": "count"}).json()["total"] == 5


def test_create_prefer_minimal(client) -> None:
    r = client.post("/fhir/Patient", json=patient(gender="male"), headers={"Prefer": "return=minimal"})
    assert r.status_code == 201
    assert r.content == b""
    loc = r.headers["location"]
    m = re.fullmatch(re.escape(BASE) + r"/Patient/([^/]+)/_history/1", loc)
    assert m, loc
    assert r.headers["etag"] == 'W/"1"'
    assert client.get(f"/fhir/Patient/{m.group(1)}").json()["gender"] == "male"


def test_create_prefer_representation(client) -> None:
    r = client.post("/fhir/Patient", json=patient(gender="male"), headers={"Prefer": "return=representation"})
    assert r.status_code == 201
    assert r.json()["resourceType"] == "Patient" and r.json()["gender"] == "male"


def test_create_prefer_operation_outcome(client) -> None:
    r = client.post("/fhir/Patient", json=patient(gender="male"), headers={"Prefer": "return=OperationOutcome"})
    assert r.status_code == 201
    assert r.headers["content-type"].startswith(JSON_CT)
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    assert all(i["severity"] in ("information", "warning") for i in body["issue"])
    assert "location" in r.headers


# -- update ------------------------------------------------------------------------------------


def test_update(client) -> None:
    created = create(client, patient(gender="male"))
    pid = created["id"]
    sent = {"resourceType": "Patient", "id": pid, "gender": "female", "active": True}
    r = put(client, sent)
    assert r.status_code == 200, r.text
    body = r.json()
    assert r.headers["etag"] == 'W/"2"'
    assert body["meta"]["versionId"] == "2"
    assert strip_server_fields(body) == strip_server_fields(sent)
    assert _instant(body["meta"]["lastUpdated"]) > _instant(created["meta"]["lastUpdated"])
    assert "last-modified" in r.headers
    read = client.get(f"/fhir/Patient/{pid}")
    assert read.json() == body and read.headers["etag"] == 'W/"2"'


def test_update_ignores_client_meta_version(client) -> None:
    created = create(client, patient())
    r = put(client, {**created, "meta": {"versionId": "9", "lastUpdated": "2001-01-01T00:00:00Z",
                                         "tag": [{"code": "x"}]}})
    assert r.status_code == 200
    meta = r.json()["meta"]
    assert meta["versionId"] == "2"
    assert meta["lastUpdated"] != "2001-01-01T00:00:00Z"
    assert meta["tag"] == [{"code": "x"}]


def test_update_as_create(client) -> None:
    r = client.put("/fhir/Patient/my-id-1", json=patient(id="my-id-1", gender="male"))
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"{BASE}/Patient/my-id-1/_history/1"
    assert r.headers["etag"] == 'W/"1"'
    assert r.json()["id"] == "my-id-1" and r.json()["meta"]["versionId"] == "1"
    assert client.get("/fhir/Patient/my-id-1").json()["gender"] == "male"


def test_update_prefer_minimal(client) -> None:
    created = create(client, patient())
    r = put(client, created, headers={"Prefer": "return=minimal"})
    assert r.status_code == 200 and r.content == b""
    assert r.headers["etag"] == 'W/"2"'


def test_update_without_id_in_body_is_400(client) -> None:
    created = create(client, patient())
    assert_outcome(client.put(f"/fhir/Patient/{created['id']}", json=patient(gender="male")), 400)
    assert client.get(f"/fhir/Patient/{created['id']}").headers["etag"] == 'W/"1"'


def test_update_with_mismatched_id_is_400(client) -> None:
    created = create(client, patient())
    assert_outcome(client.put(f"/fhir/Patient/{created['id']}", json=patient(id="other")), 400)
    assert_outcome(client.get("/fhir/Patient/other"), 404)
    assert client.get(f"/fhir/Patient/{created['id']}").headers["etag"] == 'W/"1"'


def test_update_with_other_resource_type_is_400(client) -> None:
    obs = {"resourceType": "Observation", "id": "x1", "status": "final", "code": {"text": "x"}}
    assert_outcome(client.put("/fhir/Patient/x1", json=obs), 400)
    assert_outcome(client.get("/fhir/Patient/x1"), 404)
    assert_outcome(client.get("/fhir/Observation/x1"), 404)


@pytest.mark.parametrize("bad_id", ["a" * 65, "a_b", "a%20b"])
def test_update_with_invalid_id_is_400(client, bad_id: str) -> None:
    assert_outcome(client.put(f"/fhir/Patient/{bad_id}", json=patient(id=bad_id.replace("%20", " "))), 400)


def test_update_of_deleted_resource_revives_it(client) -> None:
    created = create(client, patient(gender="male"))
    pid = created["id"]
    assert client.delete(f"/fhir/Patient/{pid}").status_code == 200
    r = put(client, {**created, "gender": "female"})
    assert r.status_code in (200, 201), r.text
    assert r.json()["meta"]["versionId"] == "3"
    assert r.headers["etag"] == 'W/"3"'
    back = client.get(f"/fhir/Patient/{pid}")
    assert back.status_code == 200 and back.json()["gender"] == "female"


# -- delete ------------------------------------------------------------------------------------


def test_delete(client) -> None:
    created = create(client, patient())
    pid = created["id"]
    r = client.delete(f"/fhir/Patient/{pid}")
    assert_outcome(r, 200)
    issues = assert_outcome(client.get(f"/fhir/Patient/{pid}"), 410)
    assert issues[0]["severity"] in ("error", "fatal")
    # vread of the delete version is 410; the earlier version stays readable.
    assert_outcome(client.get(f"/fhir/Patient/{pid}/_history/2"), 410)
    old = client.get(f"/fhir/Patient/{pid}/_history/1")
    assert old.status_code == 200 and old.json() == created
    # No longer found by search.
    assert client.get("/fhir/Patient", params={"_id": pid}).json()["total"] == 0


def test_delete_is_idempotent(client) -> None:
    created = create(client, patient())
    pid = created["id"]
    assert_outcome(client.delete(f"/fhir/Patient/{pid}"), 200)
    assert_outcome(client.delete(f"/fhir/Patient/{pid}"), 200)
    assert_outcome(client.delete("/fhir/Patient/never-existed"), 200)
    # The second delete wrote no new version.
    assert_outcome(client.get(f"/fhir/Patient/{pid}/_history/3"), 404)
    # Deleting something that never existed does not make it exist (404, not 410).
    assert_outcome(client.get("/fhir/Patient/never-existed"), 404)


def test_delete_only_touches_its_resource(client) -> None:
    a = create(client, patient(gender="male"))
    b = create(client, patient(gender="female"))
    client.delete(f"/fhir/Patient/{a['id']}")
    assert client.get(f"/fhir/Patient/{b['id']}").json() == b
