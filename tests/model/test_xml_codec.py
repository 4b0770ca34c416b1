"""FHIR R4 XML codec: lossless round trips on all Synthea data, hand-written golden XML (from the
examples and rules of R4 xml.html), element order, hostile XML, and a cross-check with fhir.resources."""

from __future__ import annotations

import copy
import itertools
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from fhir_server.model import jsonio, xml_codec
from fhir_server.model.facts import get_facts
from fhir_server.model.jsonio import JsonDecimal
from fhir_server.model.xml_codec import XmlFormatError, resource_to_xml, xml_to_resource

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
SYNTHEA = SHARED / "data" / "synthea"
DECL = '<?xml version="1.0" encoding="UTF-8"?>\n'
F = "{http://hl7.org/fhir}"

# Invalid FHIR in the source data, which the codec must refuse rather than drop: Period has start/end.
KNOWN_INVALID = {("Observation", "3c766796-d8a0-480f-8215-f1e7e3afab21"): "unknown member 'stop' in Period"}


def _need_synthea() -> None:
    if not SYNTHEA.is_dir():
        pytest.skip(f"shared Synthea data not found at {SYNTHEA} (the ../shared checkout is absent)")


def _documents(set_name: str) -> Iterator[tuple[str, Any]]:
    folder = SYNTHEA / set_name
    for path in sorted(folder.glob("*.json")):
        yield path.name, jsonio.loads(path.read_bytes())
    for tgz in sorted(folder.glob("*.tar.gz")):
        with tarfile.open(tgz) as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".json"):
                    fh = tar.extractfile(member)
                    assert fh is not None
                    yield f"{tgz.name}:{member.name}", jsonio.loads(fh.read())


def _canonical_div(div: str) -> str:
    # C14N without comments: the reader drops XML comments (FHIR allows them anywhere and they carry no
    # content), and XML parsing normalises line ends, character references and attribute quoting.
    return etree.tostring(etree.fromstring(div.encode()), method="c14n", with_comments=False).decode()


def _canonical_divs(value: Any) -> Any:
    if isinstance(value, dict):
        out = {k: _canonical_divs(v) for k, v in value.items()}
        if isinstance(out.get("div"), str) and "status" in out:
            out["div"] = _canonical_div(out["div"])
        return out
    if isinstance(value, list):
        return [_canonical_divs(v) for v in value]
    return value


def _round_trip_problem(resource: dict[str, Any]) -> str | None:
    """None when JSON → XML → JSON gives the same dict, else what went wrong."""
    try:
        back = xml_to_resource(resource_to_xml(resource))
    except XmlFormatError as exc:
        return f"XmlFormatError: {exc}"
    if back == resource:
        return None
    # Exact text of a narrative can legitimately change (see _canonical_div); nothing else may.
    if _canonical_divs(back) == _canonical_divs(resource):
        return None
    return "round trip changed the resource"


# ---------------------------------------------------------------------------------------------------
# Every resource of the shared Synthea data


@pytest.mark.parametrize("set_name", ["inferno-reference", "small-10-patients", "large-100-patients"])
def test_round_trip_every_synthea_resource(set_name: str) -> None:
    """All of them, the large set included (~39k resources, read straight from the tarball)."""
    _need_synthea()
    checked = 0
    failures: list[str] = []
    refused: set[tuple[str, str]] = set()
    for doc_name, doc in _documents(set_name):
        resources = (
            [e["resource"] for e in doc.get("entry", [])] if doc["resourceType"] == "Bundle" else [doc]
        )
        for resource in resources:
            checked += 1
            key = (resource["resourceType"], resource.get("id", ""))
            problem = _round_trip_problem(resource)
            if key in KNOWN_INVALID:
                assert problem is not None and KNOWN_INVALID[key] in problem, problem
                refused.add(key)
            elif problem is not None:
                failures.append(f"{doc_name} {key}: {problem}")
        if (
            set_name != "large-100-patients"
            and doc["resourceType"] == "Bundle"
            and not any(
                (e["resource"]["resourceType"], e["resource"].get("id", "")) in KNOWN_INVALID
                for e in doc["entry"]
            )
        ):
            # The whole transaction Bundle too: entry.resource / entry.request nesting.
            problem = _round_trip_problem(doc)
            if problem is not None:
                failures.append(f"{doc_name} (whole Bundle): {problem}")
    assert checked > 0
    assert not failures, f"{len(failures)} of {checked} resources failed, e.g. " + "; ".join(failures[:5])
    if set_name == "inferno-reference":
        assert refused == set(KNOWN_INVALID)


