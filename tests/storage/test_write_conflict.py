"""A deadlock the database breaks is a retryable conflict (409), not an outage (503)."""

from __future__ import annotations

import threading

import pytest

from fhir_server.storage.base import WriteConflict
from fhir_server.storage.sql.backend import SqlBackend
from tests.storage.conftest import pg_database


def test_deadlock_is_a_write_conflict_and_the_backend_keeps_working() -> None:
    with pg_database() as url:
        backend = SqlBackend(url)
        backend.start()
        both_hold_one = threading.Barrier(2)
        outcomes: dict[str, str] = {}

        def worker(name: str, first: str, second: str) -> None:
            try:
                with backend.transaction():
                    backend.lock_resources([("Patient", first)])
                    both_hold_one.wait(timeout=10)
                    backend.lock_resources([("Patient", second)])  # opposite orders: a deadlock
                outcomes[name] = "committed"
            except WriteConflict:
                outcomes[name] = "conflict"

        threads = [threading.Thread(target=worker, args=("t1", "a", "b")),
                   threading.Thread(target=worker, args=("t2", "b", "a"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        try:
            # PostgreSQL aborts exactly one of the two; the other goes on and commits.
            assert sorted(outcomes.values()) == ["committed", "conflict"], outcomes
            assert backend.ping()
        finally:
            backend.close()


@pytest.mark.parametrize("keys", [[("Patient", "b"), ("Patient", "a"), ("Patient", "a")]])
def test_lock_resources_outside_a_transaction_is_harmless(tmp_path, keys: list[tuple[str, str]]) -> None:
    backend = SqlBackend(f"sqlite:///{tmp_path}/x.db")
    backend.start()
    try:
        backend.lock_resources(keys)  # SQLite serialises writers with its own lock: nothing to do
        assert backend.read("Patient", "a") is None
    finally:
        backend.close()
