"""Packages as .tgz, folders and compact files; snapshots generated from differentials."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from fhir_server.validation import validator as validator_module
from fhir_server.validation.packages import (
    PackageError,
    load_package,
    merge_packages,
    packages_from_env,
)
from fhir_server.validation.validator import ProfileValidator, default_validator, shipped_packages
from tests.validation.conftest import official_packages
from tests.validation.corpus import VARIANTS
from tests.validation.data import PACKAGES, inferno_entries, needs_shared

EX = "http://example.org/fhir/"
PROFILE = EX + "StructureDefinition/test-patient"
COLOR = EX + "StructureDefinition/favorite-color"


def _example_package() -> dict[str, Any]:
    """A tiny IG that carries differentials only (as many IG packages do)."""
    patient = {
        "resourceType": "StructureDefinition", "url": PROFILE, "version": "0.1.0", "name": "TestPatient",
        "status": "active", "kind": "resource", "abstract": False, "type": "Patient",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient", "derivation": "constraint",
        "differential": {"element": [
            {"id": "Patient.extension:favoriteColor", "path": "Patient.extension", "sliceName": "favoriteColor",
             "max": "1", "type": [{"code": "Extension", "profile": [COLOR]}]},
            {"id": "Patient.identifier", "path": "Patient.identifier", "min": 1, "mustSupport": True,
             "slicing": {"discriminator": [{"type": "value", "path": "system"}], "rules": "closed"}},
            {"id": "Patient.identifier:mrn", "path": "Patient.identifier", "sliceName": "mrn", "min": 1, "max": "1"},
            {"id": "Patient.identifier:mrn.system", "path": "Patient.identifier.system", "min": 1,
             "fixedUri": "http://example.org/mrn"},
            {"id": "Patient.identifier:mrn.value", "path": "Patient.identifier.value", "min": 1},
            {"id": "Patient.name.family", "path": "Patient.name.family", "min": 1},
            {"id": "Patient.birthDate", "path": "Patient.birthDate", "min": 1, "constraint": [
                {"key": "tp-1", "severity": "error", "human": "a full date",
                 "expression": "$this.toString().length() >= 10"}]},
            {"id": "Patient.maritalStatus", "path": "Patient.maritalStatus",
             "binding": {"strength": "required", "valueSet": EX + "ValueSet/marital"}},
        ]},
    }  # fmt: skip
    color = {
        "resourceType": "StructureDefinition", "url": COLOR, "version": "0.1.0", "name": "FavoriteColor",
        "status": "active", "kind": "complex-type", "abstract": False, "type": "Extension",
        "context": [{"type": "element", "expression": "Patient"}],
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Extension", "derivation": "constraint",
        "differential": {"element": [
            {"id": "Extension.url", "path": "Extension.url", "fixedUri": COLOR},
            {"id": "Extension.value[x]", "path": "Extension.value[x]", "min": 1, "type": [{"code": "code"}],
             "binding": {"strength": "required", "valueSet": EX + "ValueSet/colors"}},
        ]},
    }  # fmt: skip
    colors_cs = {
        "resourceType": "CodeSystem",
        "url": EX + "CodeSystem/colors",
        "status": "active",
        "content": "complete",
        "concept": [{"code": "red"}, {"code": "green"}, {"code": "blue"}],
    }
    colors_vs = {
        "resourceType": "ValueSet",
        "url": EX + "ValueSet/colors",
        "status": "active",
        "compose": {"include": [{"system": EX + "CodeSystem/colors"}]},
    }
    marital_vs = {
        "resourceType": "ValueSet",
        "url": EX + "ValueSet/marital",
        "status": "active",
        "compose": {
            "include": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
                    "concept": [{"code": "M"}, {"code": "S"}],
                }
            ]
        },
    }
    return {
        "package.json": {"name": "example.fhir.test", "version": "0.1.0", "fhirVersions": ["4.0.1"]},
        "StructureDefinition-test-patient.json": patient,
        "StructureDefinition-favorite-color.json": color,
        "CodeSystem-colors.json": colors_cs,
        "ValueSet-colors.json": colors_vs,
        "ValueSet-marital.json": marital_vs,
    }  # fmt: skip


@pytest.fixture(scope="module")
def example_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("example-ig")
    for name, content in _example_package().items():
        (d / name).write_text(json.dumps(content))
    return d


@pytest.fixture(scope="module")
def example_tgz(example_dir: Path) -> Path:
    out = example_dir.parent / "example.fhir.test-0.1.0.tgz"
    with tarfile.open(out, "w:gz") as t:
        for f in example_dir.iterdir():
            t.add(f, arcname=f"package/{f.name}")
    return out


@pytest.fixture(scope="module")
def example(example_dir: Path) -> ProfileValidator:
    return ProfileValidator(shipped_packages() + [load_package(example_dir)])


def _patient(**changes: Any) -> dict[str, Any]:
    p: dict[str, Any] = {
        "resourceType": "Patient",
        "extension": [{"url": COLOR, "valueCode": "green"}],
        "identifier": [{"system": "http://example.org/mrn", "value": "42"}],
        "name": [{"family": "Doe", "given": ["Jane"]}],
        "birthDate": "1970-01-01",
        "maritalStatus": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "M"}]
        },
    }
    p.update(changes)
    return {k: v for k, v in p.items() if v is not None}


def _errors(v: ProfileValidator, r: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {(i.code, i.expression, i.key or i.element) for i in v.validate(r, [PROFILE]) if i.is_error}


def test_a_differential_only_profile_gets_a_snapshot_and_validates(example: ProfileValidator) -> None:
    assert example.known(PROFILE) and example.known(PROFILE + "|0.1.0")
    assert _errors(example, _patient()) == set()


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"identifier": [{"system": "http://example.org/mrn", "value": "42"}, {"system": "urn:other", "value": "x"}]},
         ("structure", "Patient.identifier[1]", "Patient.identifier")),
        ({"identifier": [{"system": "urn:other", "value": "x"}]},
         ("required", "Patient.identifier", "Patient.identifier:mrn")),
        ({"identifier": [{"system": "http://example.org/mrn"}]},
         ("required", "Patient.identifier[0].value", "Patient.identifier:mrn.value")),
        ({"name": [{"given": ["Jane"]}]}, ("required", "Patient.name[0].family", "Patient.name.family")),
        ({"birthDate": "1970"}, ("invariant", "Patient.birthDate", "tp-1")),
        ({"birthDate": None}, ("required", "Patient.birthDate", "Patient.birthDate")),
        ({"extension": [{"url": COLOR, "valueCode": "purple"}]},
         ("code-invalid", "Patient.extension[0].value.ofType(code)", "Extension.value[x]")),
        ({"extension": [{"url": COLOR, "valueString": "green"}]},
         ("structure", "Patient.extension[0].value.ofType(string)", "Extension.value[x]")),
        ({"maritalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
                                         "code": "W"}]}},
         ("code-invalid", "Patient.maritalStatus", "Patient.maritalStatus")),
    ],
)  # fmt: skip
def test_each_rule_of_the_differential_is_enforced(
    example: ProfileValidator, changes: dict[str, Any], expected: tuple[str, str, str]
) -> None:
    assert expected in _errors(example, _patient(**changes))


def test_an_extension_is_checked_against_its_context(example: ProfileValidator) -> None:
    p = _patient()
    p["name"][0]["extension"] = [{"url": COLOR, "valueCode": "red"}]
    issues = [i for i in example.validate(p, [PROFILE]) if i.is_error]
    assert [(i.code, i.expression) for i in issues] == [("extension", "Patient.name[0].extension[0]")]


def test_tgz_folder_and_env_give_the_same_verdicts(
    example: ProfileValidator, example_dir: Path, example_tgz: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from_tgz = ProfileValidator(shipped_packages() + [load_package(example_tgz)])
    monkeypatch.setenv("FHIR_PACKAGES", f"{example_tgz}")
    monkeypatch.setattr(validator_module, "_default", None)
    from_env = default_validator()
    broken = _patient(birthDate="1970", identifier=[{"system": "urn:x", "value": "1"}])
    want = _errors(example, broken)
    assert len(want) == 3
    assert _errors(from_tgz, broken) == want
    assert _errors(from_env, broken) == want
    assert load_package(example_tgz).key == "example.fhir.test#0.1.0"


def test_a_configured_package_replaces_the_shipped_one_of_the_same_name_and_version() -> None:
    shipped = shipped_packages()
    us6 = next(p for p in shipped if p.key == "hl7.fhir.us.core#6.1.0")
    replacement = load_package(Path(us6.source))
    merged = merge_packages(shipped, [replacement])
    assert [p.key for p in merged].count("hl7.fhir.us.core#6.1.0") == 1
    assert merged[-1] is replacement
    assert len(merged) == len(shipped)


def test_package_errors_are_reported(tmp_path: Path) -> None:
    with pytest.raises(PackageError):
        load_package(tmp_path / "nothing.txt")
    (tmp_path / "bad.tgz").write_bytes(b"not a tarball")
    with pytest.raises(PackageError):
        load_package(tmp_path / "bad.tgz")
    assert packages_from_env("") == []


@needs_shared
def test_generated_snapshots_give_the_published_verdicts(tmp_path: Path) -> None:
    """Strip every snapshot from the official US Core packages, generate them again from the
    differentials and their bases, and validate the whole corpus both ways."""
    folders = []
    for version in ("3.1.1", "6.1.0"):
        out = tmp_path / f"us-core-{version}"
        out.mkdir()
        with tarfile.open(PACKAGES / f"hl7.fhir.us.core-{version}.tgz") as t:
            for m in t.getmembers():
                parts = m.name.split("/")
                f = t.extractfile(m) if len(parts) == 2 and parts[1].endswith(".json") else None
                if f is None:
                    continue
                doc = json.load(f)
                if isinstance(doc, dict) and doc.get("resourceType") == "StructureDefinition":
                    doc.pop("snapshot", None)
                (out / parts[1]).write_text(json.dumps(doc))
        folders.append(load_package(out))
    base = official_packages()
    generated = ProfileValidator([base[0], base[1], *folders, base[4]])
    published = ProfileValidator(base)

    def verdicts(v: ProfileValidator, r: Any, profiles: list[str] | None) -> list[tuple[str, ...]]:
        # Element ids may differ ("value[x]:valueQuantity" in a published snapshot, "value[x]"
        # here); the verdict is what is wrong where.
        return sorted((i.severity, i.code, i.expression, i.key) for i in v.validate(r, profiles)
                      if i.severity != "information")  # fmt: skip

    # us-core-questionnaireresponse 6.1.0 derives from SDC's profile, which no package here holds.
    sdc = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-questionnaireresponse"
    cases = [(r, None) for _, _, r in inferno_entries() if sdc not in str(r.get("meta"))]
    cases += [(v.broken(), [v.profile]) for v in VARIANTS]
    differ = [(r.get("id"), p) for r, p in cases if verdicts(generated, r, p) != verdicts(published, r, p)]
    assert differ == []
    qr = next(r for _, _, r in inferno_entries() if sdc in str(r.get("meta")))
    assert any(i.code == "not-supported" and "SDC" not in i.diagnostics for i in generated.validate(qr))