def test_narrative_comment_is_dropped_but_content_kept() -> None:
    # Why the round trip compares divs canonically: comments are removed by the parser.
    div = '<div xmlns="http://www.w3.org/1999/xhtml"><!-- note --><p>a\r\nb &#160;</p></div>'
    resource = {"resourceType": "Patient", "text": {"status": "generated", "div": div}}
    back = xml_to_resource(resource_to_xml(resource))
    assert back["text"]["div"] == '<div xmlns="http://www.w3.org/1999/xhtml"><p>a\nb \xa0</p></div>'
    assert _canonical_div(back["text"]["div"]) == _canonical_div(div)


# ---------------------------------------------------------------------------------------------------
# Golden XML written by hand from R4 xml.html

GOLDEN_PATIENT_JSON = jsonio.loads(
    b"""{
  "resourceType": "Patient",
  "id": "example",
  "meta": {"versionId": "1", "lastUpdated": "2013-06-08T10:57:34+01:00"},
  "text": {
    "status": "generated",
    "div": "<div xmlns=\\"http://www.w3.org/1999/xhtml\\"><p>Peter <b>Chalmers</b> &amp; family</p></div>"
  },
  "contained": [
    {"resourceType": "Organization", "id": "org1", "name": "Gastroenterology"}
  ],
  "identifier": [{"use": "usual", "system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345"}],
  "active": true,
  "name": [
    {"id": "n1", "use": "official", "family": "Chalmers", "given": ["Peter", "James"]}
  ],
  "gender": "male",
  "birthDate": "1970-03-30",
  "_birthDate": {
    "id": "314159",
    "extension": [
      {"url": "http://example.org/fhir/StructureDefinition/text", "valueString": "Easter 1970"}
    ]
  },
  "deceasedBoolean": false,
  "multipleBirthInteger": 2,
  "managingOrganization": {"reference": "#org1"}
}"""
)

GOLDEN_PATIENT_XML = (
    DECL
    + """<Patient xmlns="http://hl7.org/fhir">
  <id value="example"/>
  <meta>
    <versionId value="1"/>
    <lastUpdated value="2013-06-08T10:57:34+01:00"/>
  </meta>
  <text>
    <status value="generated"/>
    <div xmlns="http://www.w3.org/1999/xhtml"><p>Peter <b>Chalmers</b> &amp; family</p></div>
  </text>
  <contained>
    <Organization>
      <id value="org1"/>
      <name value="Gastroenterology"/>
    </Organization>
  </contained>
  <identifier>
    <use value="usual"/>
    <system value="urn:oid:1.2.36.146.595.217.0.1"/>
    <value value="12345"/>
  </identifier>
  <active value="true"/>
  <name id="n1">
    <use value="official"/>
    <family value="Chalmers"/>
    <given value="Peter"/>
    <given value="James"/>
  </name>
  <gender value="male"/>
  <birthDate id="314159" value="1970-03-30">
    <extension url="http://example.org/fhir/StructureDefinition/text">
      <valueString value="Easter 1970"/>
    </extension>
  </birthDate>
  <deceasedBoolean value="false"/>
  <multipleBirthInteger value="2"/>
  <managingOrganization>
    <reference value="#org1"/>
  </managingOrganization>
</Patient>
"""
)


def test_golden_patient_pretty_both_directions() -> None:
    assert resource_to_xml(GOLDEN_PATIENT_JSON, pretty=True).decode() == GOLDEN_PATIENT_XML
    assert xml_to_resource(GOLDEN_PATIENT_XML.encode()) == GOLDEN_PATIENT_JSON


def test_golden_patient_compact_is_pretty_without_indentation() -> None:
    compact = resource_to_xml(GOLDEN_PATIENT_JSON)
    body = "".join(line.strip() for line in GOLDEN_PATIENT_XML.splitlines()[1:])
    assert compact.decode() == DECL + body
    assert xml_to_resource(compact) == GOLDEN_PATIENT_JSON


