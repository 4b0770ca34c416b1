"""`fhir-server load`: bulk loading through the same engine as POSTed transactions.

Each unit (a Bundle file, a bare resource, a slice of an NDJSON file) is one storage transaction,
processed by the transaction engine with options that make loading idempotent: resources keep
their own ids (an upsert of ``Type/id``), resources that recur unchanged across files (Synthea's
Organizations and Practitioners) write nothing, and an invalid entry is reported and skipped.
With ``strict`` each file is one transaction, all of it or nothing.  Validation and indexing
are the API's.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any, TextIO

from fhir_server.errors import FhirError
from fhir_server.interactions.common import Context
from fhir_server.interactions.transaction import (
    BundleOptions,
    EntryError,
    EntryResult,
    run_batch,
    run_transaction,
)
from fhir_server.load.progress import Progress, summary
from fhir_server.load.sources import LoadError, LoadUnit, iter_units, total_bytes
from fhir_server.storage.base import WriteConflict


@dataclass(slots=True)
class LoadReport:
    counts: Counter[str] = field(default_factory=Counter)  # resources written or already present, by type
    unchanged: int = 0
    errors: list[LoadError] = field(default_factory=list)
    seconds: float = 0.0
    known: dict[str, str] = field(default_factory=dict)  # urn fullUrl -> "Type/id" stored so far

    @property
    def loaded(self) -> int:
        return sum(self.counts.values())


def _as_requests(unit: LoadUnit) -> list[Any]:
    """Entries of a collection (or bare resources) as upserts: PUT Type/id, or POST without an id."""
    out: list[Any] = []
    for entry in unit.entries:
        res = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(res, dict):
            out.append(entry)  # the engine reports it
            continue
        rt, rid = res.get("resourceType"), res.get("id")
        request = {"method": "PUT", "url": f"{rt}/{rid}"} if isinstance(rid, str) else {"method": "POST", "url": rt}
        out.append({**entry, "request": request})
    return out


def _entry_number(unit: LoadUnit, index: int) -> int:
    if unit.line_numbers is not None and 0 <= index < len(unit.line_numbers):
        return unit.line_numbers[index]
    return unit.first_index + index


def _message(exc: FhirError) -> str:
    return "; ".join(issue.diagnostics for issue in exc.issues)


class _FileTally:
    """What the units of one file stored; kept apart until the file is done, so that a strict
    file that fails adds nothing to the report."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.unchanged = 0
        self.errors: list[LoadError] = []
        self.identities: dict[str, str] = {}  # urn fullUrl -> "Type/id", for later files' references

    def add(self, unit: LoadUnit, results: list[EntryResult]) -> int:
        done = 0
        for i, res in enumerate(results):
            if res.error is not None:
                self.errors.append(LoadError(unit.source, _entry_number(unit, i), _message(res.error)))
                continue
            stored = res.result.stored if res.result is not None else None
            if stored is None:
                continue
            self.counts[stored.resource_type] += 1
            done += 1
            if res.result is not None and res.result.unchanged:
                self.unchanged += 1
            full_url = unit.entries[i].get("fullUrl") if i < len(unit.entries) else None
            if isinstance(full_url, str) and full_url.startswith("urn:"):
                self.identities[full_url] = f"{stored.resource_type}/{stored.id}"
        return done

    def merge_into(self, report: LoadReport) -> None:
        report.counts.update(self.counts)
        report.unchanged += self.unchanged
        report.errors.extend(self.errors)
        report.known.update(self.identities)


def _load(ctx: Context, unit: LoadUnit, tally: _FileTally, options: BundleOptions, *, atomic: bool) -> int:
    entries = unit.entries if unit.kind in ("transaction", "batch") else _as_requests(unit)
    if unit.kind == "batch" and not atomic:
        return tally.add(unit, run_batch(ctx, entries, options))
    try:
        return tally.add(unit, run_transaction(ctx, entries, options))
    except FhirError:
        if atomic:
            raise
    # A failure the transaction could not skip (a conflict, say): load entry by entry instead,
    # so that only the entries that fail are lost.
    return tally.add(unit, run_batch(ctx, entries, options))


def _failed_file(unit: LoadUnit, exc: Exception) -> LoadError:
    if isinstance(exc, EntryError):
        return LoadError(unit.source, _entry_number(unit, exc.index),
                         f"nothing of this file was loaded: {_message(exc)}")
    message = _message(exc) if isinstance(exc, FhirError) else str(exc)
    return LoadError(unit.file, None, f"nothing of this file was loaded: {message}")


class _FileFailed(Exception):
    def __init__(self, error: LoadError) -> None:
        super().__init__(error.message)
        self.error = error


_CONFLICT_RETRIES = 3


def _file_of(item: LoadUnit | LoadError) -> str:
    return item.file if isinstance(item, LoadUnit) else item.source


def _strict_file(ctx: Context, group: Iterator[LoadUnit | LoadError], options: BundleOptions) -> tuple[_FileTally, int]:
    """One file in one transaction: all of it, or (on the first problem) nothing of it."""
    tally, nbytes = _FileTally(), 0
    try:
        with ctx.backend.transaction():
            for item in group:
                nbytes += item.bytes
                if isinstance(item, LoadError):
                    raise _FileFailed(LoadError(item.source, item.entry,
                                                f"nothing of this file was loaded: {item.message}"))
                try:
                    _load(ctx, item, tally, options, atomic=True)
                except (FhirError, WriteConflict) as exc:
                    raise _FileFailed(_failed_file(item, exc)) from None
    except _FileFailed as failed:
        nbytes += sum(item.bytes for item in group)  # the rest of the file is skipped
        tally = _FileTally()
        tally.errors.append(failed.error)
    return tally, nbytes


def _lenient_file(ctx: Context, group: Iterator[LoadUnit | LoadError], options: BundleOptions) -> tuple[_FileTally, int]:
    tally, nbytes = _FileTally(), 0
    for item in group:
        nbytes += item.bytes
        if isinstance(item, LoadError):
            tally.errors.append(item)
            continue
        for attempt in range(_CONFLICT_RETRIES):
            try:
                _load(ctx, item, tally, options, atomic=False)
                break
            except WriteConflict as exc:  # a concurrent writer won a deadlock: the unit is retried
                if attempt == _CONFLICT_RETRIES - 1:
                    tally.errors.append(LoadError(item.source, None, f"not loaded after {attempt + 1} "
                                                  f"write conflicts: {exc}"))
    return tally, nbytes


def load_paths(ctx: Context, paths: Iterable[str | Path], *, strict: bool = False,
               stream: TextIO | None = None) -> LoadReport:
    """Load every input; with ``strict`` each file is one transaction (all of it or nothing)."""
    paths = list(paths)
    report = LoadReport()
    options = BundleOptions(keep_ids=True, skip_invalid=not strict, skip_unchanged=True, known=report.known)
    started = time.monotonic()
    progress = Progress(total_bytes(paths), stream) if stream is not None else None
    for _, group in groupby(iter_units(paths), key=_file_of):
        tally, nbytes = (_strict_file if strict else _lenient_file)(ctx, group, options)
        tally.merge_into(report)
        if progress is not None:
            progress.advance(sum(tally.counts.values()), nbytes, errors=len(tally.errors))
    report.seconds = time.monotonic() - started
    if progress is not None:
        progress.finish()
    return report


def report_text(report: LoadReport) -> str:
    return summary(dict(report.counts), report.errors, report.seconds)
