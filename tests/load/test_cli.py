"""`fhir-server load` as a process: exit codes, the summary on stdout, progress on stderr."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any


def run_load(tmp_path: Path, *args: str | Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    db = tmp_path / "db" / "fhir.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_")}
    env["FHIR_DATABASE_URL"] = f"sqlite:///{db}"
    proc = subprocess.run(
        [sys.executable, "-m", "fhir_server.cli", "load", *map(str, args)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    return proc, db


def stored_ids(db: Path) -> set[tuple[str, str]]:
    if not db.exists():
        return set()
    with sqlite3.connect(db) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "resource" not in tables:
            return set()
        rows = conn.execute("SELECT res_type, res_id FROM resource WHERE NOT deleted")
        return {(rt, rid) for rt, rid in rows}


def write(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def small_folder(tmp_path: Path, *, invalid: bool = False) -> Path:
    folder = tmp_path / "input"
    patient: dict[str, Any] = {"resourceType": "Patient", "id": "cli-p1", "gender": "female"}
    encounter: dict[str, Any] = {"resourceType": "Encounter", "id": "cli-e1", "status": "finished",
                 "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                 "subject": {"reference": "urn:uuid:aaaaaaaa-0000-0000-0000-000000000001"}}
    if invalid:
        encounter["bogus"] = 1
    write(folder / "patient1.json", {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:aaaaaaaa-0000-0000-0000-000000000001", "resource": patient,
         "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:aaaaaaaa-0000-0000-0000-000000000002", "resource": encounter,
         "request": {"method": "POST", "url": "Encounter"}},
    ]})
    write(folder / "shared" / "org.json", {"resourceType": "Organization", "id": "cli-o1", "name": "Org"})
    return folder


def count_row(stdout: str, name: str) -> int | None:
    found = re.search(rf"^\s+{name}\s+(\d+)$", stdout, re.MULTILINE)
    return int(found.group(1)) if found else None


def test_load_prints_the_summary_and_exits_0(tmp_path: Path) -> None:
    folder = small_folder(tmp_path)
    proc, db = run_load(tmp_path, folder)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("loaded 3 resources in ")
    assert count_row(proc.stdout, "Patient") == 1
    assert count_row(proc.stdout, "Encounter") == 1
    assert count_row(proc.stdout, "Organization") == 1
    assert count_row(proc.stdout, "total") == 3
    assert proc.stdout.rstrip().endswith("no errors")
    assert stored_ids(db) == {("Patient", "cli-p1"), ("Encounter", "cli-e1"), ("Organization", "cli-o1")}
    # Progress goes to stderr as plain lines (not a terminal: no carriage returns), ending with the total.
    assert "\r" not in proc.stderr
    progress = [line for line in proc.stderr.splitlines() if line.startswith("loaded ")]
    assert progress, proc.stderr
    assert re.fullmatch(r"loaded 3 resources \(\d+/s\), 100% of input, 0 errors", progress[-1])
    assert "loaded" not in proc.stdout.split("\n", 1)[1]  # the progress line is not on stdout


def test_load_twice_is_unchanged(tmp_path: Path) -> None:
    folder = small_folder(tmp_path)
    first, db = run_load(tmp_path, folder)
    second, _ = run_load(tmp_path, folder)
    assert first.returncode == second.returncode == 0
    assert count_row(second.stdout, "total") == 3
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM resource_history").fetchone()[0] == 3


def test_invalid_entry_exits_1_and_names_file_and_entry(tmp_path: Path) -> None:
    folder = small_folder(tmp_path, invalid=True)
    proc, db = run_load(tmp_path, folder)
    assert proc.returncode == 1
    bundle = folder / "patient1.json"
    assert "1 error:" in proc.stdout
    error_lines = [line for line in proc.stdout.splitlines() if "[entry " in line]
    assert len(error_lines) == 1
    assert error_lines[0].startswith(f"  {bundle} [entry 1]: ")
    assert "bogus" in error_lines[0]
    assert count_row(proc.stdout, "total") == 2
    assert stored_ids(db) == {("Patient", "cli-p1"), ("Organization", "cli-o1")}
    assert re.search(r"^loaded 2 resources \(\d+/s\), 100% of input, 1 error$", proc.stderr, re.MULTILINE)


def test_strict_loads_nothing_of_the_file_and_exits_1(tmp_path: Path) -> None:
    folder = small_folder(tmp_path, invalid=True)
    proc, db = run_load(tmp_path, "--strict", folder)
    assert proc.returncode == 1
    assert f"  {folder / 'patient1.json'} [entry 1]: nothing of this file was loaded" in proc.stdout
    assert stored_ids(db) == {("Organization", "cli-o1")}


def test_missing_path_exits_2_and_loads_nothing(tmp_path: Path) -> None:
    folder = small_folder(tmp_path)
    missing = tmp_path / "no-such-file.json"
    proc, db = run_load(tmp_path, folder, missing)
    assert proc.returncode == 2
    assert f"no such file or directory: {missing}" in proc.stderr
    assert proc.stdout == ""
    assert stored_ids(db) == set()


def test_no_path_is_a_usage_error(tmp_path: Path) -> None:
    proc, _ = run_load(tmp_path)
    assert proc.returncode == 2
    assert "usage:" in proc.stderr