GOLDEN_PRIMITIVE_ARRAYS_JSON: dict[str, Any] = {
    "resourceType": "Patient",
    "name": [
        {
            "given": ["Peter", None, "J"],
            "_given": [
                None,
                {"extension": [{"url": "http://example.org/reason", "valueCode": "masked"}]},
                {"id": "g3"},
            ],
        },
        # Only extensions, no values at all: the value array is left out entirely.
        {"_given": [{"extension": [{"url": "http://example.org/x", "valueBoolean": True}]}]},
    ],
    # A single primitive with an extension and no value.
    "_gender": {
        "extension": [
            {"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}
        ]
    },
}
GOLDEN_PRIMITIVE_ARRAYS_XML = (
    DECL + '<Patient xmlns="http://hl7.org/fhir">'
    "<name>"
    '<given value="Peter"/>'
    '<given><extension url="http://example.org/reason"><valueCode value="masked"/></extension></given>'
    '<given id="g3" value="J"/>'
    "</name>"
    '<name><given><extension url="http://example.org/x"><valueBoolean value="true"/></extension></given></name>'
    '<gender><extension url="http://hl7.org/fhir/StructureDefinition/data-absent-reason">'
    '<valueCode value="unknown"/></extension></gender>'
    "</Patient>"
)


def test_golden_primitive_extensions_and_nulls_both_directions() -> None:
    assert resource_to_xml(GOLDEN_PRIMITIVE_ARRAYS_JSON).decode() == GOLDEN_PRIMITIVE_ARRAYS_XML
    assert xml_to_resource(GOLDEN_PRIMITIVE_ARRAYS_XML.encode()) == GOLDEN_PRIMITIVE_ARRAYS_JSON


GOLDEN_VALUES_JSON = jsonio.loads(
    b"""{
  "resourceType": "Observation",
  "id": "v1",
  "status": "final",
  "code": {"text": "He said \\"<hi>\\" & left\\nline2\\tTab\\r"},
  "valueQuantity": {"value": 1.50, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"},
  "interpretation": [{"coding": [{"code": "N", "userSelected": true}]}],
  "component": [
    {"code": {"text": "a"}, "valueInteger": -7},
    {"code": {"text": "b"}, "valueQuantity": {"value": 1.0e3}},
    {"code": {"text": "c"}, "valueQuantity": {"value": 12}},
    {"code": {"text": "d"}, "valueBoolean": false},
    {"code": {"text": "e"}, "valueSampledData": {"origin": {"value": 0}, "period": 10.0, "dimensions": 1, "data": "1 2"}}
  ]
}"""
)
GOLDEN_VALUES_XML = (
    DECL + '<Observation xmlns="http://hl7.org/fhir"><id value="v1"/><status value="final"/>'
    '<code><text value="He said &quot;&lt;hi&gt;&quot; &amp; left&#10;line2&#9;Tab&#13;"/></code>'
    '<valueQuantity><value value="1.50"/><unit value="mg"/><system value="http://unitsofmeasure.org"/>'
    '<code value="mg"/></valueQuantity>'
    '<interpretation><coding><code value="N"/><userSelected value="true"/></coding></interpretation>'
    '<component><code><text value="a"/></code><valueInteger value="-7"/></component>'
    '<component><code><text value="b"/></code><valueQuantity><value value="1.0e3"/></valueQuantity></component>'
    '<component><code><text value="c"/></code><valueQuantity><value value="12"/></valueQuantity></component>'
    '<component><code><text value="d"/></code><valueBoolean value="false"/></component>'
    '<component><code><text value="e"/></code><valueSampledData><origin><value value="0"/></origin>'
    '<period value="10.0"/><dimensions value="1"/><data value="1 2"/></valueSampledData></component>'
    "</Observation>"
)


def test_golden_value_formatting_and_escaping_both_directions() -> None:
    assert resource_to_xml(GOLDEN_VALUES_JSON).decode() == GOLDEN_VALUES_XML
    back = xml_to_resource(GOLDEN_VALUES_XML.encode())
    assert back == GOLDEN_VALUES_JSON
    # Exact number representation survives: decimals stay literal text, integers (and positiveInt) ints.
    assert type(back["valueQuantity"]["value"]) is JsonDecimal and back["valueQuantity"]["value"] == "1.50"
    assert back["component"][1]["valueQuantity"]["value"] == "1.0e3"
    assert back["component"][2]["valueQuantity"]["value"] == 12
    assert back["component"][4]["valueSampledData"]["dimensions"] == 1
    assert back["code"]["text"] == 'He said "<hi>" & left\nline2\tTab\r'
    assert jsonio.dumps(back) == jsonio.dumps(GOLDEN_VALUES_JSON)


GOLDEN_BUNDLE_JSON: dict[str, Any] = {
    "resourceType": "Bundle",
    "id": "b1",
    "type": "searchset",
    "total": 1,
    "link": [{"relation": "self", "url": "http://example.org/fhir/Patient?name=peter"}],
    "entry": [
        {
            "fullUrl": "http://example.org/fhir/Patient/p1",
            "resource": {"resourceType": "Patient", "id": "p1", "active": True},
            "search": {"mode": "match", "score": 1},
        }
    ],
}
GOLDEN_BUNDLE_XML = (
    DECL + '<Bundle xmlns="http://hl7.org/fhir"><id value="b1"/><type value="searchset"/><total value="1"/>'
    '<link><relation value="self"/><url value="http://example.org/fhir/Patient?name=peter"/></link>'
    '<entry><fullUrl value="http://example.org/fhir/Patient/p1"/>'
    '<resource><Patient><id value="p1"/><active value="true"/></Patient></resource>'
    '<search><mode value="match"/><score value="1"/></search></entry>'
    "</Bundle>"
)


def test_golden_bundle_entry_resource_both_directions() -> None:
    assert resource_to_xml(GOLDEN_BUNDLE_JSON).decode() == GOLDEN_BUNDLE_XML
    assert xml_to_resource(GOLDEN_BUNDLE_XML.encode()) == GOLDEN_BUNDLE_JSON


def test_extension_url_and_element_id_are_attributes_and_nested_extensions() -> None:
    resource = {
        "resourceType": "Patient",
        "extension": [
            {
                "id": "e1",
                "url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
                "extension": [
                    {
                        "url": "ombCategory",
                        "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238", "code": "2106-3"},
                    },
                    {"url": "text", "valueString": "White"},
                ],
            }
        ],
        "contact": [{"id": "c1", "name": {"family": "X"}}],
    }
    xml = resource_to_xml(resource).decode()
    assert '<extension id="e1" url="http://hl7.org/fhir/us/core/StructureDefinition/us-core-race">' in xml
    assert '<extension url="ombCategory"><valueCoding>' in xml
    assert '<contact id="c1"><name><family value="X"/></name></contact>' in xml
    assert xml_to_resource(xml.encode()) == resource


