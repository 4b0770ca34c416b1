"""SMART on FHIR authorisation as the FHIR API enforces it (Settings(auth="smart")), black-box.

Tokens are minted directly with the server's TokenService (no OAuth round trip); data are seeded
with a ``system/*.cruds`` token.  Two patients, A and B, each with Observations, Conditions, an
Encounter and a MedicationRequest; an Organization, a Medication and a Practitioner shared by both.
Two resources cross the line on purpose: ``obs-a-perf-b`` (subject A, performer Patient B: in both
compartments) and ``obs-b-lab`` (subject B, encounter A's Encounter).

The read-only tests share one server per module (``world``); the tests that write get a fresh one
(``fresh``).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from fhir_server.app import ServerApp, create_app
from fhir_server.auth import authenticate
from fhir_server.auth.store import AuthStore
from fhir_server.auth.tokens import TokenService
from fhir_server.config import Settings

BASE = "http://testserver/fhir"
OBS_CAT = "http://terminology.hl7.org/CodeSystem/observation-category"
COND_CAT = "http://terminology.hl7.org/CodeSystem/condition-category"
VITAL = f"{OBS_CAT}|vital-signs"
LAB = f"{OBS_CAT}|laboratory"
PROBLEM = f"{COND_CAT}|problem-list-item"
ENC_DX = f"{COND_CAT}|encounter-diagnosis"
LOINC = "http://loinc.org"
EX = "http://example.org/codes"

A, B = "pat-a", "pat-b"
A_FAMILY, B_FAMILY = "Alpha", "Bravo"

A_OBS = {"Observation/obs-a-vital-1", "Observation/obs-a-vital-2", "Observation/obs-a-lab", "Observation/obs-a-perf-b"}
B_OBS = {"Observation/obs-b-vital", "Observation/obs-b-lab"}
A_COND = {"Condition/cond-a-problem", "Condition/cond-a-encdx"}
B_COND = {"Condition/cond-b-problem", "Condition/cond-b-encdx"}
A_COMPARTMENT = {f"Patient/{A}", *A_OBS, *A_COND, "Encounter/enc-a", "MedicationRequest/mr-a"}
B_COMPARTMENT = {f"Patient/{B}", *B_OBS, *B_COND, "Encounter/enc-b", "MedicationRequest/mr-b",
                 "Observation/obs-a-perf-b"}
SHARED = {"Organization/org-shared", "Medication/med-shared", "Practitioner/prac-1"}
EVERYTHING = A_COMPARTMENT | B_COMPARTMENT | SHARED


# -- resources ---------------------------------------------------------------------------------

def _cc(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code}]}


def observation(id: str | None, patient: str | None, category: str, code: str, system: str = LOINC,
                **extra: Any) -> dict[str, Any]:
    res: dict[str, Any] = {"resourceType": "Observation", "status": "final",
                           "category": [_cc(OBS_CAT, category)], "code": _cc(system, code),
                           "valueQuantity": {"value": 72, "unit": "/min"}}
    if id is not None:
        res["id"] = id
    if patient is not None:
        res["subject"] = {"reference": f"Patient/{patient}"}
    res.update(extra)
    return res


def condition(id: str, patient: str, category: str, code: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Condition", "id": id, "category": [_cc(COND_CAT, category)],
            "code": _cc("http://snomed.info/sct", code), "subject": {"reference": f"Patient/{patient}"}, **extra}


def seed_resources() -> list[dict[str, Any]]:
    return [
        {"resourceType": "Organization", "id": "org-shared", "name": "General Hospital"},
        {"resourceType": "Practitioner", "id": "prac-1", "name": [{"family": "Doctor"}]},
        {"resourceType": "Medication", "id": "med-shared", "code": _cc("http://www.nlm.nih.gov/research/umls/rxnorm",
                                                                      "197361")},
        {"resourceType": "Patient", "id": A, "name": [{"family": A_FAMILY, "given": ["Ann"]}],
         "gender": "female", "birthDate": "1970-01-01", "managingOrganization": {"reference": "Organization/org-shared"}},
        {"resourceType": "Patient", "id": B, "name": [{"family": B_FAMILY, "given": ["Bob"]}],
         "gender": "male", "birthDate": "1980-02-02", "managingOrganization": {"reference": "Organization/org-shared"}},
        {"resourceType": "Encounter", "id": "enc-a", "status": "finished",
         "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
         "subject": {"reference": f"Patient/{A}"}, "serviceProvider": {"reference": "Organization/org-shared"}},
        {"resourceType": "Encounter", "id": "enc-b", "status": "finished",
         "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
         "subject": {"reference": f"Patient/{B}"}, "serviceProvider": {"reference": "Organization/org-shared"}},
        observation("obs-a-vital-1", A, "vital-signs", "8867-4", encounter={"reference": "Encounter/enc-a"}),
        observation("obs-a-vital-2", A, "vital-signs", "8310-5"),
        observation("obs-a-lab", A, "laboratory", "2339-0"),
        # In A's compartment (subject) and in B's (performer).
        observation("obs-a-perf-b", A, "survey", "cross", EX, performer=[{"reference": f"Patient/{B}"}]),
        observation("obs-b-vital", B, "vital-signs", "8867-4"),
        # B's, but filed under A's Encounter: must not leak through the Encounter.
        observation("obs-b-lab", B, "laboratory", "b-only", EX, encounter={"reference": "Encounter/enc-a"}),
        condition("cond-a-problem", A, "problem-list-item", "44054006"),
        condition("cond-a-encdx", A, "encounter-diagnosis", "195662009", encounter={"reference": "Encounter/enc-a"}),
        condition("cond-b-problem", B, "problem-list-item", "38341003"),
        condition("cond-b-encdx", B, "encounter-diagnosis", "10509002"),
        *({"resourceType": "MedicationRequest", "id": f"mr-{x}", "status": "active", "intent": "order",
           "medicationReference": {"reference": "Medication/med-shared"},
           "subject": {"reference": f"Patient/{p}"}} for x, p in (("a", A), ("b", B))),
    ]


# -- the server ----------------------------------------------------------------------------------

@dataclass
class Server:
    app: ServerApp
    client: TestClient

    @property
    def tokens(self) -> TokenService:
        assert self.app.ctx.auth is not None
        return self.app.ctx.auth.tokens

    @property
    def store(self) -> AuthStore:
        assert self.app.ctx.auth is not None
        return self.app.ctx.auth.store

    def token(self, scope: str, patient: str | None = None, fhir_user: str | None = None) -> str:
        token, _ = self.tokens.issue_access(client_id="sandbox", sub="someone", scope=scope, patient=patient,
                                            fhir_user=fhir_user)
        return token

    def headers(self, scope: str, patient: str | None = None, fhir_user: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(scope, patient, fhir_user)}"}

    def patient_a(self, scope: str = "patient/*.rs") -> dict[str, str]:
        return self.headers(scope, patient=A)

    @property
    def admin(self) -> dict[str, str]:
        return self.headers("system/*.cruds")

    def stored(self, ref: str) -> Response:
        """The resource as a system token sees it."""
        return self.client.get(f"/fhir/{ref}", headers=self.admin)


def _start(db: Path) -> Iterator[Server]:
    app = create_app(Settings(database_url=f"sqlite:///{db}", base_url=BASE, auth="smart"))
    with TestClient(app, raise_server_exceptions=False) as client:
        server = Server(app, client)
        admin = server.admin
        for res in seed_resources():
            r = client.put(f"/fhir/{res['resourceType']}/{res['id']}", json=res, headers=admin)
            assert r.status_code == 201, r.text
        yield server


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server shared by the read-only tests of this module: nothing may write to it."""
    yield from _start(tmp_path_factory.mktemp("enforcement") / "world.db")


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Server]:
    """A server of its own for a test that writes."""
    yield from _start(tmp_path / "fresh.db")


# -- helpers -------------------------------------------------------------------------------------

def refs(bundle: dict[str, Any], mode: str | None = "match") -> set[str]:
    """Type/id of a searchset's entries (of one search mode, or all with mode=None)."""
    out = set()
    for e in bundle.get("entry", []):
        if mode is not None and e.get("search", {}).get("mode") != mode:
            continue
        res = e["resource"]
        if res["resourceType"] != "OperationOutcome":
            out.add(f"{res['resourceType']}/{res['id']}")
    return out


def refs_list(bundle: dict[str, Any]) -> list[str]:
    return [f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle.get("entry", [])
            if e["resource"]["resourceType"] != "OperationOutcome"]


