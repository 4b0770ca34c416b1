"""Bulk $export with FHIR_AUTH=smart: tokens at kick-off, status and download, jobs private to the
client that started them, exports limited to what the kick-off token's scopes allow.

Data: the seed of tests/auth/test_enforcement.py (patients A and B with their data, shared
Organization/Medication/Practitioner).  Expected contents are computed here from those resources
with the independent compartment evaluator of tests/http/test_everything.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fhir_server.app import ServerApp, create_app
from fhir_server.config import Settings
from tests.auth.test_enforcement import A, B, seed_resources
from tests.http.conftest import BASE
from tests.http.test_everything import Compartment, compartment_definition

from .conftest import FAST
from .helpers import (
    ASYNC,
    Key,
    assert_outcome,
    auth,
    diff,
    export,
    kickoff,
    read_ndjson,
    wait_manifest,
)

SEED: dict[Key, dict[str, Any]] = {(r["resourceType"], r["id"]): r for r in seed_resources()}


@dataclass
class Smart:
    app: ServerApp
    client: TestClient

    def token(self, scope: str, client_id: str = "bulk-client", patient: str | None = None,
              fhir_user: str | None = None) -> str:
        assert self.app.ctx.auth is not None
        token, _ = self.app.ctx.auth.tokens.issue_access(client_id=client_id, sub=client_id, scope=scope,
                                                         patient=patient, fhir_user=fhir_user)
        return token

    def headers(self, scope: str, client_id: str = "bulk-client", **kw: Any) -> dict[str, str]:
        return auth(self.token(scope, client_id, **kw))


@pytest.fixture(scope="module")
def smart(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Smart]:
    db = tmp_path_factory.mktemp("bulk-auth") / "smart.db"
    app = create_app(Settings(database_url=f"sqlite:///{db}", base_url=BASE, auth="smart", **FAST))
    with TestClient(app, raise_server_exceptions=False) as client:
        s = Smart(app, client)
        admin = s.headers("system/*.cruds", client_id="seeder")
        for res in SEED.values():
            r = client.put(f"/fhir/{res['resourceType']}/{res['id']}", json=res, headers=admin)
            assert r.status_code == 201, r.text
        yield s


def compartment_of(patient_id: str) -> set[Key]:
    return Compartment("Patient").members(("Patient", patient_id), SEED)


def unauthorised(r: Any) -> None:
    assert_outcome(r, 401)
    assert r.headers["www-authenticate"].startswith("Bearer"), r.headers


def test_system_scope_exports_everything_and_requires_token(smart: Smart) -> None:
    h = smart.headers("system/*.read")
    _, found = export(smart.client, "/fhir/$export", base=BASE, headers=h, requires_token=True)
    assert set(found) == set(SEED), diff(set(found), set(SEED))
    for key, res in found.items():
        assert {k: v for k, v in res.items() if k not in ("meta",)} == SEED[key], key


def test_user_scope_without_patient_context_exports_everything(smart: Smart) -> None:
    h = smart.headers("user/*.rs")
    _, found = export(smart.client, "/fhir/Patient/$export", base=BASE, headers=h, requires_token=True)
    expected = compartment_of(A) | compartment_of(B)
    assert set(found) == expected, diff(set(found), expected)


def test_no_token_is_refused_everywhere(smart: Smart) -> None:
    h = smart.headers("system/*.read")
    for url in ("/fhir/$export", "/fhir/Patient/$export", "/fhir/Group/whatever/$export"):
        unauthorised(smart.client.get(url, headers=ASYNC))
        unauthorised(smart.client.post(url, headers=ASYNC))
    status_url = kickoff(smart.client, "/fhir/$export", params={"_type": "Patient"}, headers=h, base=BASE)
    manifest = wait_manifest(smart.client, status_url, headers=h)
    file_url = manifest["output"][0]["url"]
    unauthorised(smart.client.get(status_url))
    unauthorised(smart.client.get(file_url))
    unauthorised(smart.client.delete(status_url))
    bad = {"Authorization": "Bearer not-a-token"}
    unauthorised(smart.client.get(status_url, headers=bad))
    unauthorised(smart.client.get(file_url, headers=bad))
    # Still there for its owner.
    assert read_ndjson(smart.client, file_url, headers=h, expected_type="Patient")


def test_another_clients_job_is_not_found(smart: Smart) -> None:
    mine = smart.headers("system/*.read", client_id="client-one")
    theirs = smart.headers("system/*.read", client_id="client-two")
    status_url = kickoff(smart.client, "/fhir/$export", headers=mine, base=BASE)
    manifest = wait_manifest(smart.client, status_url, headers=mine)
    file_url = manifest["output"][0]["url"]
    assert_outcome(smart.client.get(status_url, headers=theirs), 404, "not-found")
    assert_outcome(smart.client.get(file_url, headers=theirs), 404, "not-found")
    assert_outcome(smart.client.delete(status_url, headers=theirs), 404, "not-found")
    # The failed cancel removed nothing.
    assert smart.client.get(status_url, headers=mine).status_code == 200
    assert smart.client.get(file_url, headers=mine).status_code == 200
    # A second token of the owning client may poll (tokens are refreshed during long exports).
    again = smart.headers("system/*.read", client_id="client-one")
    assert smart.client.get(status_url, headers=again).status_code == 200
    assert smart.client.delete(status_url, headers=again).status_code == 202
    assert_outcome(smart.client.get(status_url, headers=mine), 404, "not-found")


def test_type_scopes_limit_the_export(smart: Smart) -> None:
    h = smart.headers("system/Patient.read system/Observation.rs")
    _, found = export(smart.client, "/fhir/$export", base=BASE, headers=h, requires_token=True)
    expected = {k for k in SEED if k[0] in ("Patient", "Observation")}
    assert set(found) == expected, diff(set(found), expected)
    _, found = export(smart.client, "/fhir/Patient/$export", base=BASE, headers=h, requires_token=True,
                      params={"_type": "Observation"})
    expected = {k for k in compartment_of(A) | compartment_of(B) if k[0] == "Observation"}
    assert set(found) == expected, diff(set(found), expected)


@pytest.mark.parametrize("types", ["Condition", "Patient,Condition"])
def test_explicitly_requested_forbidden_type_is_403(smart: Smart, types: str) -> None:
    h = smart.headers("system/Patient.read system/Observation.read")
    r = smart.client.get("/fhir/$export", params={"_type": types}, headers={**ASYNC, **h})
    assert_outcome(r, 403, "forbidden")


def test_patient_scope_exports_only_that_patients_data(smart: Smart) -> None:
    h = smart.headers("patient/*.rs", patient=A)
    definition, _ = compartment_definition("Patient")
    shared = {k for k in SEED if k[0] not in definition}  # not in any patient compartment
    assert {k[0] for k in shared} == {"Organization", "Medication", "Practitioner"}
    _, found = export(smart.client, "/fhir/Patient/$export", base=BASE, headers=h, requires_token=True)
    assert set(found) == compartment_of(A), diff(set(found), compartment_of(A))
    # System level: A's compartment and the shared data a patient app may read; nothing of B's alone.
    _, found = export(smart.client, "/fhir/$export", base=BASE, headers=h, requires_token=True)
    expected = compartment_of(A) | shared
    assert set(found) == expected, diff(set(found), expected)
    assert not set(found) & (compartment_of(B) - compartment_of(A))


def test_group_export_of_an_invisible_group_is_refused(smart: Smart) -> None:
    admin = smart.headers("system/*.cruds", client_id="seeder")
    r = smart.client.post("/fhir/Group", headers=admin, json={
        "resourceType": "Group", "type": "person", "actual": True, "member": [{"entity": {"reference": f"Patient/{B}"}}]})
    assert r.status_code == 201, r.text
    gid = r.json()["id"]
    try:
        r = smart.client.get(f"/fhir/Group/{gid}/$export", headers={**ASYNC, **smart.headers("patient/*.rs", patient=A)})
        assert r.status_code in (403, 404), r.text
        assert_outcome(r, r.status_code)
        h = smart.headers("system/*.read")
        _, found = export(smart.client, f"/fhir/Group/{gid}/$export", base=BASE, headers=h, requires_token=True,
                          params={"_type": "Patient,Group,Condition"})
        expected = {("Group", gid), *(k for k in compartment_of(B) if k[0] in ("Patient", "Condition"))}
        assert set(found) == expected, diff(set(found), expected)
    finally:
        assert smart.client.delete(f"/fhir/Group/{gid}", headers=admin).status_code in (200, 204)


def test_token_without_any_read_scope_cannot_kick_off(smart: Smart) -> None:
    r = smart.client.get("/fhir/$export", headers={**ASYNC, **smart.headers("openid fhirUser")})
    assert_outcome(r, 403, "forbidden")


def test_download_needs_the_matching_scopes(smart: Smart) -> None:
    h = smart.headers("system/*.read")
    status_url = kickoff(smart.client, "/fhir/$export", params={"_type": "Condition"}, headers=h, base=BASE)
    manifest = wait_manifest(smart.client, status_url, headers=h)
    url = manifest["output"][0]["url"]
    r = smart.client.get(url, headers=smart.headers("openid"))
    assert r.status_code == 403, r.status_code