def test_reader_ignores_comments_pis_whitespace_and_schema_location() -> None:
    xml = b"""<?xml version="1.0" encoding="UTF-8"?>
<?xml-stylesheet href="x.xsl"?>
<!-- leading comment -->
<Patient xmlns="http://hl7.org/fhir" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
    xsi:schemaLocation="http://hl7.org/fhir ../../schema/patient.xsd">
  <!-- comment between elements -->
  <id value="p"/>
  <?some-pi data?>
  <gender value="male"><!-- inside a primitive --></gender>
</Patient>
"""
    assert xml_to_resource(xml) == {"resourceType": "Patient", "id": "p", "gender": "male"}


def test_reader_div_gets_its_own_default_namespace_only() -> None:
    xml = b"""<Patient xmlns="http://hl7.org/fhir" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
       xmlns:h="http://www.w3.org/1999/xhtml"><text><status value="generated"/>
      <h:div><h:p>x</h:p></h:div></text></Patient>"""
    assert xml_to_resource(xml)["text"]["div"] == '<div xmlns="http://www.w3.org/1999/xhtml"><p>x</p></div>'


def test_utf16_document_is_read() -> None:
    xml = '<?xml version="1.0" encoding="UTF-16"?><Patient xmlns="http://hl7.org/fhir"><gender value="männlich"/></Patient>'
    assert xml_to_resource(xml.encode("utf-16")) == {"resourceType": "Patient", "gender": "männlich"}


# ---------------------------------------------------------------------------------------------------
# Element order


