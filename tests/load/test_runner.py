"""`load_paths` end to end on SQLite and PostgreSQL: what is stored, which versions are written,
which errors are reported, with and without strict.

Expected contents are computed here from the input files with plain ``json``/``tarfile``, never
through the loader's own reading code.
"""

from __future__ import annotations

import gzip
import json
import tarfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from fhir_server.config import Settings
from fhir_server.interactions.common import Context
from fhir_server.load.runner import LoadReport, load_paths, report_text
from fhir_server.model.validate import validate_resource
from fhir_server.storage.base import HistoryQuery
from fhir_server.storage.factory import open_backend
from tests.storage.conftest import PG_URL, pg_schema_url

SYNTHEA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "synthea"
INFERNO = SYNTHEA / "inferno-reference"
SMALL = SYNTHEA / "small-10-patients"
LARGE = SYNTHEA / "large-100-patients" / "synthea-r4-100-patients-bundles.tar.gz"

# Synthea's files that the patient bundles reference; the loader takes them first in every folder.
SHARED_INFO = ("hospitalInformation", "practitionerInformation")
BUNDLE_TYPES = ("transaction", "batch", "collection", "searchset")


# --- databases ------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path, pg_admin: sa.Engine | None) -> Iterator[str]:
    """A fresh, empty database: an SQLite file, or a PostgreSQL schema of this test's own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'load.db'}"
        return
    if pg_admin is None:
        pytest.skip(f"PostgreSQL not reachable at {PG_URL} (set FHIR_TEST_POSTGRES_URL)")
    schema, url = pg_schema_url(pg_admin)
    try:
        yield url
    finally:
        with pg_admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')


@contextmanager
def open_ctx(url: str) -> Iterator[Context]:
    """A Context built the way `fhir-server load` builds it."""
    settings = Settings(database_url=url)
    backend = open_backend(settings)
    backend.start()
    try:
        yield Context(settings=settings, backend=backend, base=settings.fhir_base)
    finally:
        backend.close()


def load(url: str, *paths: Path, strict: bool = False) -> LoadReport:
    with open_ctx(url) as ctx:
        return load_paths(ctx, paths, strict=strict)


@dataclass
class Stored:
    counts: Counter[str]
    bodies: dict[tuple[str, str], dict[str, Any]]
    versions: dict[tuple[str, str], int]
    history: int  # versions in the whole system history


def stored(url: str, *, keep: tuple[str, ...] | None = None) -> Stored:
    """What the database holds (current versions); bodies only of the types in ``keep`` (all: None)."""
    counts: Counter[str] = Counter()
    bodies: dict[tuple[str, str], dict[str, Any]] = {}
    versions: dict[tuple[str, str], int] = {}
    with open_ctx(url) as ctx:
        for res in ctx.backend.iter_all():
            key = (res.resource_type, res.id)
            counts[res.resource_type] += 1
            versions[key] = res.version
            if keep is None or res.resource_type in keep:
                assert res.body is not None
                bodies[key] = json.loads(res.body)
        history = ctx.backend.history(HistoryQuery(count=0)).total
    assert history is not None
    return Stored(counts, bodies, versions, history)


# --- the input, read independently -----------------------------------------------------------------


@dataclass
class Item:
    source: str  # as the loader names it: the path, or "archive:member"
    entry: int  # bundle entry index (0 for a bare resource)
    resource: dict[str, Any]
    full_urls: dict[str, str] = field(default_factory=dict)  # its bundle's fullUrl -> "Type/id"
    request: dict[str, Any] | None = None


def _load_order(name: str) -> tuple[bool, str]:
    return (not any(marker in name for marker in SHARED_INFO), name)


def documents(path: Path) -> Iterator[tuple[str, Any]]:
    """(source, parsed JSON) of every .json document under ``path``, in load order."""
    if path.is_dir():
        for child in sorted(path.iterdir(), key=lambda p: _load_order(p.name)):
            if child.is_dir():
                yield from documents(child)
            elif child.name.endswith(".json") and not child.name.startswith("."):
                yield str(child), json.loads(child.read_bytes())
    elif path.name.endswith(".tar.gz"):
        with tarfile.open(path, "r:gz") as archive:
            members = [m for m in archive.getmembers() if m.isfile() and m.name.endswith(".json")]
            # Shared-information files first, as in a folder (file names, not the directory part).
            members.sort(key=lambda m: (_load_order(m.name.rsplit("/", 1)[-1]), m.name))
            for member in members:
                handle = archive.extractfile(member)
                assert handle is not None
                yield f"{path}:{member.name}", json.loads(handle.read())
    else:
        yield str(path), json.loads(path.read_bytes())


def items(path: Path) -> list[Item]:
    out: list[Item] = []
    for source, doc in documents(path):
        if doc.get("resourceType") == "Bundle" and doc.get("type") in BUNDLE_TYPES:
            full_urls: dict[str, str] = {}
            for entry in doc.get("entry", []):
                res = entry["resource"]
                url = entry.get("request", {}).get("url", "")
                rid = url.split("/")[1] if entry.get("request", {}).get("method") == "PUT" else res["id"]
                if "fullUrl" in entry:
                    full_urls[entry["fullUrl"]] = f"{res['resourceType']}/{rid}"
            for index, entry in enumerate(doc.get("entry", [])):
                out.append(Item(source, index, entry["resource"], full_urls, entry.get("request")))
        else:
            out.append(Item(source, 0, doc))
    return out


def is_invalid(resource: dict[str, Any]) -> bool:
    """What a write refuses: a structural error, or an error against a known profile it claims."""
    from fhir_server.validation.validator import default_validator

    if any(issue.severity in ("error", "fatal") for issue in validate_resource(resource)):
        return True
    return any(issue.is_error for issue in default_validator().validate(resource, structural=False))


def references(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, inner in value.items():
            if key == "reference" and isinstance(inner, str):
                yield inner
            else:
                yield from references(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from references(inner)


def key(item: Item) -> tuple[str, str]:
    return item.resource["resourceType"], item.resource["id"]


def without_meta(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k != "meta"}


def writes(sequence: list[Item], state: dict[tuple[str, str], dict[str, Any]]) -> int:
    """How many versions loading ``sequence`` writes when unchanged upserts write nothing; ``state``
    (the content held for each id) is updated."""
    count = 0
    for item in sequence:
        content = without_meta(item.resource)
        if state.get(key(item)) != content:
            count += 1
            state[key(item)] = content
    return count


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = json.dumps(data).encode()
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = "".join(line + "\n" for line in lines).encode()
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


def transaction(*resources: dict[str, Any], method: str = "POST") -> dict[str, Any]:
    entries = []
    for r in resources:
        url = r["resourceType"] if method == "POST" else f"{r['resourceType']}/{r['id']}"
        entries.append({"fullUrl": f"urn:uuid:{r['id']}-0000", "resource": r,
                        "request": {"method": method, "url": url}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def patient(pid: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, **extra}


def observation(oid: str, subject: str) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": oid, "status": "final", "code": {"text": "x"},
            "subject": {"reference": subject}}


def ids(s: Stored, resource_type: str | None = None) -> set[str]:
    return {rid for (rt, rid) in s.versions if resource_type is None or rt == resource_type}


# --- the shared Synthea sets ----------------------------------------------------------------------


@pytest.mark.parametrize("dataset", [INFERNO, SMALL, LARGE],
                         ids=["inferno-reference", "small-10", "large-100"])
def test_synthea_set_is_stored_exactly(backend_url: str, dataset: Path) -> None:
    if not dataset.exists():
        pytest.skip(f"{dataset} not present (../shared is not checked out)")
    expected_items = items(dataset)
    invalid = [item for item in expected_items if is_invalid(item.resource)]
    valid = [item for item in expected_items if not is_invalid(item.resource)]

    report = load(backend_url, dataset)
    print(f"\n{dataset.name} on {backend_url.split(':')[0]}:\n{report_text(report)}")

    # Exactly the invalid resources are reported, with their file and entry index.
    assert sorted((e.source, e.entry) for e in report.errors) == sorted((i.source, i.entry) for i in invalid)
    for error in report.errors:
        assert error.message
    # Counts of what is stored: one resource per distinct Type/id among the valid entries.
    expected_unique = Counter(rt for rt, _ in {key(item) for item in valid})
    keep = ("Encounter", "Patient")
    s = stored(backend_url, keep=None if dataset != LARGE else keep)
    assert s.counts == expected_unique
    # The report counts every valid entry (recurring resources each time, written or unchanged).
    assert report.counts == Counter(item.resource["resourceType"] for item in valid)
    assert report.loaded == len(valid)
    # Versions: a recurring resource gets a new version only when its content changed.
    expected_writes = writes(valid, {})
    assert s.history == expected_writes
    assert report.unchanged == len(valid) - expected_writes
    assert sum(s.versions.values()) == expected_writes

    # urn:uuid references to entries of the same bundle were rewritten to Type/id.
    by_key = {key(item): item for item in valid}
    checked = 0
    for k, body in s.bodies.items():
        item = by_key[k]
        assert body["id"] == k[1]
        for ref in references(body):
            assert ref not in item.full_urls, f"{k}: {ref} not rewritten"
            checked += 1
    assert checked > 0
    # Every Encounter points at a Patient of the data set (stored, unless that Patient was refused).
    patients = {f"Patient/{rid}" for rid in ids(s, "Patient")}
    refused = {f"Patient/{item.resource['id']}" for item in invalid if item.resource["resourceType"] == "Patient"}
    encounters = [body for (rt, _), body in s.bodies.items() if rt == "Encounter"]
    assert encounters
    for body in encounters:
        assert body["subject"]["reference"] in patients | refused
        item = by_key[("Encounter", body["id"])]
        original = item.resource["subject"]["reference"]
        assert body["subject"]["reference"] == item.full_urls.get(original, original)


def test_inferno_reference_invalid_resources_are_the_reported_ones(backend_url: str) -> None:
    """The inferno set's invalid entries, found by the validator here and confirmed with an
    independent model (fhir.resources), are exactly what the loader reports and leaves out."""
    if not INFERNO.exists():
        pytest.skip(f"{INFERNO} not present (../shared is not checked out)")
    from fhir.resources.R4B import get_fhir_model_class
    from pydantic import ValidationError

    invalid = [item for item in items(INFERNO) if is_invalid(item.resource)]
    assert sorted((Path(i.source).name, i.entry, key(i)) for i in invalid) == [
        ("uscore_bundle_patient_355.json", 266, ("Observation", "3c766796-d8a0-480f-8215-f1e7e3afab21")),
        ("uscore_bundle_patient_908.json", 0, ("Patient", "908")),
    ]
    structural, profiled = sorted(invalid, key=lambda i: i.entry, reverse=True)
    with pytest.raises(ValidationError, match="effectivePeriod.stop"):
        get_fhir_model_class(structural.resource["resourceType"]).model_validate(structural.resource)
    # Patient 908 claims us-core-patient, whose Patient.gender is 1..1 in 3.1.1 and 6.1.0 alike.
    assert profiled.resource["meta"]["profile"] == ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"]
    assert "gender" not in profiled.resource

    report = load(backend_url, INFERNO)
    bad_355 = str(INFERNO / "uscore_bundle_patient_355.json")
    bad_908 = str(INFERNO / "uscore_bundle_patient_908.json")
    assert sorted((e.source, e.entry) for e in report.errors) == [(bad_355, 266), (bad_908, 0)]
    messages = {e.source: e.message for e in report.errors}
    assert "unknown element 'stop' in Period" in messages[bad_355]
    assert "Patient.gender" in messages[bad_908]
    text = report_text(report)
    assert f"{bad_355} [entry 266]: " in text and f"{bad_908} [entry 0]: " in text
    s = stored(backend_url, keep=("Patient",))
    assert ("Observation", "3c766796-d8a0-480f-8215-f1e7e3afab21") not in s.versions
    # Patient fullUrls there are urn:uuid:<other uuid>, the ids 85, 355, ...: kept ids, not fullUrls.
    assert ids(s, "Patient") == {"85", "355", "907", "us-core-client-tests-patient"}


# --- loading again --------------------------------------------------------------------------------


def test_loading_the_same_folder_twice_writes_nothing_new(backend_url: str) -> None:
    if not INFERNO.exists():
        pytest.skip(f"{INFERNO} not present (../shared is not checked out)")
    first = load(backend_url, INFERNO)
    before = stored(backend_url)
    second = load(backend_url, INFERNO)
    after = stored(backend_url)
    assert second.unchanged == second.loaded == first.loaded
    assert second.counts == first.counts
    assert [(e.source, e.entry) for e in second.errors] == [(e.source, e.entry) for e in first.errors]
    assert after.history == before.history
    assert after.counts == before.counts
    assert after.versions == before.versions
    assert after.bodies == before.bodies  # meta.lastUpdated included: nothing was touched


def test_loading_synthea_small_twice_rewrites_only_what_differs(backend_url: str) -> None:
    """Synthea's recurring Organizations and Practitioners differ between files (their utilization
    extensions), so a second load writes a version exactly where the content held differs from the
    file's; everything else is unchanged."""
    if not SMALL.exists():
        pytest.skip(f"{SMALL} not present (../shared is not checked out)")
    sequence = items(SMALL)
    state: dict[tuple[str, str], dict[str, Any]] = {}
    first_writes = writes(sequence, state)
    second_writes = writes(sequence, state)
    assert second_writes > 0  # the data really has differing recurrences

    first = load(backend_url, SMALL)
    before = stored(backend_url, keep=())
    second = load(backend_url, SMALL)
    after = stored(backend_url, keep=())
    assert not first.errors and not second.errors
    assert before.history == first_writes
    assert after.history == first_writes + second_writes
    assert second.unchanged == len(sequence) - second_writes
    assert after.counts == before.counts
    changed = {k for k in after.versions if after.versions[k] != before.versions[k]}
    assert {rt for rt, _ in changed} == {"Organization", "Practitioner"}


