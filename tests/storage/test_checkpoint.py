"""The SQLite write-ahead log is checkpointed by a thread of its own (storage/sql/checkpoint.py):
commits do not checkpoint, the log stays bounded under a steady stream of writes, and nothing
committed is lost when the backend closes and the database is opened again."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from fhir_server.interactions.common import stamp
from fhir_server.search.extract import Indexer
from fhir_server.storage.base import WriteRequest
from fhir_server.storage.sql import checkpoint
from fhir_server.storage.sql.backend import SqlBackend

PAGE = 4096


def _patient(i: int) -> dict[str, object]:
    return {"resourceType": "Patient", "gender": "female", "birthDate": "1970-01-01",
            "name": [{"family": f"Family{i}", "given": [f"Given{i}", "Second"]}],
            "identifier": [{"system": "urn:test:cp", "value": str(i)}],
            "address": [{"line": [f"{i} Main Street"], "city": "Springfield", "postalCode": "01101"}]}


def test_the_log_stays_bounded_and_nothing_is_lost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    restart_pages = 150
    monkeypatch.setattr(checkpoint, "_PAGES", 20)
    monkeypatch.setattr(checkpoint, "_RESTART_PAGES", restart_pages)
    url = f"sqlite:///{tmp_path}/cp.db"
    wal = tmp_path / "cp.db-wal"
    backend = SqlBackend(url, pool_size=8, timeout_s=30, indexer=Indexer("http://x/fhir"))
    backend.start()
    with backend.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
    sizes: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if wal.exists():
                sizes.append(os.path.getsize(wal))
            done.wait(0.002)

    ids: list[str] = []
    lock = threading.Lock()

    def write(start: int) -> None:
        for i in range(start, start + 150):
            out = backend.create(WriteRequest("Patient", _patient(i)), stamp)
            with lock:
                ids.append(out.resource.id)

    watcher = threading.Thread(target=watch)
    watcher.start()
    writers = [threading.Thread(target=write, args=(n * 1000,)) for n in range(8)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    done.set()
    watcher.join()
    # 1,200 indexed creates write far more than the threshold; without the RESTART the log would
    # only grow (a PASSIVE checkpoint never catches up with a busy writer): it reached 96 MB, about
    # 150 times the threshold.  With it the log peaked at 3-5 times the threshold on a loaded
    # machine; 20 times leaves room for a starved checkpoint thread and still tells the two apart.
    frames_written = backend.engine.connect().exec_driver_sql("PRAGMA page_count").scalar()
    assert frames_written and frames_written > 3 * restart_pages
    assert sizes and max(sizes) < 20 * restart_pages * PAGE, (max(sizes), restart_pages * PAGE)
    backend.close()

    again = SqlBackend(url, pool_size=2, timeout_s=30, indexer=Indexer("http://x/fhir"))
    again.start()
    try:
        assert len(ids) == 1200
        for rid in ids[::37] + ids[-3:]:
            assert again.read("Patient", rid) is not None, rid
        with again.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM resource").scalar() == 1200
    finally:
        again.close()
