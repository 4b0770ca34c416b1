"""Shared fixtures and helpers of the HTTP tests: a fresh server and database per test."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fhir_server.app import create_app
from fhir_server.config import Settings

BASE = "http://testserver/fhir"
JSON_CT = "application/fhir+json"
XML_CT = "application/fhir+xml"
FHIR_NS = "http://hl7.org/fhir"
SHARED = Path(__file__).resolve().parents[2].parent / "shared"
SYNTHEA_SMALL = SHARED / "data" / "synthea" / "small-10-patients"


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    """Factory: a started TestClient on a fresh SQLite database; extra Settings as keywords."""
    opened: list[TestClient] = []

    def factory(**overrides: Any) -> TestClient:
        n = len(opened)
        settings = Settings(
            database_url=f"sqlite:///{tmp_path}/t{n}.db", base_url=BASE, **overrides
        )
        client = TestClient(create_app(settings), raise_server_exceptions=False)
        client.__enter__()
        opened.append(client)
        return client

    yield factory
    for c in opened:
        c.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


# -- helpers ---------------------------------------------------------------------------------


def patient(**extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", **extra}


def create(client: TestClient, resource: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """POST a resource, assert 201 and return the created resource (JSON)."""
    r = client.post(f"/fhir/{resource['resourceType']}", json=resource, **kwargs)
    assert r.status_code == 201, r.text
    return r.json()


def put(client: TestClient, resource: dict[str, Any], **kwargs: Any):  # noqa: ANN201
    return client.put(f"/fhir/{resource['resourceType']}/{resource['id']}", json=resource, **kwargs)


def assert_outcome(r: Any, status: int, *, code: str | None = None, severity: str | None = None) -> list[dict]:
    """The response has ``status`` and a JSON OperationOutcome body; returns its issues."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith(JSON_CT), r.headers.get("content-type")
    body = r.json()
    assert body["resourceType"] == "OperationOutcome", body
    issues = body["issue"]
    assert issues, body
    for i in issues:
        assert i["severity"] in ("fatal", "error", "warning", "information"), i
        assert isinstance(i["code"], str) and i["code"], i
    if code is not None:
        assert code in [i["code"] for i in issues], body
    if severity is not None:
        assert severity in [i["severity"] for i in issues], body
    return issues


def expressions(issues: list[dict]) -> list[str]:
    return [e for i in issues for e in i.get("expression", [])]


def strip_server_fields(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource without id and the server's meta members (versionId, lastUpdated)."""
    out = {k: v for k, v in resource.items() if k != "id"}
    meta = {k: v for k, v in out.get("meta", {}).items() if k not in ("versionId", "lastUpdated")}
    if meta:
        out["meta"] = meta
    else:
        out.pop("meta", None)
    return out


def bundle_links(bundle: dict[str, Any]) -> dict[str, str]:
    return {link["relation"]: link["url"] for link in bundle.get("link", [])}


def local(url: str) -> str:
    """An absolute link of the server made relative for the TestClient (and checked to be absolute)."""
    assert url.startswith(BASE + "/") or url.startswith(BASE + "?") or url == BASE, url
    return url[len("http://testserver"):]


def walk_pages(client: TestClient, first: dict[str, Any], limit: int = 200) -> list[dict[str, Any]]:
    """All pages of a Bundle following absolute ``next`` links."""
    pages = [first]
    seen_urls: set[str] = set()
    while "next" in bundle_links(pages[-1]):
        url = bundle_links(pages[-1])["next"]
        assert url not in seen_urls, f"next link loops: {url}"
        seen_urls.add(url)
        r = client.get(local(url))
        assert r.status_code == 200, r.text
        pages.append(r.json())
        assert len(pages) < limit
    return pages


def match_entries(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in bundle.get("entry", []) if e.get("search", {}).get("mode") == "match"]


def load_synthea(name_filter: Callable[[Path], bool] | None = None) -> list[dict[str, Any]]:
    if not SYNTHEA_SMALL.is_dir():
        pytest.skip(f"Synthea test data not present at {SYNTHEA_SMALL} (optional ../shared folder)")
    files = sorted(p for p in SYNTHEA_SMALL.glob("*.json") if name_filter is None or name_filter(p))
    return [json.loads(p.read_bytes()) for p in files]