def _scramble(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _scramble(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_scramble(v) for v in value]
    return value


def _child_names(el: Any) -> list[str]:
    return [etree.QName(c).localname for c in el if isinstance(c.tag, str)]


def test_scrambled_members_come_out_in_spec_order() -> None:
    scrambled = _scramble(GOLDEN_PATIENT_JSON)
    assert list(scrambled)[0] != "resourceType"
    assert resource_to_xml(scrambled, pretty=True).decode() == GOLDEN_PATIENT_XML

    root = etree.fromstring(resource_to_xml(_scramble(GOLDEN_VALUES_JSON)))
    facts = get_facts()
    order = [e.name for e in facts.types["Observation"].elements]
    names = _child_names(root)
    base = ["value" if n.startswith("value") else n for n in names]
    assert base == sorted(base, key=order.index)
    quantity = root.find(F + "valueQuantity")
    assert _child_names(quantity) == ["value", "unit", "system", "code"]


def test_synthea_resources_scrambled_give_identical_xml() -> None:
    _need_synthea()
    path = sorted((SYNTHEA / "small-10-patients").glob("*.json"))[0]
    bundle = jsonio.loads(path.read_bytes())
    for entry in bundle["entry"][:200]:
        resource = entry["resource"]
        assert resource_to_xml(_scramble(resource)) == resource_to_xml(resource)


# ---------------------------------------------------------------------------------------------------
# Errors: XML → JSON


def _assert_no_chained_lxml_error(exc: BaseException) -> None:
    assert exc.__cause__ is None
    assert exc.__context__ is None or exc.__suppress_context__


def _patient(body: str) -> bytes:
    return f'<Patient xmlns="http://hl7.org/fhir">{body}</Patient>'.encode()


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        (b"<Patient xmlns='http://hl7.org/fhir'><id value='x'></Patient>", "malformed XML"),
        (b"", "malformed XML"),
        (b"not xml at all", "malformed XML"),
        (_patient("<gender value='male'/><gender value='female'/>"), "'gender' repeats"),
        (_patient("<nickname value='x'/>"), "unknown element 'nickname' in Patient at Patient.nickname"),
        (_patient("<active value='yes'/>"), "invalid boolean value 'yes'"),
        (_patient("<active value='True'/>"), "invalid boolean value 'True'"),
        (_patient("<multipleBirthInteger value='1.5'/>"), "invalid integer value '1.5'"),
        (_patient("<multipleBirthInteger value='007'/>"), "invalid integer value '007'"),
        (
            b"<Observation xmlns='http://hl7.org/fhir'><status value='final'/><code><text value='x'/></code>"
            b"<valueQuantity><value value='1,5'/></valueQuantity></Observation>",
            "invalid decimal value '1,5' (not a decimal) at Observation.valueQuantity.value (line 1)",
        ),
        (
            b"<Observation xmlns='http://hl7.org/fhir'><valueQuantity><value value='.5'/></valueQuantity></Observation>",
            "invalid decimal value",
        ),
        (b"<Patient><id value='x'/></Patient>", "not in the FHIR namespace"),
        (b"<Patient xmlns='http://hl7.org/fhir/'><id value='x'/></Patient>", "not in the FHIR namespace"),
        (
            _patient("<x:gender xmlns:x='urn:other' value='male'/>"),
            "'{urn:other}gender' is not in the FHIR namespace",
        ),
        (
            b"<Unicorn xmlns='http://hl7.org/fhir'><id value='x'/></Unicorn>",
            "unknown resource type 'Unicorn'",
        ),
        (b"<HumanName xmlns='http://hl7.org/fhir'><family value='x'/></HumanName>", "unknown resource type"),
        (_patient("<gender>male</gender>"), "text content 'male' is not allowed"),
        (_patient("stray<gender value='male'/>"), "text content 'stray' is not allowed"),
        (
            _patient("<name value='Peter'/>"),
            "value attribute is not allowed on the complex element HumanName",
        ),
        (_patient("<name><family value='x' colour='red'/></name>"), "attribute 'colour' is not allowed"),
        (_patient("<gender/>"), "neither a value nor extensions"),
        (_patient("<gender value=''/>"), "empty value attribute"),
        (_patient("<name><id value='n1'/></name>"), "'id' must be an XML attribute"),
        (_patient("<gender value='male'/><birthDate value='1970'/><active value='true'/>"), "out of order"),
        (
            _patient("<deceasedBoolean value='true'/><deceasedDateTime value='2020'/>"),
            "two types for one choice",
        ),
        (_patient("<contained><Patient/><Patient/></contained>"), "exactly one resource"),
        (_patient("<text><status value='generated'/><div/></text>"), "div must be an XHTML element"),
        (
            _patient("<text><status value='generated'/><div>hi</div></text>"),
            "text content 'hi' is not allowed",
        ),
        (_patient("<gender id='g' value='male'><modifierExtension url='x'/></gender>"), "unknown element"),
        (
            _patient("<extension url='a'><valueString value='x'/><valueCode value='y'/></extension>"),
            "two types",
        ),
    ],
)
def test_reader_errors(xml: bytes, message: str) -> None:
    with pytest.raises(XmlFormatError) as info:
        xml_to_resource(xml)
    assert message in str(info.value)
    assert "Traceback" not in str(info.value)
    _assert_no_chained_lxml_error(info.value)


