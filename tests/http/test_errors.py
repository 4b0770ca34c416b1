"""Errors (R4 http.html, operationoutcome.html): every failure is an OperationOutcome in the negotiated
format, with the right status, and never a traceback."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET

import pytest

from tests.http.conftest import FHIR_NS, XML_CT, assert_outcome, create, patient

NS = "{" + FHIR_NS + "}"


def _xml_outcome(r, status: int) -> ET.Element:  # noqa: ANN001
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith(XML_CT), r.headers["content-type"]
    root = ET.fromstring(r.content)
    assert root.tag == NS + "OperationOutcome"
    issues = root.findall(NS + "issue")
    assert issues
    for i in issues:
        assert i.find(NS + "severity").get("value") in ("fatal", "error", "warning", "information")
        assert i.find(NS + "code").get("value")
    return root


# -- unknown paths and types -------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/fhir/Foo", "/fhir/Foo/1", "/fhir/Foo/_history", "/fhir/Foo/1/_history/1"])
def test_unknown_type_is_404(client, path: str) -> None:
    issues = assert_outcome(client.get(path), 404)
    assert any("Foo" in (i.get("diagnostics") or "") for i in issues)


def test_too_deep_path_is_404(client) -> None:
    created = create(client, patient())
    assert_outcome(client.get(f"/fhir/Patient/{created['id']}/_history/1/extra"), 404)


@pytest.mark.parametrize("path", ["/fhir/Patient/_history/1", "/fhir/Patient/123/NotAType"])
def test_paths_that_are_no_interaction_are_404(client, path: str) -> None:
    assert_outcome(client.get(path), 404)


# -- methods -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method,path,allowed",
    [("POST", "/fhir/Patient/123", {"GET", "PUT", "DELETE", "PATCH"}),
     ("DELETE", "/fhir/metadata", {"GET"}),
     ("PUT", "/fhir/_history", {"GET"}),
     ("POST", "/fhir/Patient/123/_history", {"GET"}),
     ("DELETE", "/fhir/Patient/_history", {"GET"}),
     ("POST", "/fhir/Patient/123/_history/1", {"GET"}),
     ("PUT", "/fhir/Patient/_search", {"GET", "POST"})],
)
def test_wrong_method_is_405(client, method: str, path: str, allowed: set[str]) -> None:
    r = client.request(method, path, json=patient(id="123"))
    assert_outcome(r, 405)
    assert {m.strip() for m in r.headers["allow"].split(",")} == allowed


def test_head_is_supported_where_get_is(client) -> None:
    created = create(client, patient())
    r = client.head(f"/fhir/Patient/{created['id']}")
    assert r.status_code == 200
    assert r.headers["etag"] == 'W/"1"'
    assert r.content == b""
    assert client.head("/fhir/metadata").status_code == 200


@pytest.mark.parametrize(
    "method,path",
    [("GET", "/fhir/Patient/$everything"), ("POST", "/fhir/Patient/$meta"),
     ("GET", "/fhir/Observation/1/$everything"), ("POST", "/fhir/$reindex"), ("GET", "/fhir/$meta")],
)
def test_unimplemented_operations_are_501(client, method: str, path: str) -> None:
    r = client.request(method, path, json={"resourceType": "Parameters"} if method == "POST" else None)
    assert_outcome(r, 501)


def test_compartment_search_limits(client) -> None:
    # Compartment search works per type (tests/search covers the results); what is left refused:
    assert_outcome(client.get("/fhir/Patient/123/*"), 501)
    assert_outcome(client.get("/fhir/Observation/123/Patient"), 404)  # Observation is no compartment
    assert_outcome(client.get("/fhir/Patient/123/Organization"), 404)  # not in the Patient compartment


# -- unexpected failures -----------------------------------------------------------------------


def _boom(*_a, **_k):  # noqa: ANN002, ANN003, ANN202
    raise RuntimeError("secret-detail")


async def _async_boom(*_a, **_k):  # noqa: ANN002, ANN003, ANN202
    raise RuntimeError("secret-detail")


@pytest.mark.parametrize(
    "method_name,call",
    [
        ("read", lambda c: c.get("/fhir/Patient/abc")),
        ("create", lambda c: c.post("/fhir/Patient", json=patient())),
        ("update", lambda c: c.put("/fhir/Patient/abc", json=patient(id="abc"))),
        ("delete", lambda c: c.delete("/fhir/Patient/abc")),
        ("search", lambda c: c.get("/fhir/Patient")),
        ("history", lambda c: c.get("/fhir/_history")),
    ],
)
def test_unexpected_exception_is_500_without_details(client, monkeypatch, method_name: str, call) -> None:  # noqa: ANN001
    backend = client.app.ctx.backend
    monkeypatch.setattr(backend, method_name, _boom)
    if method_name in ("create", "update"):  # a SQLite file database takes these on the event loop
        assert backend.async_writes
        monkeypatch.setattr(backend, f"{method_name}_async", _async_boom)
    r = call(client)
    issues = assert_outcome(r, 500)
    assert issues[0]["severity"] in ("fatal", "error")
    assert b"secret-detail" not in r.content
    assert b"Traceback" not in r.content
    assert b"RuntimeError" not in r.content
    assert b".py" not in r.content


def test_unexpected_exception_in_xml(client, monkeypatch) -> None:
    monkeypatch.setattr(client.app.ctx.backend, "read", _boom)
    r = client.get("/fhir/Patient/abc", params={"_format": "xml"})
    _xml_outcome(r, 500)
    assert b"secret-detail" not in r.content and b"Traceback" not in r.content


# -- errors in XML -----------------------------------------------------------------------------


def test_errors_in_xml(client) -> None:
    _xml_outcome(client.get("/fhir/Patient/unknown", params={"_format": "xml"}), 404)
    _xml_outcome(client.get("/fhir/Patient/unknown", headers={"Accept": "application/fhir+xml"}), 404)
    _xml_outcome(client.get("/fhir/Foo", params={"_format": "xml"}), 404)
    _xml_outcome(client.post("/fhir/Patient/1", params={"_format": "xml"}, json=patient()), 405)
    _xml_outcome(client.post("/fhir/Patient", params={"_format": "xml"}, json=patient(gender="foo")), 400)
    _xml_outcome(client.get("/fhir/Patient", params={"_format": "xml", "_contained": "true"}), 400)
    _xml_outcome(client.patch("/fhir/Patient/1", params={"_format": "xml"}, content=b"[]",
                              headers={"Content-Type": "application/json-patch+json"}), 404)
    created = create(client, patient())
    client.delete(f"/fhir/Patient/{created['id']}")
    root = _xml_outcome(client.get(f"/fhir/Patient/{created['id']}", params={"_format": "xml"}), 410)
    assert root.find(f"{NS}issue/{NS}code").get("value") in ("deleted", "not-found", "processing")


def test_validation_error_in_xml_names_the_element(client) -> None:
    r = client.post("/fhir/Patient", params={"_format": "xml"}, json=patient(gender="foo"))
    root = _xml_outcome(r, 400)
    exprs = [e.get("value") for e in root.iter(NS + "expression")]
    assert "Patient.gender" in exprs
    assert root.find(f"{NS}issue/{NS}code").get("value") == "code-invalid"


def test_delete_outcome_in_xml(client) -> None:
    created = create(client, patient())
    _xml_outcome(client.delete(f"/fhir/Patient/{created['id']}", params={"_format": "xml"}), 200)


# -- invalid parameters ------------------------------------------------------------------------


def test_post_search_with_wrong_content_type(client) -> None:
    r = client.post("/fhir/Patient/_search", content=b'{"_id":"x"}', headers={"Content-Type": "application/json"})
    assert r.status_code in (400, 415), r.text
    assert_outcome(r, r.status_code)


def test_health(client) -> None:
    r = client.get("/health")
    assert r.status_code == 200
    assert r.json().get("status") == "ok"
    # The profile plans are compiled in the background after start; /health says when that is done.
    deadline = time.monotonic() + 120
    while r.json()["profiles"] == "compiling" and time.monotonic() < deadline:
        time.sleep(0.1)
        r = client.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "ok", "profiles": "ready"}


def test_health_reports_database_down(client, monkeypatch) -> None:
    monkeypatch.setattr(client.app.ctx.backend, "ping", lambda: False)
    r = client.get("/health")
    assert r.status_code == 503
