"""Formats (R4 http.html#mime-type, xml.html, json.html): _format, Accept, Content-Type, _pretty,
XML in and out, XML safety and the body size limit."""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.http.conftest import (
    FHIR_NS,
    JSON_CT,
    XML_CT,
    assert_outcome,
    bundle_links,
    create,
    patient,
    strip_server_fields,
)

NS = "{" + FHIR_NS + "}"
XHTML = "http://www.w3.org/1999/xhtml"


def _xml(r) -> ET.Element:  # noqa: ANN001
    assert r.headers["content-type"].startswith(XML_CT), r.headers["content-type"]
    return ET.fromstring(r.content)


def _local(tag: str) -> str:
    assert tag.startswith(NS), tag
    return tag[len(NS):]


def _count(client, rtype: str = "Patient") -> int:
    return client.get(f"/fhir/{rtype}", params={"_summary": "count"}).json()["total"]


# -- choosing the response format --------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt,kind",
    [("json", "json"), ("application/fhir+json", "json"), ("application/json", "json"),
     ("xml", "xml"), ("application/fhir+xml", "xml"), ("application/xml", "xml")],
)
def test_format_parameter(client, fmt: str, kind: str) -> None:
    created = create(client, patient(gender="male"))
    r = client.get(f"/fhir/Patient/{created['id']}", params={"_format": fmt})
    assert r.status_code == 200
    if kind == "json":
        assert r.headers["content-type"].startswith(JSON_CT)
        assert r.json() == created
    else:
        root = _xml(r)
        assert root.tag == NS + "Patient"
        assert root.find(NS + "id").get("value") == created["id"]
        assert root.find(NS + "gender").get("value") == "male"


def test_format_parameter_with_unencoded_plus(client) -> None:
    # "application/fhir+xml" written literally in a URL arrives as "application/fhir xml".
    created = create(client, patient())
    r = client.get(f"/fhir/Patient/{created['id']}?_format=application/fhir+xml")
    assert r.status_code == 200
    assert _xml(r).tag == NS + "Patient"


@pytest.mark.parametrize(
    "accept,kind",
    [("application/fhir+json", "json"), ("application/json", "json"), ("*/*", "json"),
     ("application/fhir+xml", "xml"), ("application/xml", "xml"), ("text/xml", "xml"),
     ("text/html, application/fhir+xml;q=0.9, */*;q=0.1", "xml"),
     ("application/fhir+xml;q=0.2, application/fhir+json;q=0.8", "json"),
     ("application/fhir+json; fhirVersion=4.0", "json")],
)
def test_accept_header(client, accept: str, kind: str) -> None:
    created = create(client, patient(gender="male"))
    r = client.get(f"/fhir/Patient/{created['id']}", headers={"Accept": accept})
    assert r.status_code == 200, r.text
    if kind == "json":
        assert r.headers["content-type"].startswith(JSON_CT)
        assert r.json() == created
    else:
        assert _xml(r).tag == NS + "Patient"


def test_format_parameter_wins_over_accept(client) -> None:
    created = create(client, patient())
    r = client.get(f"/fhir/Patient/{created['id']}", params={"_format": "xml"},
                   headers={"Accept": "application/fhir+json"})
    assert _xml(r).tag == NS + "Patient"
    r = client.get(f"/fhir/Patient/{created['id']}", params={"_format": "json"},
                   headers={"Accept": "application/fhir+xml"})
    assert r.headers["content-type"].startswith(JSON_CT) and r.json() == created


def test_unsupported_format_parameter_is_406(client) -> None:
    created = create(client, patient())
    assert_outcome(client.get(f"/fhir/Patient/{created['id']}", params={"_format": "text/html"}), 406)
    assert_outcome(client.get("/fhir/Patient", params={"_format": "turtle"}), 406)


def test_unsupported_accept_is_406(client) -> None:
    created = create(client, patient())
    assert_outcome(client.get(f"/fhir/Patient/{created['id']}", headers={"Accept": "text/html"}), 406)
    assert_outcome(client.get("/fhir/metadata", headers={"Accept": "image/png"}), 406)