def search(server: Server, path: str, headers: dict[str, str]) -> dict[str, Any]:
    r = server.client.get(f"/fhir/{path}", headers=headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["resourceType"] == "Bundle"
    return dict(body)


def all_pages(server: Server, path: str, headers: dict[str, str]) -> list[str]:
    """Every match of a search, following its next links."""
    body = search(server, path, headers)
    seen = refs_list(body)
    for _ in range(50):
        nxt = next((link["url"] for link in body.get("link", []) if link["relation"] == "next"), None)
        if nxt is None:
            return seen
        assert nxt.startswith(BASE + "/")
        body = search(server, nxt[len(BASE) + 1:], headers)
        seen += refs_list(body)
    raise AssertionError("paging did not end")


def outcome(r: Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, f"{r.status_code} {r.text}"
    assert r.headers["content-type"].startswith("application/fhir+json")
    body = r.json()
    assert body["resourceType"] == "OperationOutcome", body
    assert body["issue"] and body["issue"][0]["severity"] in ("error", "fatal")
    if code is not None:
        assert body["issue"][0]["code"] == code, body
    return dict(body)


def forbidden(r: Response) -> dict[str, Any]:
    return outcome(r, 403, "forbidden")


def diagnostics(body: dict[str, Any]) -> str:
    return " ".join(i.get("diagnostics", "") for i in body["issue"])


def unauthorised(r: Response, *, invalid: bool) -> None:
    outcome(r, 401, "login")
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert ('error="invalid_token"' in challenge) is invalid, challenge


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _unb64(segment: str) -> dict[str, Any]:
    return dict(json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def bundle(kind: str, *entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def entry(method: str, url: str, resource: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    e: dict[str, Any] = {"request": {"method": method, "url": url, **extra}}
    if resource is not None:
        e["resource"] = resource
    return e


def status_of(e: dict[str, Any]) -> int:
    return int(e["response"]["status"].split()[0])


# =================================================================================================
# 1. Authentication
# =================================================================================================

@pytest.mark.parametrize("method,path", [
    ("GET", "Patient/pat-a"), ("GET", "Observation"), ("GET", ""), ("GET", "_history"),
    ("GET", "Patient/pat-a/$everything"), ("POST", "Observation"), ("DELETE", "Observation/obs-a-lab"),
    ("POST", ""), ("GET", "Patient/pat-a/Observation"),
])
def test_no_token_is_401_with_bearer_challenge(world: Server, method: str, path: str) -> None:
    kwargs: dict[str, Any] = {}
    if method == "POST":
        kwargs["json"] = (observation(None, A, "vital-signs", "8867-4") if path
                          else bundle("batch", entry("GET", "Patient/pat-a")))
    r = world.client.request(method, f"/fhir/{path}".rstrip("/"), **kwargs)
    unauthorised(r, invalid=False)
    assert r.headers["www-authenticate"] == 'Bearer realm="fhir"'
    assert "access token" in diagnostics(r.json())
    # Nothing was done without a token.
    assert world.stored("Observation/obs-a-lab").status_code == 200


def test_no_token_write_changes_nothing(world: Server) -> None:
    before = search(world, "Observation?_summary=count", world.admin)["total"]
    r = world.client.post("/fhir/Observation", json=observation(None, A, "vital-signs", "8867-4"))
    unauthorised(r, invalid=False)
    assert search(world, "Observation?_summary=count", world.admin)["total"] == before


@pytest.mark.parametrize("headers", [
    {"Authorization": "Bearer not-a-jwt"},
    {"Authorization": "Bearer eyJhbGciOiJSUzI1NiJ9.e30.AAAA"},
    {"Authorization": "Bearer "},
    {"Authorization": "Basic c2FuZGJveDpzZWNyZXQ="},
    {"Authorization": "Token abc"},
    {"X-API-Key": "fhk_not-a-key"},
    {"X-API-Key": "not-even-the-prefix"},
], ids=["garbage", "fake-jwt", "empty-bearer", "basic", "other-scheme", "unknown-api-key", "api-key-garbage"])
def test_garbage_credentials_are_invalid_token(world: Server, headers: dict[str, str]) -> None:
    r = world.client.get(f"/fhir/Patient/{A}", headers=headers)
    unauthorised(r, invalid=True)


def test_valid_token_reads(world: Server) -> None:
    r = world.client.get(f"/fhir/Patient/{A}", headers=world.patient_a())
    assert r.status_code == 200, r.text
    assert r.json()["id"] == A and r.json()["name"][0]["family"] == A_FAMILY


def test_tampered_token_is_401(world: Server) -> None:
    token = world.token("patient/*.rs", patient=A)
    header, payload, signature = token.split(".")
    claims = _unb64(payload)
    assert claims["patient"] == A
    for change in ({"patient": B}, {"scope": "system/*.cruds"}, {"exp": claims["exp"] + 3600}):
        forged = ".".join([header, _b64({**claims, **change}), signature])
        unauthorised(world.client.get(f"/fhir/Patient/{B}", headers=bearer(forged)), invalid=True)
    # A flipped signature byte.
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    unauthorised(world.client.get(f"/fhir/Patient/{A}", headers=bearer(f"{header}.{payload}.{flipped}")),
                 invalid=True)
    # alg=none with the genuine claims.
    none_header = _b64({**_unb64(header), "alg": "none"})
    for sig in ("", signature):
        unauthorised(world.client.get(f"/fhir/Patient/{A}", headers=bearer(f"{none_header}.{payload}.{sig}")),
                     invalid=True)
    # The genuine token still works (the forgeries did not poison any cache).
    assert world.client.get(f"/fhir/Patient/{A}", headers=bearer(token)).status_code == 200


def _other_service(server: Server, **kwargs: Any) -> TokenService:
    """A TokenService on the server's own store and keys (same issuer and audience unless given)."""
    svc = server.tokens
    issuer = kwargs.pop("issuer", svc.issuer)
    audience = kwargs.pop("audience", svc.audience)
    return TokenService(server.store, svc.keyring, issuer, audience, **kwargs)


def test_expired_token_is_401(world: Server) -> None:
    svc = _other_service(world, access_lifetime_s=-120)  # beyond the 30 s leeway
    token, claims = svc.issue_access(client_id="sandbox", sub="someone", scope="system/*.rs")
    assert claims.exp < time.time() - 60
    unauthorised(world.client.get(f"/fhir/Patient/{A}", headers=bearer(token)), invalid=True)


def test_token_within_leeway_is_accepted(world: Server) -> None:
    svc = _other_service(world, access_lifetime_s=-5)  # expired 5 s ago: inside the 30 s leeway
    token, _ = svc.issue_access(client_id="sandbox", sub="someone", scope="system/*.rs")
    assert world.client.get(f"/fhir/Patient/{A}", headers=bearer(token)).status_code == 200


def test_revoked_token_is_401(world: Server) -> None:
    token, claims = world.tokens.issue_access(client_id="sandbox", sub="someone", scope="patient/*.rs", patient=A)
    assert world.client.get(f"/fhir/Patient/{A}", headers=bearer(token)).status_code == 200  # cached now
    world.tokens.revoke(claims.jti, claims.exp)
    for path in (f"Patient/{A}", "Observation", f"Patient/{A}/$everything"):
        unauthorised(world.client.get(f"/fhir/{path}", headers=bearer(token)), invalid=True)
    # Other tokens are not affected.
    assert world.client.get(f"/fhir/Patient/{A}", headers=world.patient_a()).status_code == 200


def test_token_for_another_audience_or_issuer_is_401(world: Server) -> None:
    for kwargs in ({"audience": "http://elsewhere/fhir"}, {"issuer": "http://elsewhere/oauth"}):
        token, _ = _other_service(world, **kwargs).issue_access(client_id="sandbox", sub="x", scope="system/*.rs")
        unauthorised(world.client.get(f"/fhir/Patient/{A}", headers=bearer(token)), invalid=True)


def test_id_token_is_not_an_access_token(world: Server) -> None:
    id_token = world.tokens.issue_id_token("sandbox", "someone", fhir_user=f"Patient/{A}")
    unauthorised(world.client.get(f"/fhir/Patient/{A}", headers=bearer(id_token)), invalid=True)


def test_token_signed_by_another_server_is_401(world: Server, tmp_path: Path) -> None:
    """Another server with the same base URL (same issuer and audience) but its own keys."""
    other = create_app(Settings(database_url=f"sqlite:///{tmp_path}/other.db", base_url=BASE, auth="smart"))
    with TestClient(other, raise_server_exceptions=False) as client:
        assert other.ctx.auth is not None
        token, _ = other.ctx.auth.tokens.issue_access(client_id="sandbox", sub="someone", scope="system/*.cruds")
        assert client.get(f"/fhir/Patient/{A}", headers=bearer(token)).status_code == 404  # valid there
    unauthorised(world.client.get(f"/fhir/Patient/{A}", headers=bearer(token)), invalid=True)


def test_token_with_invalid_scope_is_401(world: Server) -> None:
    token = world.token("patient/Nonsense.rs")
    unauthorised(world.client.get(f"/fhir/Patient/{A}", headers=bearer(token)), invalid=True)


def test_metadata_needs_no_token_and_advertises_smart(world: Server) -> None:
    for headers in ({}, {"Authorization": "Bearer garbage"}):
        r = world.client.get("/fhir/metadata", headers=headers)
        assert r.status_code == 200, r.text
        cs = r.json()
        assert cs["resourceType"] == "CapabilityStatement"
        security = cs["rest"][0]["security"]
        codings = [c for s in security["service"] for c in s["coding"]]
        assert {"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                "code": "SMART-on-FHIR"} in codings
        ext = next(e for e in security["extension"]
                   if e["url"] == "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris")
        uris = {x["url"]: x["valueUri"] for x in ext["extension"]}
        assert uris["token"].startswith("http") and uris["authorize"].startswith("http")
        assert uris["token"] != uris["authorize"]


# =================================================================================================
# 2. Insufficient scope
# =================================================================================================

def test_read_only_observation_scope_cannot_create(world: Server) -> None:
    h = world.patient_a("patient/Observation.rs")
    body = forbidden(world.client.post("/fhir/Observation", json=observation(None, A, "vital-signs", "8867-4"),
                                       headers=h))
    assert "Observation" in diagnostics(body)
    assert search(world, "Observation?_summary=count", world.admin)["total"] == len(A_OBS | B_OBS)


def test_observation_scope_cannot_read_condition(world: Server) -> None:
    h = world.patient_a("patient/Observation.rs")
    assert world.client.get("/fhir/Observation/obs-a-lab", headers=h).status_code == 200
    body = forbidden(world.client.get("/fhir/Condition/cond-a-problem", headers=h))
    assert "Condition" in diagnostics(body)
    forbidden(world.client.get("/fhir/Condition", headers=h))
    forbidden(world.client.get("/fhir/Condition/cond-a-problem/_history/1", headers=h))
    forbidden(world.client.get("/fhir/Condition/cond-a-problem/_history", headers=h))


def test_read_without_search_permission(world: Server) -> None:
    h = world.headers("user/Patient.r")
    r = world.client.get(f"/fhir/Patient/{B}", headers=h)
    assert r.status_code == 200 and r.json()["id"] == B
    body = forbidden(world.client.get("/fhir/Patient", headers=h))
    assert "'s'" in diagnostics(body)
    forbidden(world.client.get(f"/fhir/Patient?family={A_FAMILY}", headers=h))
    forbidden(world.client.post("/fhir/Patient/_search", data={"family": A_FAMILY}, headers=h))
    forbidden(world.client.get("/fhir/Patient/_history", headers=h))


def test_search_without_read_permission_cannot_read(world: Server) -> None:
    """'s' without 'r': searching is allowed but no resource content comes back (the server shows
    search results only to those who may read them)."""
    h = world.headers("user/Patient.s")
    body = search(world, "Patient", h)
    assert refs(body, None) == set() and A_FAMILY not in json.dumps(body)
    forbidden(world.client.get(f"/fhir/Patient/{A}", headers=h))


def test_search_without_read_permission_total_agrees_with_entries(world: Server) -> None:
    body = search(world, "Patient", world.headers("user/Patient.s"))
    assert body["total"] == len(refs(body))


def test_chain_and_has_need_search_on_the_joined_type(world: Server) -> None:
    h = world.patient_a("patient/Observation.rs")
    forbidden(world.client.get(f"/fhir/Observation?subject:Patient.name={A_FAMILY}", headers=h))
    h = world.patient_a("patient/Patient.rs")
    forbidden(world.client.get("/fhir/Patient?_has:Observation:subject:code=8867-4", headers=h))


def test_patient_scope_without_patient_context_grants_nothing(world: Server) -> None:
    h = world.headers("patient/*.rs")
    body = forbidden(world.client.get(f"/fhir/Patient/{A}", headers=h))
    assert "launch context" in diagnostics(body)
    forbidden(world.client.get("/fhir/Observation", headers=h))
    forbidden(world.client.get("/fhir/Medication/med-shared", headers=h))


def test_token_without_resource_scopes(world: Server) -> None:
    h = world.headers("openid fhirUser profile", fhir_user=f"Patient/{A}")
    forbidden(world.client.get(f"/fhir/Patient/{A}", headers=h))
    forbidden(world.client.get("/fhir/Observation", headers=h))
    forbidden(world.client.get("/fhir?_type=Observation", headers=h))
    # A system search without _type covers the types the token may search: none, so nothing.
    body = search(world, "", h)
    assert body["total"] == 0 and refs(body, None) == set()
    assert world.client.get("/fhir/metadata", headers=h).status_code == 200


# =================================================================================================
# 3. A patient token for A reaching for B
# =================================================================================================

def test_read_own_and_shared(world: Server) -> None:
    h = world.patient_a()
    for ref in sorted(A_COMPARTMENT | SHARED):
        r = world.client.get(f"/fhir/{ref}", headers=h)
        assert r.status_code == 200, (ref, r.text)
        assert f"{r.json()['resourceType']}/{r.json()['id']}" == ref


@pytest.mark.parametrize("ref", sorted(B_COMPARTMENT - A_COMPARTMENT))
def test_read_of_b_is_403(world: Server, ref: str) -> None:
    r = world.client.get(f"/fhir/{ref}", headers=world.patient_a())
    body = forbidden(r)
    assert ref in diagnostics(body)
    assert B_FAMILY not in r.text
    forbidden(world.client.get(f"/fhir/{ref}/_history/1", headers=world.patient_a()))


def test_read_of_b_in_other_forms(world: Server) -> None:
    h = world.patient_a()
    r = world.client.head(f"/fhir/Patient/{B}", headers=h)
    assert r.status_code == 403 and r.content == b""
    r = world.client.get(f"/fhir/Patient/{B}?_format=xml", headers=h)
    assert r.status_code == 403 and r.headers["content-type"].startswith("application/fhir+xml")
    assert "<OperationOutcome" in r.text and '<code value="forbidden"/>' in r.text and B_FAMILY not in r.text
    # Conditional read headers do not get around it.
    forbidden(world.client.get(f"/fhir/Patient/{B}", headers={**h, "If-None-Match": 'W/"1"'}))
    forbidden(world.client.get(f"/fhir/Patient/{B}", headers={**h, "If-Modified-Since":
                                                              "Mon, 01 Jan 2125 00:00:00 GMT"}))


def test_read_of_unknown_is_404(world: Server) -> None:
    outcome(world.client.get("/fhir/Observation/no-such-thing", headers=world.patient_a()), 404)


def test_vread(world: Server) -> None:
    h = world.patient_a()
    r = world.client.get(f"/fhir/Patient/{A}/_history/1", headers=h)
    assert r.status_code == 200 and r.json()["id"] == A and r.json()["meta"]["versionId"] == "1"
    forbidden(world.client.get(f"/fhir/Patient/{B}/_history/1", headers=h))
    forbidden(world.client.get("/fhir/Observation/obs-b-vital/_history/1", headers=h))


def test_type_search_sees_only_a(world: Server) -> None:
    h = world.patient_a()
    cases = {
        "Observation": A_OBS, "Condition": A_COND, "Encounter": {"Encounter/enc-a"},
        "MedicationRequest": {"MedicationRequest/mr-a"}, "Patient": {f"Patient/{A}"},
    }
    for rt, expected in cases.items():
        body = search(world, f"{rt}?_count=100", h)
        assert refs(body) == expected, rt
        assert body["total"] == len(expected), rt
        assert search(world, f"{rt}?_summary=count", h)["total"] == len(expected), rt
    # The system token sees both patients' data (the seed is what we think it is).
    assert refs(search(world, "Observation?_count=100", world.admin)) == A_OBS | B_OBS


def test_search_paging_sees_only_a(world: Server) -> None:
    seen = all_pages(world, "Observation?_count=1", world.patient_a())
    assert sorted(seen) == sorted(A_OBS)


def test_shared_types_are_searchable_whole(world: Server) -> None:
    h = world.patient_a()
    assert refs(search(world, "Organization", h)) == {"Organization/org-shared"}
    assert refs(search(world, "Medication", h)) == {"Medication/med-shared"}
    assert refs(search(world, "Practitioner", h)) == {"Practitioner/prac-1"}


@pytest.mark.parametrize("query", [
    f"Observation?subject=Patient/{B}", f"Observation?patient={B}", f"Observation?subject={B}",
    f"Observation?subject={BASE}/Patient/{B}", "Observation?code=b-only", "Observation?_id=obs-b-vital,obs-b-lab",
    f"Condition?patient={B}", f"Encounter?subject=Patient/{B}", f"MedicationRequest?subject=Patient/{B}",
    f"Patient?_id={B}", f"Patient?family={B_FAMILY}", "Patient?gender=male",
])
def test_search_aimed_at_b_is_empty(world: Server, query: str) -> None:
    body = search(world, query, world.patient_a())
    assert refs(body, None) == set()
    assert body["total"] == 0
    # ... while the same search by a system token finds B's data.
    assert search(world, query, world.admin)["total"] > 0


def test_post_search_aimed_at_b_is_empty(world: Server) -> None:
    r = world.client.post("/fhir/Observation/_search", data={"subject": f"Patient/{B}"}, headers=world.patient_a())
    assert r.status_code == 200, r.text
    assert r.json()["total"] == 0 and not r.json().get("entry")
    r = world.client.post("/fhir/Observation/_search", data={"category": VITAL}, headers=world.patient_a())
    assert refs(r.json()) == {"Observation/obs-a-vital-1", "Observation/obs-a-vital-2"}


def test_search_by_performer_b_finds_only_a_data(world: Server) -> None:
    body = search(world, f"Observation?performer=Patient/{B}", world.patient_a())
    assert refs(body) == {"Observation/obs-a-perf-b"} and body["total"] == 1


def test_system_search_sees_a_and_shared_only(world: Server) -> None:
    body = search(world, "?_count=200", world.patient_a())
    assert refs(body) == A_COMPARTMENT | SHARED
    assert body["total"] == len(A_COMPARTMENT | SHARED)
    body = search(world, "?_type=Observation,Patient&_count=200", world.patient_a())
    assert refs(body) == A_OBS | {f"Patient/{A}"}
    assert body["total"] == len(A_OBS) + 1
    assert refs(search(world, "?_count=200", world.admin)) == EVERYTHING


def test_include_does_not_bring_b(world: Server) -> None:
    h = world.patient_a()
    body = search(world, "Observation?_include=Observation:subject&_count=100", h)
    assert refs(body) == A_OBS
    assert refs(body, "include") == {f"Patient/{A}"}
    assert body["total"] == len(A_OBS)
    # The performer of obs-a-perf-b is B: the include must leave B out.
    body = search(world, "Observation?_include=Observation:performer&_count=100", h)
    assert refs(body) == A_OBS
    assert refs(body, "include") == set()
    assert B_FAMILY not in json.dumps(body)
    # A system token does get B there (the include itself works).
    assert f"Patient/{B}" in refs(search(world, "Observation?_include=Observation:performer", world.admin),
                                  "include")
    # Shared data comes along.
    body = search(world, "MedicationRequest?_include=MedicationRequest:medication", h)
    assert refs(body) == {"MedicationRequest/mr-a"} and refs(body, "include") == {"Medication/med-shared"}
    body = search(world, "Encounter?_include=Encounter:service-provider", h)
    assert refs(body) == {"Encounter/enc-a"} and refs(body, "include") == {"Organization/org-shared"}


def test_include_iterate_does_not_bring_b(world: Server) -> None:
    body = search(world, "Encounter?_revinclude=Observation:encounter&_include:iterate=Observation:subject",
                  world.patient_a())
    assert refs(body) == {"Encounter/enc-a"}
    # enc-a carries obs-a-vital-1 and B's obs-b-lab: only A's comes along, and never Patient B.
    assert refs(body, "include") <= {"Observation/obs-a-vital-1", f"Patient/{A}"}
    assert "Observation/obs-a-vital-1" in refs(body, "include")
    assert "obs-b-lab" not in json.dumps(body) and B_FAMILY not in json.dumps(body)


def test_revinclude_does_not_bring_b(world: Server) -> None:
    h = world.patient_a()
    body = search(world, "Patient?_revinclude=Observation:subject&_count=100", h)
    assert refs(body) == {f"Patient/{A}"} and body["total"] == 1
    assert refs(body, "include") == A_OBS
    # Shared resources referenced by both patients' data: only A's data comes along.
    body = search(world, "Medication?_revinclude=MedicationRequest:medication", h)
    assert refs(body) == {"Medication/med-shared"}
    assert refs(body, "include") == {"MedicationRequest/mr-a"}
    body = search(world, "Organization?_revinclude=Patient:organization&_revinclude=Encounter:service-provider", h)
    assert refs(body) == {"Organization/org-shared"}
    assert refs(body, "include") == {f"Patient/{A}", "Encounter/enc-a"}
    assert B_FAMILY not in json.dumps(body)
    # The same searches by a system token bring both.
    body = search(world, "Medication?_revinclude=MedicationRequest:medication", world.admin)
    assert refs(body, "include") == {"MedicationRequest/mr-a", "MedicationRequest/mr-b"}


def test_has_aimed_at_b_is_empty(world: Server) -> None:
    h = world.patient_a()
    body = search(world, f"Patient?_has:Observation:subject:code={EX}|b-only", h)
    assert refs(body, None) == set() and body["total"] == 0
    assert refs(search(world, f"Patient?_has:Observation:subject:code={EX}|b-only", world.admin)) == {f"Patient/{B}"}
    # The same kind of query about A's own data works.
    body = search(world, "Patient?_has:Observation:subject:code=2339-0", h)
    assert refs(body) == {f"Patient/{A}"} and body["total"] == 1
    # The shared Medication is prescribed to B too: _has on it is fine, but does not reveal B.
    body = search(world, "Patient?_has:MedicationRequest:subject:medication=Medication/med-shared", h)
    assert refs(body) == {f"Patient/{A}"}


def test_chain_aimed_at_b_is_empty(world: Server) -> None:
    h = world.patient_a()
    for query in (f"Observation?subject:Patient.name={B_FAMILY}", f"Observation?subject:Patient.family={B_FAMILY}",
                  f"Observation?patient.name={B_FAMILY}", "Condition?subject:Patient.gender=male",
                  f"MedicationRequest?subject:Patient.name={B_FAMILY}"):
        body = search(world, query, h)
        assert refs(body, None) == set() and body["total"] == 0, query
        assert search(world, query, world.admin)["total"] > 0, query
    body = search(world, f"Observation?subject:Patient.name={A_FAMILY}&_count=100", h)
    assert refs(body) == A_OBS


def test_chain_through_a_reference_to_b_does_not_reveal_b(world: Server) -> None:
    """obs-a-perf-b is A's (subject) and names B as performer: a chain through performer must not
    let A's token test B's name, birth date, ... (a Patient it may not read or search)."""
    h = world.patient_a()
    assert world.client.get(f"/fhir/Patient/{B}", headers=h).status_code == 403
    hit = search(world, f"Observation?performer:Patient.family={B_FAMILY}", h)
    miss = search(world, "Observation?performer:Patient.family=Zzz", h)
    # Today the first finds obs-a-perf-b and the second does not: B's family name is confirmed.
    assert hit["total"] == miss["total"] == 0


def test_compartment_search_of_b(world: Server) -> None:
    """Compartment search is answered (200) but restricted to A's compartment too: only what is in
    both compartments (obs-a-perf-b names B as performer) is returned; B's own data never."""
    h = world.patient_a()
    for rt in ("Encounter", "Condition", "MedicationRequest", "Patient"):
        body = search(world, f"Patient/{B}/{rt}", h)
        assert refs(body, None) == set() and body["total"] == 0, rt
    body = search(world, f"Patient/{B}/Observation", h)
    assert refs(body) == {"Observation/obs-a-perf-b"} and body["total"] == 1
    # A's own compartment.
    body = search(world, f"Patient/{A}/Observation?_count=100", h)
    assert refs(body) == A_OBS and body["total"] == len(A_OBS)
    # With a system token the B compartment has B's data.
    assert refs(search(world, f"Patient/{B}/Observation", world.admin)) == {*B_OBS, "Observation/obs-a-perf-b"}


def test_history(world: Server) -> None:
    h = world.patient_a()
    r = world.client.get(f"/fhir/Patient/{A}/_history", headers=h)
    assert r.status_code == 200, r.text
    assert refs_list(r.json()) == [f"Patient/{A}"]
    for path in (f"Patient/{B}/_history", "Observation/obs-b-vital/_history", "Encounter/enc-b/_history"):
        forbidden(world.client.get(f"/fhir/{path}", headers=h))
    for path in ("Observation/_history", "Patient/_history", "Condition/_history", "_history",
                 "_history?_since=2000-01-01", "_history?_type=Organization"):
        body = forbidden(world.client.get(f"/fhir/{path}", headers=h))
        assert "history" in diagnostics(body).lower() or "History" in diagnostics(body)


def test_history_of_shared_types_is_allowed_to_patient_tokens(world: Server) -> None:
    """Types outside the Patient compartment are not restricted by patient/ scopes, so their
    type history is not refused (only system history and compartment types are)."""
    h = world.patient_a()
    for path in ("Organization/org-shared/_history", "Organization/_history", "Medication/_history"):
        r = world.client.get(f"/fhir/{path}", headers=h)
        assert r.status_code == 200, (path, r.text)
        assert r.json()["type"] == "history"
    r = world.client.get("/fhir/Organization/_history", headers=h)
    assert refs_list(r.json()) == ["Organization/org-shared"] and r.json()["total"] == 1


def test_everything(world: Server) -> None:
    h = world.patient_a()
    forbidden(world.client.get(f"/fhir/Patient/{B}/$everything", headers=h))
    forbidden(world.client.post(f"/fhir/Patient/{B}/$everything", headers=h))
    body = search(world, f"Patient/{A}/$everything?_count=100", h)
    # The compartment only (not the shared Medication / Organization they reference).
    assert refs(body) == A_COMPARTMENT
    assert body["total"] == len(A_COMPARTMENT)
    assert "obs-b-" not in json.dumps(body)
    # Paged, still only A.
    assert sorted(all_pages(world, f"Patient/{A}/$everything?_count=2", h)) == sorted(A_COMPARTMENT)
    # A system token sees B's everything.
    assert refs(search(world, f"Patient/{B}/$everything?_count=100", world.admin)) == B_COMPARTMENT


def test_encounter_everything_leaves_out_b(world: Server) -> None:
    h = world.patient_a()
    forbidden(world.client.get("/fhir/Encounter/enc-b/$everything", headers=h))
    body = search(world, "Encounter/enc-a/$everything?_count=100", h)
    assert "Observation/obs-b-lab" not in refs(body)
    assert refs(body) == {"Encounter/enc-a", "Observation/obs-a-vital-1", "Condition/cond-a-encdx"}
    assert body["total"] == 3
    assert "Observation/obs-b-lab" in refs(search(world, "Encounter/enc-a/$everything?_count=100", world.admin))


def test_everything_needs_both_read_and_search(world: Server) -> None:
    body = search(world, f"Patient/{A}/$everything?_count=100",
                  world.patient_a("patient/Patient.rs patient/Observation.rs patient/Condition.r"))
    # Condition lacks 's': left out, not an error.
    assert refs(body) == {f"Patient/{A}", *A_OBS}
    forbidden(world.client.get(f"/fhir/Patient/{A}/$everything?_type=Condition",
                               headers=world.patient_a("patient/Patient.rs patient/Condition.r")))


def test_transaction_get_of_b_fails(world: Server) -> None:
    h = world.patient_a()
    r = world.client.post("/fhir", headers=h, json=bundle(
        "transaction", entry("GET", f"Patient/{A}"), entry("GET", f"Patient/{B}")))
    forbidden(r)
    r = world.client.post("/fhir", headers=h, json=bundle("transaction", entry("GET", "Observation/obs-b-lab")))
    forbidden(r)
    # A search inside a transaction is restricted like any search.
    r = world.client.post("/fhir", headers=h, json=bundle(
        "transaction", entry("GET", f"Observation?subject=Patient/{B}"), entry("GET", "Observation?_count=100")))
    assert r.status_code == 200, r.text
    first, second = (e["resource"] for e in r.json()["entry"])
    assert first["total"] == 0 and not first.get("entry")
    assert refs(second) == A_OBS


def test_batch_get_of_b_fails_alone(world: Server) -> None:
    h = world.patient_a()
    r = world.client.post("/fhir", headers=h, json=bundle(
        "batch", entry("GET", f"Patient/{B}"), entry("GET", f"Patient/{A}"),
        entry("GET", f"Patient/{B}/$everything"), entry("GET", "Observation/_history"),
        entry("GET", "Medication/med-shared")))
    assert r.status_code == 200, r.text
    entries = r.json()["entry"]
    assert [status_of(e) for e in entries] == [403, 200, 403, 403, 200]
    assert entries[1]["resource"]["id"] == A
    assert entries[4]["resource"]["id"] == "med-shared"
    for e in (entries[0], entries[2], entries[3]):
        assert e["response"]["outcome"]["resourceType"] == "OperationOutcome"
        assert "resource" not in e
    assert B_FAMILY not in r.text


def test_transaction_writes_for_b_are_refused(fresh: Server) -> None:
    h = fresh.patient_a("patient/*.cruds")
    before_b = fresh.stored("Observation/obs-b-vital").json()
    count = search(fresh, "Observation?_summary=count", fresh.admin)["total"]
    moved = {**before_b, "status": "amended", "subject": {"reference": f"Patient/{A}"}}
    changed = {**before_b, "status": "amended"}
    for bad in (entry("PUT", "Observation/obs-b-vital", changed),
                entry("PUT", "Observation/obs-b-vital", moved),
                entry("POST", "Observation", observation(None, B, "vital-signs", "8867-4")),
                entry("DELETE", "Observation/obs-b-vital"),
                entry("GET", f"Patient/{B}")):
        # Each comes with an allowed write: the whole transaction is refused, nothing is kept.
        r = fresh.client.post("/fhir", headers=h, json=bundle(
            "transaction", entry("POST", "Observation", observation(None, A, "vital-signs", "8867-4")), bad))
        forbidden(r)
        after = fresh.stored("Observation/obs-b-vital")
        assert after.status_code == 200 and after.json() == before_b
        assert search(fresh, "Observation?_summary=count", fresh.admin)["total"] == count


def test_batch_writes_for_b_fail_alone(fresh: Server) -> None:
    h = fresh.patient_a("patient/*.cruds")
    before_b = fresh.stored("Observation/obs-b-vital").json()
    r = fresh.client.post("/fhir", headers=h, json=bundle(
        "batch",
        entry("GET", f"Patient/{B}"),
        entry("PUT", "Observation/obs-b-vital", {**before_b, "status": "amended"}),
        entry("POST", "Observation", observation(None, B, "vital-signs", "8867-4")),
        entry("DELETE", "Observation/obs-b-lab"),
        entry("POST", "Observation", observation(None, A, "vital-signs", "9279-1")),
        entry("PUT", "Observation/obs-a-vital-2", {**observation("obs-a-vital-2", A, "vital-signs", "8310-5"),
                                                  "status": "amended"}),
    ))
    assert r.status_code == 200, r.text
    entries = r.json()["entry"]
    assert [status_of(e) for e in entries] == [403, 403, 403, 403, 201, 200]
    for e in entries[:4]:
        assert e["response"]["outcome"]["issue"][0]["code"] == "forbidden"
    assert fresh.stored("Observation/obs-b-vital").json() == before_b
    assert fresh.stored("Observation/obs-b-lab").status_code == 200
    b_obs = search(fresh, f"Observation?subject=Patient/{B}", fresh.admin)
    assert refs(b_obs) == B_OBS  # no new Observation for B
    new = search(fresh, "Observation?code=9279-1", fresh.admin)
    assert new["total"] == 1 and new["entry"][0]["resource"]["subject"]["reference"] == f"Patient/{A}"
    assert fresh.stored("Observation/obs-a-vital-2").json()["status"] == "amended"


# =================================================================================================
# 4. Granular (SMART v2 ?query) scopes
# =================================================================================================

def test_granular_observation_category(world: Server) -> None:
    h = world.patient_a(f"patient/Observation.rs?category={VITAL}")
    vitals = {"Observation/obs-a-vital-1", "Observation/obs-a-vital-2"}
    body = search(world, "Observation?_count=100", h)
    assert refs(body) == vitals and body["total"] == 2
    assert search(world, "Observation?_summary=count", h)["total"] == 2
    assert sorted(all_pages(world, "Observation?_count=1", h)) == sorted(vitals)
    body = search(world, f"Observation?category={LAB}", h)
    assert body["total"] == 0 and refs(body, None) == set()
    body = search(world, "Observation?code=8867-4", h)  # B has one with this code too
    assert refs(body) == {"Observation/obs-a-vital-1"} and body["total"] == 1
    assert world.client.get("/fhir/Observation/obs-a-vital-1", headers=h).json()["id"] == "obs-a-vital-1"
    for ref in ("Observation/obs-a-lab", "Observation/obs-a-perf-b", "Observation/obs-b-vital",
                "Observation/obs-b-lab"):
        forbidden(world.client.get(f"/fhir/{ref}", headers=h))
        forbidden(world.client.get(f"/fhir/{ref}/_history/1", headers=h))
        forbidden(world.client.get(f"/fhir/{ref}/_history", headers=h))
    r = world.client.get("/fhir/Observation/obs-a-vital-1/_history", headers=h)
    assert r.status_code == 200 and refs_list(r.json()) == ["Observation/obs-a-vital-1"]
    forbidden(world.client.get("/fhir/Observation/_history", headers=h))
    # Nothing but Observations.
    forbidden(world.client.get(f"/fhir/Patient/{A}", headers=h))
    # The compartment search and $everything respect the category too.
    assert refs(search(world, f"Patient/{A}/Observation", h)) == vitals


def test_granular_observation_with_patient_scope_and_include(world: Server) -> None:
    h = world.patient_a(f"patient/Observation.rs?category={VITAL} patient/Patient.rs")
    body = search(world, "Patient?_revinclude=Observation:subject", h)
    assert refs(body) == {f"Patient/{A}"}
    assert refs(body, "include") == {"Observation/obs-a-vital-1", "Observation/obs-a-vital-2"}
    body = search(world, f"Patient/{A}/$everything?_count=100", h)
    assert refs(body) == {f"Patient/{A}", "Observation/obs-a-vital-1", "Observation/obs-a-vital-2"}
    assert body["total"] == 3
    # Without the Patient scope, the include of the subject is left out.
    body = search(world, "Observation?_include=Observation:subject",
                  world.patient_a(f"patient/Observation.rs?category={VITAL}"))
    assert refs(body, "include") == set()


def test_granular_has_does_not_reveal_other_categories(world: Server) -> None:
    h = world.patient_a(f"patient/Observation.rs?category={VITAL} patient/Patient.rs")
    forbidden(world.client.get("/fhir/Observation/obs-a-lab", headers=h))
    # 2339-0 is only on A's *laboratory* Observation; the token may not see it.
    body = search(world, "Patient?_has:Observation:subject:code=2339-0", h)
    assert body["total"] == 0


def test_granular_condition_category(world: Server) -> None:
    h = world.patient_a(f"patient/Condition.rs?category={PROBLEM}")
    body = search(world, "Condition?_count=100", h)
    assert refs(body) == {"Condition/cond-a-problem"} and body["total"] == 1
    assert world.client.get("/fhir/Condition/cond-a-problem", headers=h).status_code == 200
    for ref in ("cond-a-encdx", "cond-b-problem", "cond-b-encdx"):
        forbidden(world.client.get(f"/fhir/Condition/{ref}", headers=h))
    h = world.patient_a(f"patient/Condition.rs?category={ENC_DX}")
    body = search(world, "Condition", h)
    assert refs(body) == {"Condition/cond-a-encdx"} and body["total"] == 1
    forbidden(world.client.get("/fhir/Condition/cond-a-problem", headers=h))


def test_granular_union(world: Server) -> None:
    h = world.patient_a(f"patient/Observation.rs?category={VITAL} patient/Observation.rs?category={LAB}")
    expected = {"Observation/obs-a-vital-1", "Observation/obs-a-vital-2", "Observation/obs-a-lab"}
    body = search(world, "Observation?_count=100", h)
    assert refs(body) == expected and body["total"] == 3
    assert world.client.get("/fhir/Observation/obs-a-lab", headers=h).status_code == 200
    forbidden(world.client.get("/fhir/Observation/obs-a-perf-b", headers=h))  # survey
    forbidden(world.client.get("/fhir/Observation/obs-b-lab", headers=h))
    # The comma form in one scope is the same union.
    h = world.patient_a(f"patient/Observation.rs?category={VITAL},{LAB}")
    body = search(world, "Observation?_count=100", h)
    assert refs(body) == expected and body["total"] == 3
    # A granular scope next to a plain one: the plain one wins (union).
    h = world.patient_a(f"patient/Observation.rs?category={VITAL} patient/Observation.rs")
    assert refs(search(world, "Observation?_count=100", h)) == A_OBS
    # Condition and Observation granular together.
    h = world.patient_a(f"patient/Observation.rs?category={LAB} patient/Condition.rs?category={PROBLEM}")
    body = search(world, "?_type=Observation,Condition&_count=100", h)
    assert refs(body) == {"Observation/obs-a-lab", "Condition/cond-a-problem"} and body["total"] == 2


def test_granular_system_scope(world: Server) -> None:
    h = world.headers(f"system/Observation.rs?category={LAB}")
    body = search(world, "Observation?_count=100", h)
    assert refs(body) == {"Observation/obs-a-lab", "Observation/obs-b-lab"} and body["total"] == 2
    forbidden(world.client.get("/fhir/Observation/obs-a-vital-1", headers=h))
    forbidden(world.client.get("/fhir/Observation/_history", headers=h))


@pytest.mark.parametrize("query", ["foo=bar", "category:not=" + LAB, "_count=1", "subject=Patient/pat-a",
                                   "code:text=glucose", "status=final&foo=bar"])
def test_granular_queries_that_cannot_be_evaluated_match_nothing(world: Server, query: str) -> None:
    h = world.patient_a(f"patient/Observation.rs?{query}")
    body = search(world, "Observation", h)
    assert body["total"] == 0 and refs(body, None) == set()
    forbidden(world.client.get("/fhir/Observation/obs-a-vital-1", headers=h))


def test_granular_code_without_system(world: Server) -> None:
    h = world.patient_a("patient/Observation.rs?code=8867-4")
    body = search(world, "Observation", h)
    assert refs(body) == {"Observation/obs-a-vital-1"} and body["total"] == 1
    h = world.patient_a(f"patient/Observation.rs?code={LOINC}|")
    assert refs(search(world, "Observation?_count=100", h)) == A_OBS - {"Observation/obs-a-perf-b"}


# =================================================================================================
# 5. user/ and system/ scopes
# =================================================================================================

@pytest.mark.parametrize("fhir_user", [f"Patient/{A}", f"{BASE}/Patient/{A}"])
def test_user_scope_of_a_patient_user_acts_as_patient_scope(world: Server, fhir_user: str) -> None:
    h = world.headers("user/*.rs", fhir_user=fhir_user)
    body = search(world, "Observation?_count=100", h)
    assert refs(body) == A_OBS and body["total"] == len(A_OBS)
    assert world.client.get(f"/fhir/Patient/{A}", headers=h).status_code == 200
    forbidden(world.client.get(f"/fhir/Patient/{B}", headers=h))
    forbidden(world.client.get("/fhir/Observation/obs-b-vital", headers=h))
    forbidden(world.client.get("/fhir/_history", headers=h))
    forbidden(world.client.get("/fhir/Observation/_history", headers=h))
    forbidden(world.client.get(f"/fhir/Patient/{B}/$everything", headers=h))
    assert refs(search(world, "Patient", h)) == {f"Patient/{A}"}
    assert refs(search(world, f"Patient/{A}/$everything?_count=100", h)) == A_COMPARTMENT
    assert world.client.get("/fhir/Medication/med-shared", headers=h).status_code == 200


def test_user_scope_of_a_practitioner_sees_everything(world: Server) -> None:
    h = world.headers("user/*.cruds", fhir_user="Practitioner/prac-1")
    body = search(world, "Observation?_count=100", h)
    assert refs(body) == A_OBS | B_OBS and body["total"] == len(A_OBS | B_OBS)
    r = world.client.get(f"/fhir/Patient/{B}", headers=h)
    assert r.status_code == 200 and r.json()["name"][0]["family"] == B_FAMILY
    assert refs(search(world, f"Patient/{B}/$everything?_count=100", h)) == B_COMPARTMENT
    r = world.client.get("/fhir/Observation/_history", headers=h)
    assert r.status_code == 200 and r.json()["total"] == len(A_OBS | B_OBS)
    r = world.client.get("/fhir/_history?_count=200", headers=h)
    assert r.status_code == 200 and set(refs_list(r.json())) == EVERYTHING


def test_user_scope_without_fhir_user_is_unrestricted(world: Server) -> None:
    h = world.headers("user/Observation.rs")
    assert refs(search(world, "Observation?_count=100", h)) == A_OBS | B_OBS


def test_system_read_scope_sees_everything_but_cannot_write(world: Server) -> None:
    h = world.headers("system/*.rs")
    assert refs(search(world, "?_count=200", h)) == EVERYTHING
    assert world.client.get(f"/fhir/Patient/{B}", headers=h).status_code == 200
    r = world.client.get("/fhir/_history?_count=200", headers=h)
    assert r.status_code == 200 and set(refs_list(r.json())) == EVERYTHING
    forbidden(world.client.post("/fhir/Observation", json=observation(None, A, "vital-signs", "8867-4"), headers=h))
    current = world.stored("Observation/obs-a-lab").json()
    forbidden(world.client.put("/fhir/Observation/obs-a-lab", json={**current, "status": "amended"}, headers=h))
    forbidden(world.client.delete("/fhir/Observation/obs-a-lab", headers=h))
    forbidden(world.client.patch("/fhir/Observation/obs-a-lab", headers={**h, "Content-Type":
                                 "application/json-patch+json"},
                                 content=json.dumps([{"op": "replace", "path": "/status", "value": "amended"}])))
    forbidden(world.client.post("/fhir", headers=h, json=bundle(
        "transaction", entry("POST", "Observation", observation(None, A, "vital-signs", "8867-4")))))
    after = world.stored("Observation/obs-a-lab").json()
    assert after == current
    assert search(world, "Observation?_summary=count", world.admin)["total"] == len(A_OBS | B_OBS)


# =================================================================================================
# 6. Writes under a patient token
# =================================================================================================

def test_create_for_a_and_not_for_b(fresh: Server) -> None:
    h = fresh.patient_a("patient/*.cruds")
    r = fresh.client.post("/fhir/Observation", json=observation(None, A, "vital-signs", "9279-1"), headers=h)
    assert r.status_code == 201, r.text
    new_id = r.json()["id"]
    assert fresh.stored(f"Observation/{new_id}").json()["subject"]["reference"] == f"Patient/{A}"
    for body in (observation(None, B, "vital-signs", "9279-2"),
                 observation(None, None, "vital-signs", "9279-3"),  # in nobody's compartment
                 observation(None, B, "vital-signs", "9279-5", performer=[{"reference": f"Patient/{B}"}])):
        forbidden(fresh.client.post("/fhir/Observation", json=body, headers=h))
    # None of the refused ones exist.
    assert search(fresh, "Observation?code=9279-2,9279-3,9279-5", fresh.admin)["total"] == 0
    # A Patient other than A cannot be created; shared data can.
    forbidden(fresh.client.post("/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": "New"}]},
                                headers=h))
    r = fresh.client.post("/fhir/Organization", json={"resourceType": "Organization", "name": "Mine"}, headers=h)
    assert r.status_code == 201, r.text


def test_create_for_b_naming_a_as_performer_is_refused(fresh: Server) -> None:
    h = fresh.patient_a("patient/*.cruds")
    body = observation(None, B, "vital-signs", "9279-4", performer=[{"reference": f"Patient/{A}"}])
    forbidden(fresh.client.post("/fhir/Observation", json=body, headers=h))


def test_update_cannot_move_to_b(fresh: Server) -> None:
    h = fresh.patient_a("patient/*.cruds")
    before = fresh.stored("Observation/obs-a-vital-1").json()
    moved = {**before, "subject": {"reference": f"Patient/{B}"}}
    del moved["meta"]
    forbidden(fresh.client.put("/fhir/Observation/obs-a-vital-1", json=moved, headers=h))
    assert fresh.stored("Observation/obs-a-vital-1").json() == before
    # Overwriting B's with content that is A's is refused as well (the stored content is B's).
    b_before = fresh.stored("Observation/obs-b-vital").json()
    taken = {**b_before, "subject": {"reference": f"Patient/{A}"}}
    forbidden(fresh.client.put("/fhir/Observation/obs-b-vital", json=taken, headers=h))
    assert fresh.stored("Observation/obs-b-vital").json() == b_before
    # Update-as-create for B at a new id.
    forbidden(fresh.client.put("/fhir/Observation/new-for-b",
                               json=observation("new-for-b", B, "vital-signs", "8867-4"), headers=h))
    outcome(fresh.stored("Observation/new-for-b"), 404)
    # A's own update works.
    r = fresh.client.put("/fhir/Observation/obs-a-vital-1", json={**before, "status": "amended"}, headers=h)
    assert r.status_code == 200, r.text
    assert fresh.stored("Observation/obs-a-vital-1").json()["status"] == "amended"
    r = fresh.client.put("/fhir/Observation/new-for-a", json=observation("new-for-a", A, "vital-signs", "8867-4"),
                         headers=h)
    assert r.status_code == 201, r.text


def test_update_needs_create_when_it_creates(fresh: Server) -> None:
    h = fresh.patient_a("patient/*.rus")
    forbidden(fresh.client.put("/fhir/Observation/new-for-a",
                               json=observation("new-for-a", A, "vital-signs", "8867-4"), headers=h))
    outcome(fresh.stored("Observation/new-for-a"), 404)
    before = fresh.stored("Observation/obs-a-lab").json()
    r = fresh.client.put("/fhir/Observation/obs-a-lab", json={**before, "status": "amended"}, headers=h)
    assert r.status_code == 200, r.text


def test_patch_cannot_move_to_b(fresh: Server) -> None:
    h = {**fresh.patient_a("patient/*.cruds"), "Content-Type": "application/json-patch+json"}
    before = fresh.stored("Observation/obs-a-vital-1").json()
    move = [{"op": "replace", "path": "/subject/reference", "value": f"Patient/{B}"}]
    forbidden(fresh.client.patch("/fhir/Observation/obs-a-vital-1", content=json.dumps(move), headers=h))
    assert fresh.stored("Observation/obs-a-vital-1").json() == before
    b_before = fresh.stored("Observation/obs-b-vital").json()
    status = [{"op": "replace", "path": "/status", "value": "amended"}]
    forbidden(fresh.client.patch("/fhir/Observation/obs-b-vital", content=json.dumps(status), headers=h))
    take = [{"op": "replace", "path": "/subject/reference", "value": f"Patient/{A}"}]
    forbidden(fresh.client.patch("/fhir/Observation/obs-b-vital", content=json.dumps(take), headers=h))
    assert fresh.stored("Observation/obs-b-vital").json() == b_before
    # Conditional patch whose criteria would match B's: B's is out of reach, so nothing matches.
    r = fresh.client.patch(f"/fhir/Observation?code={EX}|b-only", content=json.dumps(status), headers=h)
    assert r.status_code in (404, 412), r.text
    assert fresh.stored("Observation/obs-b-lab").json()["status"] == "final"
    # A's own patch works.
    r = fresh.client.patch("/fhir/Observation/obs-a-vital-1", content=json.dumps(status), headers=h)
    assert r.status_code == 200, r.text
    assert fresh.stored("Observation/obs-a-vital-1").json()["status"] == "amended"


def test_delete(fresh: Server) -> None:
    h = fresh.patient_a("patient/*.cruds")
    for ref in ("Observation/obs-b-vital", "Condition/cond-b-problem", f"Patient/{B}", "MedicationRequest/mr-b"):
        forbidden(fresh.client.delete(f"/fhir/{ref}", headers=h))
        assert fresh.stored(ref).status_code == 200, ref
    r = fresh.client.delete("/fhir/Observation/obs-a-lab", headers=h)
    assert r.status_code in (200, 204), r.text
    outcome(fresh.stored("Observation/obs-a-lab"), 410)


def test_conditional_update_does_not_touch_b(fresh: Server) -> None:
    h = fresh.patient_a("patient/*.cruds")
    b_before = fresh.stored("Observation/obs-b-lab").json()
    new = observation(None, A, "laboratory", "b-only", EX)
    # The criteria match only B's resource; to A's token they match nothing: a create.
    r = fresh.client.put(f"/fhir/Observation?code={EX}|b-only", json=new, headers=h)
    assert r.status_code == 201, r.text
    created = r.json()["id"]
    assert created != "obs-b-lab"
    assert fresh.stored(f"Observation/{created}").json()["subject"]["reference"] == f"Patient/{A}"
    assert fresh.stored("Observation/obs-b-lab").json() == b_before
    # By _id: no match for A, and the body's (B's) id is refused.
    r = fresh.client.put("/fhir/Observation?_id=obs-b-lab", json={**new, "id": "obs-b-lab"}, headers=h)
    forbidden(r)
    assert fresh.stored("Observation/obs-b-lab").json() == b_before
    # Criteria matching one of A's and one of B's (laboratory): only A's is seen, and updated.
    lab = observation(None, A, "laboratory", "2339-0", status="amended")
    r = fresh.client.put(f"/fhir/Observation?category={LAB}&code=2339-0", json=lab, headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == "obs-a-lab"
    assert fresh.stored("Observation/obs-b-lab").json() == b_before


def test_conditional_update_moving_a_to_b_is_refused(fresh: Server) -> None:
    h = fresh.patient_a("patient/*.cruds")
    before = fresh.stored("Observation/obs-a-lab").json()
    r = fresh.client.put("/fhir/Observation?_id=obs-a-lab", json=observation(None, B, "laboratory", "2339-0"),
                         headers=h)
    forbidden(r)
    assert fresh.stored("Observation/obs-a-lab").json() == before


def test_conditional_delete_does_not_touch_b(fresh: Server) -> None:
    h = fresh.patient_a("patient/*.cruds")
    r = fresh.client.delete(f"/fhir/Observation?code={EX}|b-only", headers=h)
    assert r.status_code in (200, 204, 404), r.text
    assert fresh.stored("Observation/obs-b-lab").status_code == 200
    r = fresh.client.delete("/fhir/Observation?_id=obs-b-lab", headers=h)
    assert r.status_code in (200, 204, 404), r.text
    assert fresh.stored("Observation/obs-b-lab").status_code == 200
    # laboratory: A's and B's match to a system token; A's token deletes only A's (single mode).
    assert search(fresh, f"Observation?category={LAB}", fresh.admin)["total"] == 2
    r = fresh.client.delete(f"/fhir/Observation?category={LAB}", headers=h)
    assert r.status_code in (200, 204), r.text
    outcome(fresh.stored("Observation/obs-a-lab"), 410)
    assert fresh.stored("Observation/obs-b-lab").status_code == 200


def test_conditional_create_does_not_match_b(fresh: Server) -> None:
    h = {**fresh.patient_a("patient/*.cruds"), "If-None-Exist": f"code={EX}|b-only"}
    r = fresh.client.post("/fhir/Observation", json=observation(None, A, "laboratory", "b-only", EX), headers=h)
    assert r.status_code == 201, r.text  # not 200 pointing at B's obs-b-lab
    assert "obs-b-lab" not in r.headers.get("location", "")
    assert r.json()["subject"]["reference"] == f"Patient/{A}"
    # And it matches A's own.
    h["If-None-Exist"] = "code=2339-0"
    r = fresh.client.post("/fhir/Observation", json=observation(None, A, "laboratory", "2339-0"), headers=h)
    assert r.status_code == 200, r.text
    assert "Observation/obs-a-lab" in r.headers["location"]


def test_transaction_conditional_reference_does_not_resolve_to_b(fresh: Server) -> None:
    h = fresh.patient_a("patient/*.cruds")
    obs = observation(None, None, "vital-signs", "8867-4", subject={"reference": f"Patient?family={B_FAMILY}"})
    r = fresh.client.post("/fhir", headers=h, json=bundle("transaction", entry("POST", "Observation", obs)))
    # The criteria see only what A's token may search: B is not found (400 "matched no resource").
    body = outcome(r, 400)
    assert "matched no resource" in diagnostics(body) and B not in r.text
    assert refs(search(fresh, f"Observation?subject=Patient/{B}", fresh.admin)) == B_OBS
    obs["subject"] = {"reference": f"Patient?family={A_FAMILY}"}
    r = fresh.client.post("/fhir", headers=h, json=bundle("transaction", entry("POST", "Observation", obs)))
    assert r.status_code == 200, r.text


def test_transaction_conditional_update_does_not_touch_b(fresh: Server) -> None:
    h = fresh.patient_a("patient/*.cruds")
    b_before = fresh.stored("Observation/obs-b-lab").json()
    r = fresh.client.post("/fhir", headers=h, json=bundle("transaction", entry(
        "PUT", f"Observation?code={EX}|b-only", observation(None, A, "laboratory", "b-only", EX))))
    assert r.status_code == 200, r.text
    (e,) = r.json()["entry"]
    assert status_of(e) == 201 and "obs-b-lab" not in e["response"]["location"]
    assert fresh.stored("Observation/obs-b-lab").json() == b_before
    found = search(fresh, f"Observation?code={EX}|b-only", fresh.admin)
    assert {x["resource"]["subject"]["reference"] for x in found["entry"]} == {f"Patient/{A}", f"Patient/{B}"}


def test_read_of_deleted_b_is_403(fresh: Server) -> None:
    assert fresh.client.delete("/fhir/Observation/obs-b-vital", headers=fresh.admin).status_code in (200, 204)
    h = fresh.patient_a()
    forbidden(fresh.client.get("/fhir/Observation/obs-b-vital", headers=h))


def test_delete_then_history_of_b(fresh: Server) -> None:
    """After a system token deletes B's Observation, A's token still gets nothing of it."""
    fresh.client.delete("/fhir/Observation/obs-b-vital", headers=fresh.admin)
    h = fresh.patient_a()
    forbidden(fresh.client.get("/fhir/Observation/obs-b-vital/_history/1", headers=h))
    forbidden(fresh.client.get("/fhir/Observation/obs-b-vital/_history", headers=h))


def test_instance_history_does_not_show_versions_outside_the_compartment(fresh: Server) -> None:
    # Version 1 is B's; version 2 (by a system token) moved it to A.
    obs = observation("moved", B, "vital-signs", "8867-4", note=[{"text": "secret of B"}])
    assert fresh.client.put("/fhir/Observation/moved", json=obs, headers=fresh.admin).status_code == 201
    obs = observation("moved", A, "vital-signs", "8867-4")
    assert fresh.client.put("/fhir/Observation/moved", json=obs, headers=fresh.admin).status_code == 200
    h = fresh.patient_a()
    assert fresh.client.get("/fhir/Observation/moved", headers=h).status_code == 200
    forbidden(fresh.client.get("/fhir/Observation/moved/_history/1", headers=h))  # vread refuses version 1
    r = fresh.client.get("/fhir/Observation/moved/_history", headers=h)
    assert "secret of B" not in r.text


# =================================================================================================
# 7. API keys
# =================================================================================================

def test_api_key(world: Server) -> None:
    key = world.store.create_api_key("sandbox", "system/*.rs")
    for headers in ({"X-API-Key": key}, bearer(key)):
        body = search(world, "Observation?_count=100", headers)
        assert refs(body) == A_OBS | B_OBS and body["total"] == len(A_OBS | B_OBS)
        r = world.client.get(f"/fhir/Patient/{B}", headers=headers)
        assert r.status_code == 200 and r.json()["id"] == B
        forbidden(world.client.post("/fhir/Observation", json=observation(None, A, "vital-signs", "8867-4"),
                                    headers=headers))
    assert search(world, "Observation?_summary=count", world.admin)["total"] == len(A_OBS | B_OBS)


def test_api_key_scopes_limit_it(world: Server) -> None:
    key = world.store.create_api_key("sandbox", "system/Observation.rs")
    assert refs(search(world, "Observation?_count=100", {"X-API-Key": key})) == A_OBS | B_OBS
    forbidden(world.client.get(f"/fhir/Patient/{A}", headers={"X-API-Key": key}))


def test_authorization_header_wins_over_api_key(world: Server) -> None:
    key = world.store.create_api_key("sandbox", "system/*.rs")
    r = world.client.get(f"/fhir/Patient/{B}", headers={"X-API-Key": key, **world.patient_a()})
    forbidden(r)
    r = world.client.get(f"/fhir/Patient/{B}", headers={"X-API-Key": key, "Authorization": "Bearer nope"})
    unauthorised(r, invalid=True)


def test_revoked_api_key(world: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    # The product caches API keys for authenticate._API_KEY_TTL_S (5 s); shorten it for the test.
    assert authenticate._API_KEY_TTL_S <= 10
    monkeypatch.setattr(authenticate, "_API_KEY_TTL_S", 0.3)
    key = world.store.create_api_key("sandbox", "system/*.rs")
    assert world.client.get(f"/fhir/Patient/{A}", headers={"X-API-Key": key}).status_code == 200
    assert world.store.revoke_api_key(key)
    time.sleep(0.5)
    for headers in ({"X-API-Key": key}, bearer(key)):
        unauthorised(world.client.get(f"/fhir/Patient/{A}", headers=headers), invalid=True)
    other = world.store.create_api_key("sandbox", "system/*.rs")
    assert world.client.get(f"/fhir/Patient/{A}", headers={"X-API-Key": other}).status_code == 200


def test_revoked_api_key_with_the_real_ttl(world: Server) -> None:
    key = world.store.create_api_key("sandbox", "system/*.rs")
    assert world.client.get(f"/fhir/Patient/{A}", headers={"X-API-Key": key}).status_code == 200
    assert world.store.revoke_api_key(key)
    time.sleep(authenticate._API_KEY_TTL_S + 0.3)
    unauthorised(world.client.get(f"/fhir/Patient/{A}", headers={"X-API-Key": key}), invalid=True)