def test_reader_error_names_the_path_and_line() -> None:
    xml = b"""<Patient xmlns="http://hl7.org/fhir">
  <name><given value="a"/></name>
  <name><given value="b"/><given value="c"/><given value="d"><extension url="u"><valueInteger value="x"/></extension></given></name>
</Patient>"""
    with pytest.raises(
        XmlFormatError, match=r"Patient\.name\[1\]\.given\[2\]\.extension\.valueInteger \(line 3\)"
    ):
        xml_to_resource(xml)


def test_non_bytes_input_is_refused() -> None:
    with pytest.raises(XmlFormatError, match="expected XML bytes"):
        xml_to_resource("<Patient xmlns='http://hl7.org/fhir'/>")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------
# Hostile XML

PASSWD = Path("/etc/passwd")
XXE = b"""<?xml version="1.0"?>
<!DOCTYPE Patient [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<Patient xmlns="http://hl7.org/fhir"><text><status value="generated"/>
<div xmlns="http://www.w3.org/1999/xhtml">&xxe;</div></text><gender value="male"/></Patient>"""
XXE_ATTR = b"""<?xml version="1.0"?>
<!DOCTYPE Patient [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<Patient xmlns="http://hl7.org/fhir"><gender value="&xxe;"/></Patient>"""
BILLION_LAUGHS = (
    b'<?xml version="1.0"?>\n<!DOCTYPE lolz [\n <!ENTITY lol "lol">\n'
    + b"".join(
        b' <!ENTITY lol%d "%s">\n' % (i, (b"&lol%s;" % (str(i - 1).encode() if i > 1 else b"")) * 10)
        for i in range(1, 10)
    )
    + b']>\n<Patient xmlns="http://hl7.org/fhir"><text><status value="generated"/>'
    b'<div xmlns="http://www.w3.org/1999/xhtml">&lol9;</div></text></Patient>'
)
EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE Patient SYSTEM "http://127.0.0.1:9/evil.dtd">
<Patient xmlns="http://hl7.org/fhir"><gender value="male"/></Patient>"""
PARAMETER_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE Patient [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]>
<Patient xmlns="http://hl7.org/fhir"><gender value="male"/></Patient>"""


def _secret_lines() -> list[str]:
    if not PASSWD.is_file():
        return []
    return [line for line in PASSWD.read_text(errors="replace").splitlines() if line.strip()][:3]


@pytest.mark.parametrize("payload", [XXE, XXE_ATTR, BILLION_LAUGHS, EXTERNAL_DTD, PARAMETER_ENTITY])
@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
def test_doctype_documents_are_refused(payload: bytes, encoding: str) -> None:
    data = payload
    if encoding == "utf-16":
        data = (
            payload.replace(b'version="1.0"?>', b'version="1.0" encoding="UTF-16"?>', 1)
            .decode()
            .encode("utf-16")
        )
    start = time.perf_counter()
    with pytest.raises(XmlFormatError, match="DOCTYPE") as info:
        xml_to_resource(data)
    assert time.perf_counter() - start < 1.0
    for line in _secret_lines():
        assert line not in str(info.value)


