"""Helpers of the bulk $export tests: kick-off, polling, the manifest checked against the Bulk Data
Access IG v2.0.0 (export.html#response---complete-status), and the NDJSON files read back.

Everything here works with a FastAPI TestClient (in-process server) and with an httpx.Client
talking to a real server process: URLs are the absolute ones the server hands out.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any
from urllib.parse import unquote, urlencode

from tests.http.conftest import JSON_CT

Key = tuple[str, str]  # (resourceType, id)

ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}
NDJSON_CT = "application/fhir+ndjson"
INSTANT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")
RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]+")


def key_of(resource: dict[str, Any]) -> Key:
    return resource["resourceType"], resource["id"]


def auth(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def assert_outcome(r: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """``r`` has ``status`` and an OperationOutcome (FHIR JSON) body with at least one issue."""
    assert r.status_code == status, (r.status_code, r.text[:2000])
    assert r.headers["content-type"].startswith(JSON_CT), r.headers.get("content-type")
    body = r.json()
    assert body["resourceType"] == "OperationOutcome", body
    assert body["issue"], body
    if code is not None:
        assert code in [i["code"] for i in body["issue"]], body
    return dict(body)


def kickoff(client: Any, url: str, *, params: Any = None, parameters: dict[str, Any] | None = None,
            headers: dict[str, str] | None = None, base: str) -> str:
    """Start an export (GET, or POST with a Parameters body); assert 202 and return the absolute
    status URL of Content-Location."""
    hdrs = {**ASYNC, **(headers or {})}
    if parameters is None:
        r = client.get(url, params=params, headers=hdrs)
    else:
        r = client.post(url, params=params, headers={**hdrs, "Content-Type": "application/fhir+json"},
                        content=json.dumps(parameters))
    assert r.status_code == 202, (r.status_code, r.text[:2000])
    location = r.headers.get("content-location")
    assert location and location.startswith(base + "/"), (location, base)
    return str(location)


def poll(client: Any, status_url: str, *, headers: dict[str, str] | None = None, timeout: float = 30.0,
         sleep: float = 0.03) -> tuple[Any, list[str]]:
    """Poll until the status is no longer 202; returns the last response and the X-Progress seen.
    Every 202 must carry X-Progress and Retry-After (export.html#response---in-progress-status)."""
    progress: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(status_url, headers=headers or {})
        if r.status_code != 202:
            return r, progress
        assert r.headers.get("x-progress"), r.headers
        retry = r.headers.get("retry-after")
        assert retry is not None and retry.strip().isdigit(), r.headers
        progress.append(r.headers["x-progress"])
        assert time.monotonic() < deadline, f"export still running after {timeout} s: {progress[-3:]}"
        time.sleep(sleep)


def wait_manifest(client: Any, status_url: str, *, headers: dict[str, str] | None = None,
                  timeout: float = 30.0) -> dict[str, Any]:
    r, _ = poll(client, status_url, headers=headers, timeout=timeout)
    assert r.status_code == 200, (r.status_code, r.text[:2000])
    assert r.headers["content-type"].split(";")[0].strip() == "application/json", r.headers["content-type"]
    return dict(r.json())


def check_manifest(manifest: dict[str, Any], *, request: str, requires_token: bool, base: str) -> None:
    """The complete-status body against the IG (export.html#response---complete-status)."""
    allowed = {"transactionTime", "request", "requiresAccessToken", "output", "error", "extension", "deleted"}
    assert set(manifest) <= allowed, set(manifest) - allowed
    assert {"transactionTime", "request", "requiresAccessToken", "output", "error"} <= set(manifest), manifest
    assert isinstance(manifest["transactionTime"], str) and INSTANT.fullmatch(manifest["transactionTime"]), manifest
    # The kick-off URL, compared fully decoded: servers may or may not percent-encode its query (that
    # it round-trips to the same parameters is test_manifest_request_round_trips).
    assert _decoded(manifest["request"]) == _decoded(request), (manifest["request"], request)
    assert manifest["requiresAccessToken"] is requires_token, manifest
    assert isinstance(manifest["output"], list) and isinstance(manifest["error"], list), manifest
    urls = []
    for item in manifest["output"]:
        assert set(item) <= {"type", "url", "count", "extension"}, item
        assert RESOURCE_TYPE.fullmatch(item["type"]), item
        assert isinstance(item["url"], str) and item["url"].startswith(base + "/"), (item, base)
        assert isinstance(item["count"], int) and item["count"] > 0, item
        urls.append(item["url"])
    for item in manifest["error"]:
        assert item["type"] == "OperationOutcome", item
        assert item["url"].startswith(base + "/"), item
        urls.append(item["url"])
    assert len(urls) == len(set(urls)), "a file URL is listed twice"
    if "extension" in manifest:
        assert isinstance(manifest["extension"], dict), manifest["extension"]


def _decoded(url: str) -> str:
    while (once := unquote(url)) != url:
        url = once
    return url


def read_ndjson(client: Any, url: str, *, headers: dict[str, str] | None = None,
                expected_type: str | None = None) -> list[dict[str, Any]]:
    """One output file: application/fhir+ndjson, one resource (of the file's type) per line.
    Sent without Accept (optional in the IG, export.html#file-request; see test_file_accept_header)."""
    r = client.get(url, headers=headers or {})
    assert r.status_code == 200, (url, r.status_code, r.text[:1000])
    assert r.headers["content-type"].split(";")[0].strip() == NDJSON_CT, r.headers["content-type"]
    text = r.content.decode("utf-8")
    assert text.endswith("\n"), "NDJSON lines end with a newline"
    lines = text[:-1].split("\n")
    out = []
    for line in lines:
        assert line.strip() == line and line, f"blank or padded line in {url}"
        res = json.loads(line)
        assert isinstance(res, dict) and "resourceType" in res and "id" in res, line[:200]
        if expected_type is not None:
            assert res["resourceType"] == expected_type, (res["resourceType"], expected_type)
        out.append(res)
    return out


def download(client: Any, manifest: dict[str, Any], *, headers: dict[str, str] | None = None,
             tolerate: frozenset[Key] = frozenset()) -> dict[Key, dict[str, Any]]:
    """Every resource of the manifest's output files; asserts counts and that nothing comes twice
    (except identical copies of the ``tolerate`` keys: a known product bug, see GROUP_TWICE)."""
    found: dict[Key, dict[str, Any]] = {}
    for item in manifest["output"]:
        resources = read_ndjson(client, item["url"], headers=headers, expected_type=item["type"])
        assert len(resources) == item["count"], (item, len(resources))
        for res in resources:
            key = key_of(res)
            if key in tolerate and key in found:
                assert found[key] == res
                continue
            assert key not in found, f"{key} exported twice"
            found[key] = res
    return found


def export(client: Any, url: str, *, base: str, params: Any = None, parameters: dict[str, Any] | None = None,
           headers: dict[str, str] | None = None, requires_token: bool = False,
           tolerate: frozenset[Key] = frozenset()) -> tuple[dict[str, Any], dict[Key, dict[str, Any]]]:
    """Kick off, wait, check the manifest, download: (manifest, resources by key)."""
    status_url = kickoff(client, url, params=params, parameters=parameters, headers=headers, base=base)
    manifest = wait_manifest(client, status_url, headers=headers)
    request = url if url.startswith("http") else base + url[len("/fhir"):]
    if params:
        query = urlencode(params, safe=",?=/:|")
        request = f"{request}?{query}"
    check_manifest(manifest, request=request, requires_token=requires_token, base=base)
    return manifest, download(client, manifest, headers=headers, tolerate=tolerate)


def diff(found: set[Key], expected: set[Key]) -> str:
    return f"missing {sorted(expected - found)[:8]}, extra {sorted(found - expected)[:8]}"


def params_resource(*params: tuple[str, str, Any]) -> dict[str, Any]:
    """A Parameters resource from (name, value[x] element name, value)."""
    return {"resourceType": "Parameters",
            "parameter": [{"name": n, kind: v} for n, kind, v in params]}
