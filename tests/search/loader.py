"""Test data for the search suite: the Inferno US Core reference patients and part of Synthea's small set.

Resources are read from the transaction Bundles in ``../shared/data/synthea``, their ``urn:uuid:``
references rewritten to ``Type/id`` and loaded with ``PUT [type]/[id]`` (update-as-create) through
the HTTP API.  A :class:`World` keeps the JSON of every resource the server holds, so the matchers
of ``expected.py`` compute expected results over exactly what was loaded (and what the tests create
afterwards).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
from fastapi.testclient import TestClient

Resource = dict[str, Any]

BASE = "http://testserver/fhir"
SHARED = Path(__file__).resolve().parents[2].parent / "shared"
SYNTHEA = SHARED / "data" / "synthea"
INFERNO_DIR = SYNTHEA / "inferno-reference"
SMALL_DIR = SYNTHEA / "small-10-patients"

INFERNO_FILES = (
    "uscore_bundle_asserted-date.json",
    "uscore_bundle_patient_85.json",
    "uscore_bundle_patient_355.json",
    "uscore_bundle_patient_907.json",
    "uscore_bundle_patient_908.json",
    "uscore_bundle_patient_client_test.json",
)
# Not valid R4 (Observation.effectivePeriod.stop): the server refuses it with 400.
INVALID_OBSERVATION = "3c766796-d8a0-480f-8215-f1e7e3afab21"
PROFILE_INVALID_PATIENT = ("Patient", "908")

# Four of the ten Synthea patients (about 670 resources): enough variety (a Device, an
# AllergyIntolerance, an infant, lab values in many units) while keeping the load fast.
SMALL_FILES = (
    "Aleta_Wintheiser_58c297c4-d684-4677-8024-01131d93835e.json",
    "Bernie_Smitham_7a05bc93-cf1a-4929-9aca-6178ba9abcb7.json",
    "Fannie_Waelchi_8666cd40-7af9-48c6-a1a6-86a161195542.json",
    "Tomas_Bartoletti_abda99df-39a2-4d1e-9f45-011a8e95d2f7.json",
)


def require_data() -> None:
    """Skip the calling test (or fixture) when the optional shared data folder is absent."""
    missing = [p for p in (INFERNO_DIR, SMALL_DIR) if not p.is_dir()]
    if missing:
        pytest.skip(
            f"Synthea/Inferno test data not present at {', '.join(map(str, missing))} "
            "(optional ../shared folder)"
        )


def _rewrite(node: Any, mapping: dict[str, str]) -> Any:
    """``node`` with every string equal to a bundle fullUrl replaced by the ``Type/id`` it stands for."""
    if isinstance(node, dict):
        return {k: _rewrite(v, mapping) for k, v in node.items()}
    if isinstance(node, list):
        return [_rewrite(v, mapping) for v in node]
    if isinstance(node, str) and node.startswith("urn:uuid:"):
        return mapping.get(node, node)
    return node


def bundle_resources(path: Path) -> list[Resource]:
    """The resources of one transaction Bundle file, references rewritten to ``Type/id``."""
    bundle = json.loads(path.read_bytes())
    mapping = {
        e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle["entry"]
        if e.get("fullUrl")
    }
    out = []
    for e in bundle["entry"]:
        res = _rewrite(e["resource"], mapping)
        assert res.get("id"), f"{path.name}: resource without id"
        out.append(res)
    return out


@cache
def _inferno() -> tuple[Resource, ...]:
    return tuple(r for name in INFERNO_FILES for r in bundle_resources(INFERNO_DIR / name))


@cache
def _small() -> tuple[Resource, ...]:
    return tuple(r for name in SMALL_FILES for r in bundle_resources(SMALL_DIR / name))


def inferno_resources() -> list[Resource]:
    require_data()
    return copy.deepcopy(list(_inferno()))


def small_resources() -> list[Resource]:
    require_data()
    return copy.deepcopy(list(_small()))


# -- searching through HTTP --------------------------------------------------------------------


def split_query(url: str) -> tuple[str, list[tuple[str, str]]]:
    """``'Observation?code=a|b&date=ge2020-01-01T00:00:00+05:00'`` -> path and literal parameters.

    Values are taken as written (no percent-decoding), so ``+``, ``|``, ``$`` and ``\\,`` reach the
    server as the characters they are; the client percent-encodes them.
    """
    path, _, qs = url.partition("?")
    params: list[tuple[str, str]] = []
    for part in qs.split("&") if qs else []:
        k, _, v = part.partition("=")
        params.append((k, v))
    path = path.strip("/")
    return ("/fhir/" + path if path else "/fhir"), params


def local(url: str) -> str:
    """An absolute link of the server, made relative for the TestClient (and checked to be absolute)."""
    assert url.startswith(BASE + "/") or url.startswith(BASE + "?") or url == BASE, url
    parts = urlsplit(url)
    return parts.path + ("?" + parts.query if parts.query else "")


def links(bundle: Resource) -> dict[str, str]:
    return {link["relation"]: link["url"] for link in bundle.get("link", [])}


def key(res: Resource) -> str:
    return f"{res['resourceType']}/{res['id']}"


@dataclass
class SearchResult:
    pages: list[Resource]
    matches: list[Resource] = field(default_factory=list)
    includes: list[Resource] = field(default_factory=list)
    outcomes: list[Resource] = field(default_factory=list)

    @property
    def ids(self) -> set[str]:
        return {r["id"] for r in self.matches}

    @property
    def keys(self) -> set[str]:
        return {key(r) for r in self.matches}

    @property
    def ordered_ids(self) -> list[str]:
        return [r["id"] for r in self.matches]

    @property
    def total(self) -> int | None:
        return self.pages[0].get("total")

    @property
    def include_keys(self) -> set[str]:
        return {key(r) for r in self.includes}


def check_searchset(bundle: Resource) -> None:
    assert bundle["resourceType"] == "Bundle", bundle
    assert bundle["type"] == "searchset", bundle
    assert links(bundle)["self"].startswith(BASE), links(bundle)
    for e in bundle.get("entry", []):
        mode = e["search"]["mode"]
        assert mode in ("match", "include", "outcome"), e
        if mode != "outcome":
            res = e["resource"]
            assert e["fullUrl"] == f"{BASE}/{key(res)}", e["fullUrl"]


class World:
    """A started TestClient and the JSON of every resource its server holds (as the server returned it)."""

    def __init__(self, client: TestClient, name: str = "sqlite") -> None:
        self.client = client
        self.name = name
        self.store: dict[str, dict[str, Resource]] = {}
        self.rejected: list[tuple[Resource, int]] = []

    # -- writing --------------------------------------------------------------------------------
    def _record(self, sent: Resource, r: Any) -> Resource:
        body = r.json() if r.content else None
        if not body or body.get("resourceType") != sent["resourceType"]:
            got = self.client.get(f"/fhir/{sent['resourceType']}/{body['id'] if body else sent['id']}")
            assert got.status_code == 200, got.text
            body = got.json()
        self.store.setdefault(body["resourceType"], {})[body["id"]] = body
        return body

    def put(self, resource: Resource) -> Resource:
        r = self.client.put(f"/fhir/{resource['resourceType']}/{resource['id']}", json=resource)
        assert r.status_code in (200, 201), (resource["resourceType"], resource["id"], r.status_code, r.text)
        return self._record(resource, r)

    def create(self, resource: Resource) -> Resource:
        r = self.client.post(f"/fhir/{resource['resourceType']}", json=resource)
        assert r.status_code == 201, r.text
        return self._record(resource, r)

    def load(self, resources: Iterable[Resource]) -> None:
        for res in resources:
            if res["resourceType"] == "Observation" and res["id"] == INVALID_OBSERVATION:
                r = self.client.put(f"/fhir/Observation/{res['id']}", json=res)
                assert r.status_code == 400, (r.status_code, r.text[:500])
                self.rejected.append((res, r.status_code))
                continue
            if (res["resourceType"], res["id"]) == PROFILE_INVALID_PATIENT:
                # A US Core 8 example without gender that claims us-core-patient: writes refuse it
                # as it is; without the claim it is a valid R4 Patient (and the one without gender
                # the sort tests need).
                r = self.client.put(f"/fhir/Patient/{res['id']}", json=res)
                assert r.status_code == 422, (r.status_code, r.text[:500])
                self.rejected.append((res, r.status_code))
                res = {**res, "meta": {k: v for k, v in res.get("meta", {}).items() if k != "profile"}}
                if not res["meta"]:
                    del res["meta"]
            self.put(res)

    # -- reading --------------------------------------------------------------------------------
    def all(self, resource_type: str) -> list[Resource]:
        return list(self.store.get(resource_type, {}).values())

    def get(self, resource_type: str, id: str) -> Resource:
        return self.store[resource_type][id]

    def ids_where(self, resource_type: str, pred: Any) -> set[str]:
        """Ids of the ``resource_type`` resources for which ``pred(resource)`` holds."""
        return {r["id"] for r in self.all(resource_type) if pred(r)}

    def resources(self) -> Iterator[Resource]:
        for by_id in self.store.values():
            yield from by_id.values()

    # -- searching ------------------------------------------------------------------------------
    def fetch(
        self, url: str, method: str = "GET", headers: dict[str, str] | None = None, count: int | None = 100
    ) -> Any:
        """The raw response of the first page of ``url`` (``_count`` added unless given or None)."""
        path, params = split_query(url)
        if count is not None and not any(k == "_count" for k, _ in params):
            params.append(("_count", str(count)))
        if method == "POST":
            form_headers = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
            return self.client.post(path, content=urlencode(params), headers=form_headers)
        return self.client.get(path, params=params, headers=headers or {})

    def search(
        self,
        url: str,
        headers: dict[str, str] | None = None,
        count: int | None = 100,
        method: str = "GET",
        max_pages: int = 200,
    ) -> SearchResult:
        """All pages of a search, walking the absolute ``next`` links; matches must not repeat."""
        r = self.fetch(url, method=method, headers=headers, count=count)
        assert r.status_code == 200, (url, r.status_code, r.text[:2000])
        return self.walk(r.json(), headers=headers, max_pages=max_pages)

    def walk(
        self, first: Resource, headers: dict[str, str] | None = None, max_pages: int = 200
    ) -> SearchResult:
        result = SearchResult(pages=[first])
        seen_urls: set[str] = set()
        while "next" in links(result.pages[-1]):
            url = links(result.pages[-1])["next"]
            assert url not in seen_urls, f"next link loops: {url}"
            seen_urls.add(url)
            r = self.client.get(local(url), headers=headers or {})
            assert r.status_code == 200, (url, r.status_code, r.text[:2000])
            result.pages.append(r.json())
            assert len(result.pages) <= max_pages, "too many pages"
        seen: set[str] = set()
        for page in result.pages:
            check_searchset(page)
            for e in page.get("entry", []):
                mode = e["search"]["mode"]
                if mode == "match":
                    k = key(e["resource"])
                    assert k not in seen, f"{k} returned twice"
                    seen.add(k)
                    result.matches.append(e["resource"])
                elif mode == "include":
                    result.includes.append(e["resource"])
                else:
                    result.outcomes.append(e["resource"])
        return result

    def ids(self, url: str, **kwargs: Any) -> set[str]:
        return self.search(url, **kwargs).ids


def _diff(got: set[str], want: set[str]) -> str:
    missing, extra = sorted(want - got), sorted(got - want)
    return f"missing {len(missing)}: {missing[:8]}; unexpected {len(extra)}: {extra[:8]}"


def assert_search(
    world: World, url: str, pred: Callable[[Resource], bool], *, nonempty: bool = True, **kwargs: Any
) -> set[str]:
    """The ids ``url`` finds equal the ids of the resources of its type for which ``pred`` holds.

    ``nonempty`` (the default) also asserts that the expected set is not empty, so that a test
    cannot pass by a server that finds nothing.  Returns the expected ids.
    """
    segments = url.split("?", 1)[0].strip("/").split("/")
    resource_type = segments[2] if len(segments) == 3 else segments[0]  # [type]? or a compartment
    want = world.ids_where(resource_type, pred)
    if nonempty:
        assert want, f"test data has no match for {url}: the test would be vacuous"
    got = world.ids(url, **kwargs)
    assert got == want, f"{world.name}: {url}: {_diff(got, want)}"
    return want