def test_pretty(client) -> None:
    created = create(client, patient(gender="male", name=[{"family": "X"}]))
    url = f"/fhir/Patient/{created['id']}"
    plain = client.get(url)
    pretty = client.get(url, params={"_pretty": "true"})
    assert pretty.status_code == 200
    assert b"\n" not in plain.content.strip()
    assert b"\n  " in pretty.content
    assert pretty.json() == plain.json() == created
    pretty_xml = client.get(url, params={"_pretty": "true", "_format": "xml"})
    assert b"\n  <" in pretty_xml.content
    assert _local(_xml(pretty_xml).tag) == "Patient"


def test_pretty_false_is_compact(client) -> None:
    created = create(client, patient(gender="male"))
    r = client.get(f"/fhir/Patient/{created['id']}", params={"_pretty": "false"})
    assert b"\n" not in r.content.strip()


# -- XML responses -----------------------------------------------------------------------------


def test_xml_resource_element_order_follows_the_definition(client) -> None:
    # JSON keeps the client's member order; XML must use the order of the R4 definition.
    sent = {"resourceType": "Patient", "birthDate": "1970-01-01", "gender": "female",
            "name": [{"given": ["Ann"], "family": "Lee"}], "active": True}
    created = create(client, sent)
    root = _xml(client.get(f"/fhir/Patient/{created['id']}", params={"_format": "xml"}))
    assert [_local(c.tag) for c in root] == ["id", "meta", "active", "name", "gender", "birthDate"]
    assert [_local(c.tag) for c in root.find(NS + "name")] == ["family", "given"]
    meta = root.find(NS + "meta")
    assert meta.find(NS + "versionId").get("value") == "1"
    assert meta.find(NS + "lastUpdated").get("value") == created["meta"]["lastUpdated"]
    assert root.find(NS + "active").get("value") == "true"


def test_xml_decimal_precision(client) -> None:
    raw = (b'{"resourceType":"Observation","status":"final","code":{"text":"w"},'
           b'"valueQuantity":{"value":1.50,"unit":"kg"}}')
    r = client.post("/fhir/Observation", content=raw, headers={"Content-Type": JSON_CT})
    assert r.status_code == 201
    root = _xml(client.get(f"/fhir/Observation/{r.json()['id']}", params={"_format": "xml"}))
    assert root.find(f"{NS}valueQuantity/{NS}value").get("value") == "1.50"


def test_xml_search_bundle(client) -> None:
    ids = sorted(create(client, patient(gender="male"))["id"] for _ in range(3))
    r = client.get("/fhir/Patient", params={"_format": "xml", "_count": "2"})
    assert r.status_code == 200
    root = _xml(r)
    assert root.tag == NS + "Bundle"
    assert root.find(NS + "type").get("value") == "searchset"
    assert root.find(NS + "total").get("value") == "3"
    entries = root.findall(NS + "entry")
    assert len(entries) == 2
    for e in entries:
        res = e.find(f"{NS}resource/{NS}Patient")
        assert res is not None
        assert e.find(NS + "fullUrl").get("value").endswith("/Patient/" + res.find(NS + "id").get("value"))
        assert e.find(f"{NS}search/{NS}mode").get("value") == "match"
    links = {ln.find(NS + "relation").get("value"): ln.find(NS + "url").get("value") for ln in root.findall(NS + "link")}
    assert "_format=xml" in links["next"]  # the next page comes in the same format
    nxt = client.get(links["next"][len("http://testserver"):])
    assert _xml(nxt).tag == NS + "Bundle"
    got = [e.find(f"{NS}resource/{NS}Patient/{NS}id").get("value") for e in entries]
    got += [e.find(f"{NS}resource/{NS}Patient/{NS}id").get("value") for e in _xml(nxt).findall(NS + "entry")]
    assert sorted(got) == ids


def test_xml_history_bundle(client) -> None:
    created = create(client, patient())
    client.delete(f"/fhir/Patient/{created['id']}")
    root = _xml(client.get(f"/fhir/Patient/{created['id']}/_history", params={"_format": "xml"}))
    assert root.tag == NS + "Bundle"
    assert root.find(NS + "type").get("value") == "history"
    entries = root.findall(NS + "entry")
    assert [e.find(f"{NS}request/{NS}method").get("value") for e in entries] == ["DELETE", "POST"]
    assert entries[0].find(NS + "resource") is None
    assert entries[1].find(f"{NS}resource/{NS}Patient") is not None