def test_own_folder_twice_is_idempotent(backend_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    write_json(folder / "b.json", transaction(patient("t1"), observation("t1-obs", "urn:uuid:t1-0000")))
    write_json(folder / "c.json", transaction(patient("t1"), observation("t1-obs2", "urn:uuid:t1-0000")))
    write_json(folder / "sub" / "p.json.gz", patient("bare1"))
    write_lines(folder / "sub" / "x.ndjson",
                [json.dumps(patient("nd1")), json.dumps(observation("nd1-o", "Patient/nd1"))])
    first = load(backend_url, folder)
    assert not first.errors
    assert first.loaded == 7 and first.unchanged == 1  # Patient/t1 recurs unchanged in c.json
    before = stored(backend_url)
    assert ids(before) == {"t1", "t1-obs", "t1-obs2", "bare1", "nd1", "nd1-o"}
    assert set(before.versions.values()) == {1}
    second = load(backend_url, folder)
    after = stored(backend_url)
    assert not second.errors
    assert second.unchanged == second.loaded == 7
    assert after.history == before.history == 6
    assert after.bodies == before.bodies


# --- NDJSON ---------------------------------------------------------------------------------------


def test_ndjson_bad_lines_and_invalid_resources_are_reported_by_line(backend_url: str,
                                                                     tmp_path: Path) -> None:
    plain = write_lines(tmp_path / "a.ndjson", [
        json.dumps(patient("n1")),                       # 1
        '{"resourceType": "Patient", "id": "n-broken"',  # 2: bad JSON
        "",                                              # 3: blank
        json.dumps(patient("n2", bogus=1)),              # 4: invalid resource
        json.dumps(observation("n1-o", "Patient/n1")),   # 5
        "[1, 2]",                                        # 6: not a resource
        json.dumps(patient("n3")),                       # 7
    ])
    zipped = write_lines(tmp_path / "b.ndjson.gz", [
        json.dumps(patient("g1")),                            # 1
        json.dumps(patient("g2", birthDate="not-a-date")),    # 2: invalid resource
        "{oops",                                              # 3: bad JSON
        json.dumps(patient("g3")),                            # 4
    ])
    report = load(backend_url, plain, zipped)
    errors = sorted(((e.source.split(" ")[0], e.entry), e.message) for e in report.errors)
    assert [where for where, _ in errors] == [
        (str(plain), 2), (str(plain), 4), (str(plain), 6), (str(zipped), 2), (str(zipped), 3),
    ]
    messages = dict(errors)
    assert "invalid JSON" in messages[(str(plain), 2)]
    assert "bogus" in messages[(str(plain), 4)]
    assert "not a FHIR resource" in messages[(str(plain), 6)]
    assert "birthDate" in messages[(str(zipped), 2)]
    assert "invalid JSON" in messages[(str(zipped), 3)]
    for error in report.errors:
        assert error.source.startswith((str(plain), str(zipped)))
    text = report_text(report)
    assert "[entry 4]: " in text and "5 errors:" in text
    assert report.counts == Counter({"Patient": 4, "Observation": 1})
    s = stored(backend_url)
    assert ids(s) == {"n1", "n1-o", "n3", "g1", "g3"}


# --- strict ---------------------------------------------------------------------------------------


def _strict_inputs(tmp_path: Path) -> tuple[Path, Path, Path]:
    folder = tmp_path / "in"
    bad = write_json(folder / "bad.json", transaction(
        patient("s1"), patient("s2", bogus=True), observation("s1-o", "urn:uuid:s1-0000")))
    good = write_json(folder / "good.json", transaction(patient("s3"), method="PUT"))
    return folder, bad, good


def test_strict_loads_nothing_of_a_file_with_an_invalid_entry(backend_url: str, tmp_path: Path) -> None:
    folder, bad, _ = _strict_inputs(tmp_path)
    report = load(backend_url, folder, strict=True)
    assert ids(stored(backend_url)) == {"s3"}
    assert report.counts == Counter({"Patient": 1})
    assert len(report.errors) == 1
    error = report.errors[0]
    assert error.source == str(bad)
    assert "nothing of this file was loaded" in error.message
    assert "Bundle.entry[1]" in error.message and "bogus" in error.message


def test_without_strict_the_valid_entries_load(backend_url: str, tmp_path: Path) -> None:
    folder, bad, _ = _strict_inputs(tmp_path)
    report = load(backend_url, folder)
    s = stored(backend_url)
    assert ids(s) == {"s1", "s1-o", "s3"}
    assert s.bodies[("Observation", "s1-o")]["subject"] == {"reference": "Patient/s1"}
    assert [(e.source, e.entry) for e in report.errors] == [(str(bad), 1)]
    assert "bogus" in report.errors[0].message
    assert report.loaded == 3


def test_strict_ndjson_file_is_all_or_nothing(backend_url: str, tmp_path: Path) -> None:
    lines = [json.dumps(patient(f"p{i}")) for i in range(1, 601)]
    lines[549] = json.dumps(patient("p550", bogus=1))
    path = write_lines(tmp_path / "big.ndjson", lines)
    report = load(backend_url, path, strict=True)
    assert [(e.source, e.entry) for e in report.errors] == [(f"{path} (lines 501-600)", 550)]
    assert "nothing of this file was loaded" in report.errors[0].message
    assert ids(stored(backend_url, keep=())) == set()


def test_strict_ndjson_bad_line_loads_nothing_of_the_file(backend_url: str, tmp_path: Path) -> None:
    lines = [json.dumps(patient("q1")), "{not json", json.dumps(patient("q3"))]
    path = write_lines(tmp_path / "x.ndjson", lines)
    report = load(backend_url, path, strict=True)
    assert [(e.source, e.entry) for e in report.errors] == [(str(path), 2)]
    assert ids(stored(backend_url, keep=())) == set()


def test_strict_batch_bundle_is_all_or_nothing(backend_url: str, tmp_path: Path) -> None:
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": patient("b1"), "request": {"method": "PUT", "url": "Patient/b1"}},
        {"resource": patient("b2", bogus=1), "request": {"method": "PUT", "url": "Patient/b2"}},
    ]}
    path = write_json(tmp_path / "batch.json", bundle)
    report = load(backend_url, path, strict=True)
    assert report.errors
    assert ids(stored(backend_url, keep=())) == set()