@pytest.mark.parametrize("payload", [XXE, XXE_ATTR, BILLION_LAUGHS, EXTERNAL_DTD, PARAMETER_ENTITY])
def test_doctype_refused_even_without_the_byte_prescan(
    payload: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The byte scan runs first; with it off, the parser settings and the post-parse check still hold."""
    monkeypatch.setattr(xml_codec, "_DOCTYPE_MARKS", ())
    with pytest.raises(XmlFormatError) as info:
        xml_to_resource(payload)
    for line in _secret_lines():
        assert line not in str(info.value)


def test_external_entity_is_never_expanded_by_the_parser() -> None:
    """Parse the XXE payload with the codec's own parser directly: the file content is nowhere in the tree."""
    secrets = _secret_lines()
    if not secrets:
        pytest.skip("/etc/passwd is not readable here")
    root = etree.fromstring(XXE, xml_codec._parsers.parser)
    serialised = etree.tostring(root, encoding="unicode")
    text = "".join(root.itertext())
    for line in secrets:
        assert line not in serialised
        assert line not in text
    # And in the attribute form libxml2 refuses outright.
    with pytest.raises(etree.XMLSyntaxError):
        etree.fromstring(XXE_ATTR, xml_codec._parsers.parser)


def _nested_extensions(levels: int) -> bytes:
    return _patient('<extension url="u">' * levels + '<valueString value="x"/>' + "</extension>" * levels)


def test_nesting_depth_is_bounded() -> None:
    assert xml_to_resource(_nested_extensions(40))["extension"][0]["url"] == "u"
    with pytest.raises(XmlFormatError, match="nesting deeper than 100 levels"):
        xml_to_resource(_nested_extensions(150))
    with pytest.raises(XmlFormatError, match="nesting deeper than 10 levels"):
        xml_to_resource(_nested_extensions(12), max_depth=10)
    # Far beyond: libxml2's own limit (256 levels without huge_tree) or ours, refused either way.
    with pytest.raises(XmlFormatError):
        xml_to_resource(_nested_extensions(100_000))


def test_deep_xhtml_counts_towards_the_depth_bound() -> None:
    div = '<div xmlns="http://www.w3.org/1999/xhtml">' + "<span>" * 120 + "x" + "</span>" * 120 + "</div>"
    xml = _patient(f'<text><status value="generated"/>{div}</text>')
    with pytest.raises(XmlFormatError, match="nesting deeper than 100 levels"):
        xml_to_resource(xml)
    assert xml_to_resource(xml, max_depth=200)["text"]["div"] == div


# ---------------------------------------------------------------------------------------------------
# Errors: JSON → XML


@pytest.mark.parametrize(
    ("resource", "message"),
    [
        ({"resourceType": "Unicorn"}, "unknown resourceType 'Unicorn'"),
        ({"id": "x"}, "resourceType is missing"),
        ({"resourceType": "Patient", "nickname": "x"}, "unknown member 'nickname' in Patient"),
        (
            {"resourceType": "Patient", "name": [{"family": "x", "middle": "y"}]},
            "unknown member 'middle' in HumanName (at Patient.name[0])",
        ),
        (
            {"resourceType": "Patient", "deceasedBoolean": True, "deceasedDateTime": "2020"},
            "a choice element takes one type",
        ),
        ({"resourceType": "Patient", "active": "true"}, "expected a JSON boolean"),
        ({"resourceType": "Patient", "multipleBirthInteger": True}, "expected a JSON integer"),
        ({"resourceType": "Patient", "gender": 1}, "expected a JSON string"),
        ({"resourceType": "Patient", "gender": None}, "(at Patient.gender)"),
        ({"resourceType": "Patient", "name": {"family": "x"}}, "expected a non-empty JSON array"),
        (
            {"resourceType": "Patient", "name": [{"given": ["a", None]}]},
            "null in 'given' without a matching '_given'",
        ),
        (
            {"resourceType": "Patient", "name": [{"given": ["a"], "_given": [None, {"id": "x"}]}]},
            "differ in length",
        ),
        ({"resourceType": "Patient", "_gender": {"url": "x"}}, "unknown member 'url' in '_gender'"),
        (
            {"resourceType": "Patient", "name": [{"family": "x", "given": ["a", ""]}]},
            "an empty string is not a FHIR value (at Patient.name[0].given[1])",
        ),
        (
            {"resourceType": "Patient", "extension": [{"url": ""}]},
            "not a FHIR value (at Patient.extension[0])",
        ),
        ({"resourceType": "Patient", "_name": {"id": "x"}}, "unknown member '_name'"),
        ({"resourceType": "Patient", "gender": "a\x00b"}, "character XML cannot represent"),
        ({"resourceType": "Patient", "gender": "a\ud800b"}, "character XML cannot represent"),
        (
            {"resourceType": "Patient", "text": {"status": "generated", "div": "<div>no namespace</div>"}},
            "namespace",
        ),
        (
            {
                "resourceType": "Patient",
                "text": {"status": "generated", "div": "<p xmlns='http://www.w3.org/1999/xhtml'/>"},
            },
            "must be a <div>",
        ),
        (
            {
                "resourceType": "Patient",
                "text": {
                    "status": "generated",
                    "div": "<div xmlns='http://www.w3.org/1999/xhtml'>&nbsp;</div>",
                },
            },
            "not well-formed",
        ),
        (
            {
                "resourceType": "Patient",
                "text": {"status": "generated", "div": "<div xmlns='http://www.w3.org/1999/xhtml'><b></div>"},
            },
            "not well-formed",
        ),
        (
            {
                "resourceType": "Patient",
                "text": {
                    "status": "generated",
                    "div": "<!DOCTYPE div [<!ENTITY x SYSTEM 'file:///etc/passwd'>]>"
                    "<div xmlns='http://www.w3.org/1999/xhtml'>&x;</div>",
                },
            },
            "DOCTYPE",
        ),
        (
            {"resourceType": "Observation", "valueQuantity": {"value": JsonDecimal("1.5<x/>")}},
            "invalid decimal literal",
        ),
        ({"resourceType": "Observation", "valueQuantity": {"value": float("nan")}}, "expected a JSON number"),
        (
            {"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Nope"}}]},
            "(at Bundle.entry[0].resource)",
        ),
    ],
)
def test_writer_errors(resource: dict[str, Any], message: str) -> None:
    with pytest.raises(XmlFormatError) as info:
        resource_to_xml(resource)
    assert message in str(info.value)
    _assert_no_chained_lxml_error(info.value)