def test_json_search_links_carry_format(client) -> None:
    for _ in range(3):
        create(client, patient())
    bundle = client.get("/fhir/Patient", params={"_count": "1", "_pretty": "true"}).json()
    assert "_pretty=true" in bundle_links(bundle)["next"]


# -- XML requests ------------------------------------------------------------------------------

XML_PATIENT = b"""<?xml version="1.0" encoding="UTF-8"?>
<Patient xmlns="http://hl7.org/fhir">
  <id value="ignored-id"/>
  <meta><profile value="http://example.org/StructureDefinition/p"/></meta>
  <text><status value="generated"/><div xmlns="http://www.w3.org/1999/xhtml"><p>Ann <b>Lee</b></p></div></text>
  <contained><Organization><id value="org1"/><name value="Acme &amp; Co"/></Organization></contained>
  <extension url="http://example.org/weight"><valueDecimal value="1.50"/></extension>
  <identifier><system value="http://example.org/mrn"/><value value="12345"/></identifier>
  <active value="true"/>
  <name><use value="official"/><family value="Lee"/><given value="Ann"/><given value="Marie"/></name>
  <gender value="female"/>
  <birthDate id="bd" value="1970-01-01">
    <extension url="http://hl7.org/fhir/StructureDefinition/patient-birthTime">
      <valueDateTime value="1970-01-01T10:00:00+02:00"/>
    </extension>
  </birthDate>
  <multipleBirthInteger value="2"/>
  <managingOrganization><reference value="#org1"/></managingOrganization>
</Patient>"""

