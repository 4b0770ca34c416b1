"""Export jobs and their output files in the database: the only state bulk export keeps.

A job is claimed by one worker at a time through a lease it renews as it goes; a worker that dies
stops renewing, and once the lease runs out any worker takes the job over and runs it again from
the start (its partial files are dropped first).  Cancelling is a status change the running
worker notices at its next renewal.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, and_, delete, func, insert, or_, select, update

from fhir_server.bulk.tables import export_chunk, export_file, export_job
from fhir_server.model.instant import now_ms
from fhir_server.storage.sql.sidecar import SideTables

J = export_job.c
F = export_file.c
C = export_chunk.c

ACTIVE = ("queued", "running")


class LeaseLost(Exception):
    """The job was cancelled or taken over by another worker: stop writing to it."""
MAX_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class JobRecord:
    id: str
    status: str
    kind: str
    group_id: str | None
    params: dict[str, Any]
    request_url: str
    owner: str | None
    principal: dict[str, Any] | None
    transaction_time: str | None
    created_ms: int
    finished_ms: int | None
    expires_ms: int
    progress: str | None
    error: str | None
    attempts: int


@dataclass(frozen=True, slots=True)
class FileRecord:
    id: str
    seq: int
    resource_type: str
    kind: str  # output | error
    count: int
    size: int


def _job(row: Any) -> JobRecord:
    m = row._mapping
    return JobRecord(
        id=m["id"], status=m["status"], kind=m["kind"], group_id=m["group_id"], params=json.loads(m["params"]),
        request_url=m["request_url"], owner=m["owner"],
        principal=json.loads(m["principal"]) if m["principal"] else None,
        transaction_time=m["transaction_time"], created_ms=int(m["created_ms"]),
        finished_ms=int(m["finished_ms"]) if m["finished_ms"] is not None else None,
        expires_ms=int(m["expires_ms"]), progress=m["progress"], error=m["error"], attempts=int(m["attempts"]),
    )


class ExportStore:
    def __init__(self, engine: Engine) -> None:
        self.db = SideTables(engine)

    # -- jobs --------------------------------------------------------------------------------
    def create(self, *, kind: str, group_id: str | None, params: dict[str, Any], request_url: str,
               owner: str | None, principal: dict[str, Any] | None, retention_ms: int) -> str:
        job_id = uuid.uuid4().hex
        now = now_ms()
        with self.db.tx() as conn:
            conn.execute(insert(export_job).values(
                id=job_id, status="queued", kind=kind, group_id=group_id, params=json.dumps(params),
                request_url=request_url, owner=owner, principal=json.dumps(principal) if principal else None,
                created_ms=now, expires_ms=now + retention_ms, attempts=0,
            ))
        return job_id

    def get(self, job_id: str) -> JobRecord | None:
        with self.db.read() as conn:
            row = conn.execute(select(export_job).where(J.id == job_id)).first()
        return None if row is None else _job(row)

    def claim(self, worker: str, lease_ms: int, max_running: int) -> JobRecord | None:
        """Take the oldest queued job, or a running one whose worker stopped renewing its lease,
        unless ``max_running`` jobs already hold live leases (a limit for the whole cluster)."""
        now = now_ms()
        # Most polls find nothing: look first without a write transaction, which on SQLite would
        # take the database's write lock every poll interval.
        with self.db.read() as conn:
            waiting = conn.execute(select(J.id).where(or_(
                J.status == "queued", and_(J.status == "running", J.lease_until_ms <= now),
            )).limit(1)).first()
        if waiting is None:
            return None
        with self.db.tx() as conn:
            if self.db.dialect == "postgresql":
                # Claims queue on one lock (per schema), so two workers cannot both see a free slot.
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtext(current_schema() || ':export-claim'))")
            live = conn.execute(select(func.count()).select_from(export_job).where(
                J.status == "running", J.lease_until_ms > now)).scalar_one()
            if live >= max_running:
                return None
            candidate = select(J.id).where(or_(
                J.status == "queued", and_(J.status == "running", J.lease_until_ms <= now),
            )).order_by(J.created_ms).limit(1)
            row = conn.execute(candidate).first()
            if row is None:
                return None
            conn.execute(update(export_job).where(J.id == row[0]).values(
                status="running", lease_owner=worker, lease_until_ms=now + lease_ms, started_ms=now,
                attempts=J.attempts + 1, progress="starting",
            ))
            job = conn.execute(select(export_job).where(J.id == row[0])).first()
            # A job taken over from a dead worker starts again: its partial output goes first.
            self._drop_files(conn, row[0])
        assert job is not None
        return _job(job)

    def renew(self, job_id: str, worker: str, lease_ms: int, progress: str | None = None) -> bool:
        """Extend the lease; False when the job was cancelled (or taken over) meanwhile."""
        values: dict[str, Any] = {"lease_until_ms": now_ms() + lease_ms}
        if progress is not None:
            values["progress"] = progress[:255]
        with self.db.tx() as conn:
            result = conn.execute(update(export_job).where(
                J.id == job_id, J.lease_owner == worker, J.status == "running").values(**values))
        return bool(result.rowcount)

    def set_transaction_time(self, job_id: str, instant: str) -> None:
        with self.db.tx() as conn:
            conn.execute(update(export_job).where(J.id == job_id).values(transaction_time=instant))

    def finish(self, job_id: str, worker: str, *, error: str | None = None) -> bool:
        with self.db.tx() as conn:
            result = conn.execute(update(export_job).where(
                J.id == job_id, J.lease_owner == worker, J.status == "running",
            ).values(status="failed" if error else "done", finished_ms=now_ms(), error=error, lease_until_ms=None,
                     progress="failed" if error else "done"))
        return bool(result.rowcount)

    def cancel(self, job_id: str) -> bool:
        """Cancel a job or remove a finished one: its files go at once, the record turns 'cancelled'."""
        with self.db.tx() as conn:
            result = conn.execute(update(export_job).where(J.id == job_id, J.status != "cancelled").values(
                status="cancelled", finished_ms=now_ms(), lease_until_ms=None))
            self._drop_files(conn, job_id)
        return bool(result.rowcount)

    def purge_expired(self) -> int:
        """Remove jobs (and their files) past their expiry time."""
        now = now_ms()
        with self.db.tx() as conn:
            ids = [r[0] for r in conn.execute(select(J.id).where(J.expires_ms <= now)).fetchall()]
            for job_id in ids:
                self._drop_files(conn, job_id)
            if ids:
                conn.execute(delete(export_job).where(J.id.in_(ids)))
        return len(ids)

    # -- files -------------------------------------------------------------------------------
    def new_file(self, job_id: str, worker: str, lease_ms: int, seq: int, resource_type: str,
                 kind: str = "output") -> str:
        file_id = uuid.uuid4().hex
        with self.db.tx() as conn:
            self._hold(conn, job_id, worker, lease_ms)
            conn.execute(insert(export_file).values(id=file_id, job_id=job_id, seq=seq, resource_type=resource_type,
                                                    kind=kind, count=0, size=0))
        return file_id

    def append(self, job_id: str, worker: str, lease_ms: int, file_id: str, chunk_seq: int, data: bytes,
               count: int, size: int) -> None:
        """Store one chunk and the file's running totals in one transaction, while the lease holds."""
        with self.db.tx() as conn:
            self._hold(conn, job_id, worker, lease_ms)
            conn.execute(insert(export_chunk).values(file_id=file_id, seq=chunk_seq, data=data))
            conn.execute(update(export_file).where(F.id == file_id).values(count=count, size=size))

    @staticmethod
    def _hold(conn: Any, job_id: str, worker: str, lease_ms: int) -> None:
        """Renew the lease in the writing transaction itself: a worker that lost its job (cancelled,
        or taken over after a stall) cannot add a byte to it afterwards."""
        held = conn.execute(update(export_job).where(
            J.id == job_id, J.lease_owner == worker, J.status == "running",
        ).values(lease_until_ms=now_ms() + lease_ms))
        if not held.rowcount:
            raise LeaseLost(job_id)

    def files(self, job_id: str) -> list[FileRecord]:
        with self.db.read() as conn:
            rows = conn.execute(select(F.id, F.seq, F.resource_type, F.kind, F.count, F.size)
                                .where(F.job_id == job_id, F.count > 0).order_by(F.seq)).fetchall()
        return [FileRecord(r[0], int(r[1]), r[2], r[3], int(r[4]), int(r[5])) for r in rows]

    def file(self, job_id: str, file_id: str) -> FileRecord | None:
        with self.db.read() as conn:
            r = conn.execute(select(F.id, F.seq, F.resource_type, F.kind, F.count, F.size)
                             .where(F.id == file_id, F.job_id == job_id)).first()
        return None if r is None else FileRecord(r[0], int(r[1]), r[2], r[3], int(r[4]), int(r[5]))

    def chunks(self, file_id: str) -> Iterator[bytes]:
        """The file's bytes, one stored chunk at a time (each read on its own: flat memory)."""
        seq = -1
        while True:
            with self.db.read() as conn:
                row = conn.execute(select(C.seq, C.data).where(C.file_id == file_id, C.seq > seq)
                                   .order_by(C.seq).limit(1)).first()
            if row is None:
                return
            seq = int(row[0])
            yield bytes(row[1])

    @staticmethod
    def _drop_files(conn: Any, job_id: str) -> None:
        ids = select(F.id).where(F.job_id == job_id).scalar_subquery()
        conn.execute(delete(export_chunk).where(C.file_id.in_(ids)))
        conn.execute(delete(export_file).where(F.job_id == job_id))
