"""Fixtures of the bulk $export tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fhir_server.app import ServerApp, create_app
from fhir_server.config import Settings
from tests.http.conftest import BASE, make_client  # noqa: F401 - the fixture, for the tests here
from tests.http.test_everything import (
    post_transaction,
    smallest_synthea_patient_bundles,
    stored_resources,
)

from .helpers import Key, key_of

OBS_CAT = "http://terminology.hl7.org/CodeSystem/observation-category"

FAST = {"export_poll_seconds": 0.05}


@pytest.fixture(autouse=True)
def _quiet_sandbox(capsys: pytest.CaptureFixture[str]) -> None:
    """Startup with FHIR_AUTH=smart prints the sandbox credentials; they are captured, never shown."""


@dataclass
class World:
    """A server with two Synthea patients (a, b) and hand-made data around a third patient c."""

    app: ServerApp
    client: TestClient
    a: Key
    b: Key
    c: Key
    group: Key  # Group G: members a and c (c by an absolute reference)
    other_group: Key  # Group H: member b
    stored: dict[Key, dict[str, Any]]

    @property
    def patients(self) -> list[Key]:
        return [k for k in self.stored if k[0] == "Patient"]


def _cc(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code}]}


def hand_made(a: Key) -> dict[str, Any]:
    """A transaction with patient c, c's data, shared data and data of no patient."""
    def e(full: str, res: dict[str, Any]) -> dict[str, Any]:
        return {"fullUrl": full, "resource": res, "request": {"method": "POST", "url": res["resourceType"]}}

    c = "urn:uuid:0b0c0000-0000-4000-8000-00000000000c"
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    entries = [
        e(c, {"resourceType": "Patient", "gender": "female", "name": [{"family": "Charlie"}]}),
        e("urn:uuid:1", {**obs, "subject": {"reference": c}, "category": [_cc(OBS_CAT, "laboratory")]}),
        e("urn:uuid:2", {**obs, "subject": {"reference": c}, "category": [_cc(OBS_CAT, "vital-signs")]}),
        # a's Observation performed by c: in both compartments.
        e("urn:uuid:3", {**obs, "subject": {"reference": f"Patient/{a[1]}"}, "performer": [{"reference": c}],
                         "category": [_cc(OBS_CAT, "survey")]}),
        e("urn:uuid:4", {**obs, "code": {"text": "no subject"}}),  # nobody's
        e("urn:uuid:5", {"resourceType": "Condition", "subject": {"reference": c}, "code": {"text": "c"}}),
        e("urn:uuid:6", {"resourceType": "Medication", "code": {"text": "aspirin"}}),
        e("urn:uuid:7", {"resourceType": "Organization", "name": "Shared clinic"}),
    ]
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def build_world(app: ServerApp, client: TestClient) -> World:
    bundles = smallest_synthea_patient_bundles(2)
    created: set[Key] = set()
    patients = []
    for b in bundles:
        ids = post_transaction(client, b)
        created |= set(ids.values())
        (p,) = [k for k in ids.values() if k[0] == "Patient"]
        patients.append(p)
    a, b_ = patients
    ids = post_transaction(client, hand_made(a))
    created |= set(ids.values())
    (c,) = [k for k in ids.values() if k[0] == "Patient"]
    groups = []
    for members in ([{"entity": {"reference": f"Patient/{a[1]}"}},
                     {"entity": {"reference": f"{BASE}/Patient/{c[1]}"}}],
                    [{"entity": {"reference": f"Patient/{b_[1]}"}}]):
        r = client.post("/fhir/Group", json={"resourceType": "Group", "type": "person", "actual": True,
                                             "member": members})
        assert r.status_code == 201, r.text
        groups.append(key_of(r.json()))
    created |= set(groups)
    stored = stored_resources(client)
    assert set(stored) == created, "the system search disagrees with what was created"
    return World(app, client, a, b_, c, groups[0], groups[1], stored)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Read-only for the tests: exports only, no writes."""
    db = tmp_path_factory.mktemp("bulk") / "world.db"
    app = create_app(Settings(database_url=f"sqlite:///{db}", base_url=BASE, auth="off",
                              export_file_max_resources=40, **FAST))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield build_world(app, client)


@pytest.fixture
def fast_client(make_client: Callable[..., TestClient]) -> Callable[..., TestClient]:  # noqa: F811
    """make_client with a worker that polls often (extra Settings as keywords)."""
    def factory(**overrides: Any) -> TestClient:
        return make_client(**{**FAST, **overrides})

    return factory

