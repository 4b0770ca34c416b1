"""The export worker: a thread in every server process that claims queued jobs and runs them.

A job reads each requested type page by page through the storage seam (the same planner as
search, so _typeFilter, compartments and the caller's scopes are search conditions) and appends
the stored JSON bytes, one resource per line, to NDJSON files in the database.  Memory stays flat
whatever the export's size: one page and one chunk at a time.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any
from urllib.parse import parse_qsl

from fhir_server.bulk.jobs import MAX_ATTEMPTS, ExportStore, JobRecord, LeaseLost
from fhir_server.interactions.common import Context
from fhir_server.model.facts import get_facts
from fhir_server.model.instant import now_instant
from fhir_server.search.parse import parse_search
from fhir_server.search.query import AllOf, AnyOf, Condition, DateRange, InCompartments, SearchQuery
from fhir_server.search.registry import get_registry

log = logging.getLogger("fhir_server.bulk")

PAGE = 1000
CHUNK_BYTES = 1 << 20


class Cancelled(Exception):
    pass


def compartment_params(owner_type: str, resource_type: str) -> tuple[tuple[str, str], ...]:
    registry = get_registry()
    out = []
    for code in get_facts().compartments.get(owner_type, {}).get(resource_type, ()):
        p = registry.get(resource_type, code)
        if p is not None and p.supported and p.type == "reference":
            out.append((resource_type, code))
    return tuple(out)


def _policy(job: JobRecord, base: str) -> Any:
    if job.principal is None:
        return None
    from fhir_server.auth.policy import AccessPolicy, Principal
    from fhir_server.auth.scopes import parse_scopes

    p = job.principal
    return AccessPolicy(Principal(p["client_id"], p.get("subject"), parse_scopes(p["scope"]), p.get("patient"),
                                  p.get("encounter"), p.get("fhir_user")), base)


def type_conditions(ctx: Context, job: JobRecord, resource_type: str) -> list[Any] | None:
    """The conditions that select what the job exports of one type; None when nothing can match."""
    params = job.params
    conditions: list[Any] = []
    if params.get("since_ms") is not None:
        since = int(params["since_ms"])
        conditions.append(Condition("", "_lastUpdated", "lastUpdated", (DateRange("gt", since, since + 1),)))
    if job.kind in ("patient", "group"):
        if job.kind == "group" and resource_type == "Group":
            conditions.append(Condition("Group", "_id", "id", (job.group_id,)))
        else:
            pairs = compartment_params("Patient", resource_type)
            if not pairs and resource_type != "Patient":
                return None  # not in the patient compartment: nothing of it belongs to these patients
            patients = params.get("patients")
            conditions.append(InCompartments("Patient", tuple(patients) if patients is not None else None, pairs))
    filters = params.get("type_filters", {}).get(resource_type)
    if filters:
        branches = []
        for query in filters:
            parsed = parse_search([resource_type], parse_qsl(query, keep_blank_values=True), default_count=1,
                                  max_count=1, strict=True, base_url=ctx.base)
            branches.append(AllOf(tuple(parsed.conditions)) if len(parsed.conditions) != 1 else parsed.conditions[0])
        conditions.append(branches[0] if len(branches) == 1 else AnyOf(tuple(branches)))
    policy = _policy(job, ctx.base)
    if policy is not None:
        if not policy.can("r", resource_type):
            return None
        restriction = policy.type_condition(resource_type, "r")
        if restriction is not None:
            conditions.append(restriction)
    return conditions


class _FileWriter:
    """Appends NDJSON lines to the job's files: a new file every ``max_count`` resources, a stored
    chunk every megabyte."""

    def __init__(self, store: ExportStore, job_id: str, worker: str, lease_ms: int, resource_type: str,
                 first_seq: int, max_count: int) -> None:
        self.store, self.job_id, self.rt, self.max_count = store, job_id, resource_type, max_count
        self.worker, self.lease_ms = worker, lease_ms
        self.seq = first_seq
        self.file_id: str | None = None
        self.count = self.size = self.chunk_seq = 0
        self.buffer: list[bytes] = []
        self.buffered = 0
        self.files = 0

    def write(self, body: bytes) -> None:
        if self.file_id is None or self.count >= self.max_count:
            self._flush()
            self.file_id = self.store.new_file(self.job_id, self.worker, self.lease_ms, self.seq, self.rt)
            self.seq += 1
            self.files += 1
            self.count = self.size = self.chunk_seq = 0
        self.buffer.append(body)
        self.buffer.append(b"\n")
        self.count += 1
        self.buffered += len(body) + 1
        if self.buffered >= CHUNK_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self.file_id is None or not self.buffer:
            return
        data = b"".join(self.buffer)
        self.size += len(data)
        self.store.append(self.job_id, self.worker, self.lease_ms, self.file_id, self.chunk_seq, data, self.count,
                          self.size)
        self.chunk_seq += 1
        self.buffer, self.buffered = [], 0

    def close(self) -> int:
        self._flush()
        return self.seq


def run_job(ctx: Context, store: ExportStore, job: JobRecord, worker: str, lease_ms: int) -> int:
    """Export everything the job asks for; returns the number of resources written."""
    store.set_transaction_time(job.id, now_instant())
    seq = total = 0
    types: list[str] = job.params["types"]
    for n, rt in enumerate(types):
        conditions = type_conditions(ctx, job, rt)
        if conditions is None:
            continue
        writer = _FileWriter(store, job.id, worker, lease_ms, rt, seq, ctx.settings.export_file_max_resources)
        cursor: str | None = None
        while True:
            page = ctx.backend.search(SearchQuery(resource_types=(rt,), conditions=tuple(conditions), count=PAGE,
                                                  cursor=cursor, total="none"))
            for item in page.items:
                if item.body is not None:
                    writer.write(item.body)
            total += len(page.items)
            if not store.renew(job.id, worker, lease_ms, f"{rt} ({n + 1} of {len(types)} types), {total} resources"):
                raise Cancelled()
            cursor = page.next_cursor
            if cursor is None:
                break
        seq = writer.close()
    return total


class ExportWorker:
    def __init__(self, ctx: Context, store: ExportStore) -> None:
        self.ctx = ctx
        self.store = store
        self.name = f"export-{uuid.uuid4().hex[:12]}"
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def lease_ms(self) -> int:
        return int(self.ctx.settings.export_lease_seconds * 1000)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def wake(self) -> None:
        """A job was queued here: look now instead of at the next poll."""
        self._wake.set()

    def _loop(self) -> None:
        last_purge = 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() - last_purge > 60:
                    self.store.purge_expired()
                    last_purge = time.monotonic()
                if self.run_once():
                    continue
            except Exception:  # noqa: BLE001 - the worker must outlive a database hiccup
                log.exception("export worker: unexpected error")
            self._wake.wait(self.ctx.settings.export_poll_seconds)
            self._wake.clear()

    def run_once(self) -> bool:
        """Claim and run one job; False when there was none to take."""
        job = self.store.claim(self.name, self.lease_ms, self.ctx.settings.export_max_concurrent)
        if job is None:
            return False
        if job.attempts > MAX_ATTEMPTS:
            self.store.finish(job.id, self.name, error=f"gave up after {MAX_ATTEMPTS} interrupted attempts")
            return True
        started = time.monotonic()
        try:
            count = run_job(self.ctx, self.store, job, self.name, self.lease_ms)
        except (Cancelled, LeaseLost):
            log.info("export %s cancelled or taken over by another worker", job.id)
            return True
        except Exception as exc:  # noqa: BLE001 - a failed job reports its failure, the worker goes on
            log.exception("export %s failed", job.id)
            self.store.finish(job.id, self.name, error=f"{type(exc).__name__}: {exc}")
            return True
        self.store.finish(job.id, self.name)
        log.info("export %s: %d resources in %.1f s", job.id, count, time.monotonic() - started)
        return True