def test_writer_error_path_points_into_the_resource() -> None:
    resource = copy.deepcopy(GOLDEN_PATIENT_JSON)
    resource["_birthDate"]["extension"][0]["valueString"] = 42
    with pytest.raises(XmlFormatError, match=r"at Patient\._birthDate\.extension\[0\]\.valueString"):
        resource_to_xml(resource)


def test_writer_refuses_runaway_nesting() -> None:
    resource: dict[str, Any] = {"resourceType": "Patient"}
    ext: dict[str, Any] = {"url": "u", "valueString": "x"}
    for _ in range(5000):
        ext = {"url": "u", "extension": [ext]}
    resource["extension"] = [ext]
    with pytest.raises(XmlFormatError, match="nested too deeply"):
        resource_to_xml(resource)


def test_layout_cache_stays_bounded() -> None:
    plan = xml_codec._plans().types["Coding"]
    values = {"id": "c", "system": "s", "version": "1", "code": "c", "display": "d", "userSelected": True}
    expected = None
    shapes = 0
    for order in itertools.permutations(values):  # 720 distinct key tuples for one type
        xml = resource_to_xml(
            {"resourceType": "Observation", "code": {"coding": [{k: values[k] for k in order}]}}
        )
        expected = expected or xml
        assert xml == expected
        shapes += 1
        assert len(plan.layouts) <= xml_codec._LAYOUT_CACHE_MAX
    assert shapes > xml_codec._LAYOUT_CACHE_MAX


def test_pretty_output_reads_back_the_same() -> None:
    _need_synthea()
    path = sorted((SYNTHEA / "small-10-patients").glob("*.json"))[1]
    bundle = jsonio.loads(path.read_bytes())
    for entry in bundle["entry"][:100]:
        resource = entry["resource"]
        pretty = resource_to_xml(resource, pretty=True)
        assert pretty.count(b"\n") > 2
        assert xml_to_resource(pretty) == xml_to_resource(resource_to_xml(resource))


def test_writer_accepts_plain_floats_and_big_integers() -> None:
    resource = {"resourceType": "Observation", "valueQuantity": {"value": 0.1}}
    assert b'<value value="0.1"/>' in resource_to_xml(resource)
    big = jsonio.loads(b'{"resourceType": "Observation", "valueQuantity": {"value": 12345678901234567890}}')
    assert xml_to_resource(resource_to_xml(big)) == big


# ---------------------------------------------------------------------------------------------------
# Cross-check: our XML is FHIR XML that fhir.resources reads back to the same model


def test_fhir_resources_reads_our_xml_to_the_same_model() -> None:
    """One resource of every type in a Synthea patient bundle (15 types).

    Synthea data only: fhir.resources 8.x mishandles the XML ``id`` attribute of datatype elements
    (it writes ``<name><id value=".."/>`` and drops ``<name id="..">`` on reading), so resources with
    element ids (e.g. ElementDefinition, Attachment with id) would differ for that reason alone.
    """
    _need_synthea()
    from fhir.resources.R4B import get_fhir_model_class

    path = sorted((SYNTHEA / "small-10-patients").glob("*.json"))[0]
    bundle = jsonio.loads(path.read_bytes())
    seen: set[str] = set()
    for entry in bundle["entry"]:
        resource = entry["resource"]
        rtype = resource["resourceType"]
        if rtype in seen:
            continue
        seen.add(rtype)
        model_class = get_fhir_model_class(rtype)
        from_json = model_class.model_validate(resource)
        from_xml = model_class.model_validate_xml(resource_to_xml(resource))
        assert from_xml.model_dump() == from_json.model_dump(), rtype
    assert len(seen) >= 10