EXPECTED_JSON = {
    "resourceType": "Patient",
    "meta": {"profile": ["http://example.org/StructureDefinition/p"]},
    "contained": [{"resourceType": "Organization", "id": "org1", "name": "Acme & Co"}],
    "extension": [{"url": "http://example.org/weight", "valueDecimal": 1.50}],
    "identifier": [{"system": "http://example.org/mrn", "value": "12345"}],
    "active": True,
    "name": [{"use": "official", "family": "Lee", "given": ["Ann", "Marie"]}],
    "gender": "female",
    "birthDate": "1970-01-01",
    "_birthDate": {"id": "bd", "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                                              "valueDateTime": "1970-01-01T10:00:00+02:00"}]},
    "multipleBirthInteger": 2,
    "managingOrganization": {"reference": "#org1"},
}


def _check_expected(back: dict) -> None:
    text = back.pop("text")
    assert text["status"] == "generated"
    div = text["div"]
    assert div.startswith("<div") and f'xmlns="{XHTML}"' in div
    assert "<p>Ann <b>Lee</b></p>" in div
    assert strip_server_fields(back) == EXPECTED_JSON


def test_create_from_xml(client) -> None:
    r = client.post("/fhir/Patient", content=XML_PATIENT, headers={"Content-Type": XML_CT})
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    assert pid != "ignored-id"
    back = client.get(f"/fhir/Patient/{pid}")
    assert b'"valueDecimal":1.50' in back.content.replace(b" ", b"")
    _check_expected(back.json())


def test_create_from_xml_answers_in_xml_when_asked(client) -> None:
    r = client.post("/fhir/Patient", content=XML_PATIENT, params={"_format": "xml"},
                    headers={"Content-Type": "application/fhir+xml; charset=utf-8"})
    assert r.status_code == 201
    root = _xml(r)
    assert root.tag == NS + "Patient"
    assert root.find(f"{NS}extension/{NS}valueDecimal").get("value") == "1.50"
    assert root.find(f"{NS}text/{{{XHTML}}}div") is not None
    assert root.find(NS + "birthDate").get("id") == "bd"


def test_xml_round_trip(client) -> None:
    r = client.post("/fhir/Patient", content=XML_PATIENT, headers={"Content-Type": XML_CT})
    first = r.json()
    xml_body = client.get(f"/fhir/Patient/{first['id']}", params={"_format": "xml"}).content
    r2 = client.post("/fhir/Patient", content=xml_body, headers={"Content-Type": XML_CT})
    assert r2.status_code == 201, r2.text
    assert strip_server_fields(r2.json()) == strip_server_fields(first)


def test_update_from_xml(client) -> None:
    body = XML_PATIENT.replace(b"ignored-id", b"xml-put-1")
    r = client.put("/fhir/Patient/xml-put-1", content=body, headers={"Content-Type": "application/xml"})
    assert r.status_code == 201, r.text
    back = client.get("/fhir/Patient/xml-put-1").json()
    assert back["id"] == "xml-put-1"
    _check_expected(back)


def test_xml_body_is_validated(client) -> None:
    bad = b'<Patient xmlns="http://hl7.org/fhir"><gender value="foo"/></Patient>'
    issues = assert_outcome(client.post("/fhir/Patient", content=bad, headers={"Content-Type": XML_CT}), 400)
    assert "Patient.gender" in [e for i in issues for e in i.get("expression", [])]
    bad = b'<Patient xmlns="http://hl7.org/fhir"><active value="yes"/></Patient>'
    assert_outcome(client.post("/fhir/Patient", content=bad, headers={"Content-Type": XML_CT}), 400)
    assert _count(client) == 0


@pytest.mark.parametrize(
    "body",
    [
        b'<Patient><gender value="male"/></Patient>',  # no namespace
        b'<Patient xmlns="http://example.org"><gender value="male"/></Patient>',  # wrong namespace
        b'<Patient xmlns="http://hl7.org/fhir"><foo value="x"/></Patient>',  # unknown element
        b'<Patient xmlns="http://hl7.org/fhir"><gender>male</gender></Patient>',  # text instead of @value
        b'<Patient xmlns="http://hl7.org/fhir"><gender value="male"/><active value="true"/></Patient>',  # order
        b'<Patient xmlns="http://hl7.org/fhir"><gender value="male"/></Patient><x/>',  # two roots
        b'<Patient xmlns="http://hl7.org/fhir"><gender value="male"></Patient>',  # not well-formed
        b'<Observation xmlns="http://hl7.org/fhir"><status value="final"/></Observation>',  # other type
    ],
)
def test_invalid_xml_is_400(client, body: bytes) -> None:
    assert_outcome(client.post("/fhir/Patient", content=body, headers={"Content-Type": XML_CT}), 400)
    assert _count(client) == 0


def test_json_body_with_xml_content_type_is_400(client) -> None:
    body = json.dumps(patient()).encode()
    assert_outcome(client.post("/fhir/Patient", content=body, headers={"Content-Type": XML_CT}), 400)


@pytest.mark.parametrize("ct", ["text/plain", "application/x-www-form-urlencoded", "text/html", "image/png"])
def test_unsupported_content_type_is_415(client, ct: str) -> None:
    body = json.dumps(patient()).encode()
    assert_outcome(client.post("/fhir/Patient", content=body, headers={"Content-Type": ct}), 415)
    assert_outcome(client.put("/fhir/Patient/x1", content=json.dumps(patient(id="x1")).encode(),
                              headers={"Content-Type": ct}), 415)
    assert _count(client) == 0


@pytest.mark.parametrize("ct", ["application/json", "application/fhir+json; charset=utf-8", "text/json"])
def test_json_content_types_accepted(client, ct: str) -> None:
    r = client.post("/fhir/Patient", content=json.dumps(patient(gender="male")).encode(),
                    headers={"Content-Type": ct})
    assert r.status_code == 201, r.text


def test_malformed_json_is_400(client) -> None:
    for body in (b'{"resourceType": "Patient",', b"{'resourceType': 'Patient'}", b'{"a":1}}', b"\xff\xfe{}"):
        assert_outcome(client.post("/fhir/Patient", content=body, headers={"Content-Type": JSON_CT}), 400)
    assert _count(client) == 0


def test_empty_body_is_400(client) -> None:
    assert_outcome(client.post("/fhir/Patient", content=b"", headers={"Content-Type": JSON_CT}), 400)


# -- XML safety --------------------------------------------------------------------------------

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE Patient [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<Patient xmlns="http://hl7.org/fhir"><name><family value="&xxe;"/></name></Patient>"""

XXE_PARAM = b"""<?xml version="1.0"?>
<!DOCTYPE Patient [<!ENTITY % ext SYSTEM "file:///etc/passwd"> %ext;]>
<Patient xmlns="http://hl7.org/fhir"><gender value="male"/></Patient>"""

LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<Patient xmlns="http://hl7.org/fhir"><name><family value="&lol9;"/></name></Patient>"""

UNDECLARED_ENTITY = b'<Patient xmlns="http://hl7.org/fhir"><name><family value="&xxe;"/></name></Patient>'


@pytest.mark.parametrize("body", [XXE, XXE_PARAM, XXE.replace(b"<?xml version=\"1.0\"?>\n", b"")])
def test_xxe_is_refused(client, body: bytes) -> None:
    passwd = Path("/etc/passwd").read_bytes().split(b"\n")[0] if Path("/etc/passwd").exists() else b""
    for ct in (XML_CT, "application/xml", None):
        headers = {"Content-Type": ct} if ct else {}
        r = client.post("/fhir/Patient", content=body, headers=headers)
        assert_outcome(r, 400)
        assert b"root:" not in r.content
        if passwd:
            assert passwd not in r.content
    r = client.put("/fhir/Patient/x", content=body.replace(b"<name>", b'<id value="x"/><name>'),
                   headers={"Content-Type": XML_CT})
    assert_outcome(r, 400)
    assert _count(client) == 0


def test_billion_laughs_is_refused_quickly(client) -> None:
    t = time.monotonic()
    r = client.post("/fhir/Patient", content=LAUGHS, headers={"Content-Type": XML_CT})
    assert time.monotonic() - t < 2.0
    assert_outcome(r, 400)
    assert b"lollol" not in r.content
    assert _count(client) == 0


def test_undeclared_entity_is_400(client) -> None:
    assert_outcome(client.post("/fhir/Patient", content=UNDECLARED_ENTITY, headers={"Content-Type": XML_CT}), 400)


def test_xml_nesting_depth_is_bounded(client) -> None:
    depth = 5000
    body = (b'<Patient xmlns="http://hl7.org/fhir"><extension url="http://e">'
            + b'<extension url="http://e">' * depth + b"</extension>" * depth
            + b"</extension></Patient>")
    t = time.monotonic()
    assert_outcome(client.post("/fhir/Patient", content=body, headers={"Content-Type": XML_CT}), 400)
    assert time.monotonic() - t < 5.0


def test_json_nesting_depth_is_bounded(client) -> None:
    depth = 100_000
    body = b'{"resourceType":"Patient","extension":' + b"[" * depth + b"]" * depth + b"}"
    r = client.post("/fhir/Patient", content=body, headers={"Content-Type": JSON_CT})
    assert_outcome(r, 400)


# -- body size ---------------------------------------------------------------------------------


def test_body_over_the_limit_is_413(make_client) -> None:
    client = make_client(max_body_bytes=1000)
    small = json.dumps(patient(gender="male")).encode()
    assert client.post("/fhir/Patient", content=small, headers={"Content-Type": JSON_CT}).status_code == 201
    big = json.dumps(patient(name=[{"family": "x" * 2000}])).encode()
    r = client.post("/fhir/Patient", content=big, headers={"Content-Type": JSON_CT})
    assert_outcome(r, 413)
    r = client.put("/fhir/Patient/big1", content=json.dumps(patient(id="big1", name=[{"family": "x" * 2000}])).encode(),
                   headers={"Content-Type": JSON_CT})
    assert_outcome(r, 413)
    assert _count(client) == 1


def test_streamed_body_over_the_limit_is_413(make_client) -> None:
    client = make_client(max_body_bytes=1000)
    big = json.dumps(patient(name=[{"family": "x" * 5000}])).encode()

    def chunks():  # noqa: ANN202 - no Content-Length: the body is sent chunked
        for i in range(0, len(big), 500):
            yield big[i:i + 500]

    r = client.post("/fhir/Patient", content=chunks(), headers={"Content-Type": JSON_CT})
    assert "content-length" not in {k.lower() for k in r.request.headers}
    assert_outcome(r, 413)
    assert _count(client) == 0


def test_lying_content_length_does_not_bypass_the_limit(make_client) -> None:
    client = make_client(max_body_bytes=1000)
    big = json.dumps(patient(name=[{"family": "x" * 5000}])).encode()

    def chunks():  # noqa: ANN202
        yield big

    r = client.post("/fhir/Patient", content=chunks(), headers={"Content-Type": JSON_CT, "Content-Length": "10"})
    assert r.status_code in (400, 413), r.text
    assert _count(client) == 0


# -- more XML round trips ----------------------------------------------------------------------


def test_xml_escaping_and_unicode_round_trip(client) -> None:
    sent = patient(name=[{"family": "Müller 😀 <&>\"'", "given": ["line1\nline2\ttab"]}])
    created = create(client, sent)
    x = client.get(f"/fhir/Patient/{created['id']}", params={"_format": "xml"})
    root = _xml(x)
    name = root.find(NS + "name")
    assert name.find(NS + "family").get("value") == "Müller 😀 <&>\"'"
    # A newline/tab in an attribute must be written as a character reference to survive parsing.
    assert name.find(NS + "given").get("value") == "line1\nline2\ttab"
    r = client.post("/fhir/Patient", content=x.content, headers={"Content-Type": XML_CT})
    assert r.status_code == 201, r.text
    assert strip_server_fields(r.json()) == sent


def test_xml_primitive_extensions_and_nulls_round_trip(client) -> None:
    sent = patient(name=[{"given": ["A", None, "C"],
                          "_given": [None, {"id": "g2", "extension": [{"url": "http://x", "valueString": "v"}]}, None]}],
                   _gender={"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
                                           "valueCode": "unknown"}]})
    created = create(client, sent)
    x = client.get(f"/fhir/Patient/{created['id']}", params={"_format": "xml"})
    root = _xml(x)
    givens = root.findall(f"{NS}name/{NS}given")
    assert [g.get("value") for g in givens] == ["A", None, "C"]
    assert givens[1].get("id") == "g2"
    assert root.find(NS + "gender").get("value") is None
    assert root.find(f"{NS}gender/{NS}extension").get("url").endswith("data-absent-reason")
    r = client.post("/fhir/Patient", content=x.content, headers={"Content-Type": XML_CT})
    assert r.status_code == 201, r.text
    assert strip_server_fields(r.json()) == sent