# --- collections and bare resources -------------------------------------------------------------


def test_collection_bundle_and_bare_resources(backend_url: str, tmp_path: Path) -> None:
    collection = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:11111111-1111-1111-1111-111111111111", "resource": patient("c1")},
        {"fullUrl": "urn:uuid:22222222-2222-2222-2222-222222222222",
         "resource": observation("c1-o", "urn:uuid:11111111-1111-1111-1111-111111111111")},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "no id"},
                      "subject": {"reference": "urn:uuid:11111111-1111-1111-1111-111111111111"}}},
        {"resource": patient("c-bad", gender="sometimes")},
    ]}
    searchset = {"resourceType": "Bundle", "type": "searchset", "entry": [
        {"fullUrl": "http://example.org/fhir/Patient/ss1", "resource": patient("ss1"),
         "search": {"mode": "match"}},
    ]}
    document = {"resourceType": "Bundle", "id": "doc1", "type": "document",
                "timestamp": "2020-01-01T00:00:00Z",
                "entry": [{"fullUrl": "urn:uuid:x", "resource": patient("inner")}]}
    folder = tmp_path / "in"
    coll = write_json(folder / "collection.json", collection)
    write_json(folder / "searchset.json.gz", searchset)
    write_json(folder / "document.json", document)
    write_json(folder / "bare" / "org.json", {"resourceType": "Organization", "id": "org1", "name": "Org"})
    write_json(folder / "bare" / "pat.json.gz", patient("bare2", name=[{"family": "Gz"}]))
    write_json(folder / "bare" / "noid.json", {"resourceType": "Organization", "name": "No id"})

    report = load(backend_url, folder)
    assert [(e.source, e.entry) for e in report.errors] == [(str(coll), 3)]
    assert "gender" in report.errors[0].message
    s = stored(backend_url)
    assert s.counts == Counter({"Patient": 3, "Observation": 2, "Organization": 2, "Bundle": 1})
    assert {"c1", "c1-o", "ss1", "bare2", "org1", "doc1"} <= ids(s)
    assert "c-bad" not in ids(s) and "inner" not in ids(s)  # a document Bundle is one resource
    assert s.bodies[("Observation", "c1-o")]["subject"] == {"reference": "Patient/c1"}
    no_id = [body for (rt, rid), body in s.bodies.items() if rt == "Observation" and rid != "c1-o"]
    assert len(no_id) == 1 and no_id[0]["subject"] == {"reference": "Patient/c1"}
    assert s.bodies[("Bundle", "doc1")]["entry"][0]["resource"]["id"] == "inner"
    assert s.bodies[("Patient", "bare2")]["name"] == [{"family": "Gz"}]
    assert report.counts == s.counts
    assert set(s.versions.values()) == {1}
