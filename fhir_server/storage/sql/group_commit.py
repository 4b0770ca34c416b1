"""Group commit for a database that admits one writer at a time (SQLite).

Concurrent write operations are queued to one writer thread, which runs whatever is waiting as
one transaction, each operation inside its own SAVEPOINT (a failing operation rolls back alone),
and commits once.  Callers get their result only after that commit, so nothing is acknowledged
before it is durable.  Measured: with 36 index rows per Patient a commit writes ~88 WAL pages;
16 creates per transaction cost ~550 us each instead of ~930 us.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

_STOP = object()


class GroupCommitter:
    def __init__(self, run_batch: Callable[[Callable[[Any], None]], None], max_batch: int = 64) -> None:
        # run_batch(body) opens a write transaction, calls body(cursor) and commits.
        self._run_batch = run_batch
        self._max = max_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, op: Callable[[], Any]) -> Any:
        """Run ``op`` inside the next group transaction; return its result once committed."""
        future: Future[Any] = Future()
        self._queue.put((op, future))
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._loop, name="fhir-group-commit", daemon=True)
                    self._thread.start()
        return future.result()

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(10)
            self._thread = None

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            batch = [item]
            while len(batch) < self._max:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    self._queue.put(_STOP)
                    break
                batch.append(nxt)
            self._run(batch)

    def _run(self, batch: list[tuple[Callable[[], Any], Future[Any]]]) -> None:
        outcomes: list[tuple[Future[Any], Any, BaseException | None]] = []

        def body(cur: Any) -> None:
            for op, future in batch:
                cur.execute("SAVEPOINT fhir_op")
                try:
                    result = op()
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    cur.execute("ROLLBACK TO fhir_op")
                    cur.execute("RELEASE fhir_op")
                    outcomes.append((future, None, exc))
                else:
                    cur.execute("RELEASE fhir_op")
                    outcomes.append((future, result, None))

        try:
            self._run_batch(body)
        except BaseException as exc:  # noqa: BLE001 - BEGIN or COMMIT failed: nothing was kept
            for _, future in batch:
                future.set_exception(exc)
            return
        for future, result, error in outcomes:
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)