def test_xml_comments_and_schema_location_are_accepted(client) -> None:
    body = (b'<?xml version="1.0"?><!-- c --><Patient xmlns="http://hl7.org/fhir" '
            b'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
            b'xsi:schemaLocation="http://hl7.org/fhir ../patient.xsd"><!-- inside --><gender value="male"/></Patient>')
    r = client.post("/fhir/Patient", content=body, headers={"Content-Type": XML_CT})
    assert r.status_code == 201, r.text
    assert strip_server_fields(r.json()) == patient(gender="male")


def test_prefer_outcome_and_minimal_in_xml(client) -> None:
    r = client.post("/fhir/Patient", params={"_format": "xml"}, json=patient(),
                    headers={"Prefer": "return=OperationOutcome"})
    assert r.status_code == 201
    assert _xml(r).tag == NS + "OperationOutcome"
    r = client.post("/fhir/Patient", params={"_format": "xml"}, json=patient(), headers={"Prefer": "return=minimal"})
    assert r.status_code == 201 and r.content == b""


def test_xml_search_outcome_entry(client) -> None:
    create(client, patient())
    root = _xml(client.get("/fhir/Patient", params={"_format": "xml", "foo": "bar"}))
    modes = [e.find(f"{NS}search/{NS}mode").get("value") for e in root.findall(NS + "entry")]
    assert modes == ["match", "outcome"]
    oo = root.findall(NS + "entry")[1].find(f"{NS}resource/{NS}OperationOutcome")
    assert oo is not None
    assert "foo" in oo.find(f"{NS}issue/{NS}diagnostics").get("value")


def test_xml_summary_count(client) -> None:
    create(client, patient())
    create(client, patient())
    root = _xml(client.get("/fhir/Patient", params={"_format": "xml", "_summary": "count"}))
    assert root.find(NS + "total").get("value") == "2"
    assert root.findall(NS + "entry") == []
