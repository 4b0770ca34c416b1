"""The input side of ``fhir-server load``: files, folders and archives turned into units of work.

Inputs, recognised by name (case-insensitively):

* ``.json``, ``.json.gz``: one JSON document.  A transaction or batch Bundle becomes one unit of
  that kind, never split, because a transaction is all or nothing.  A collection or searchset
  Bundle becomes a ``collection`` unit of its entries.  Any other resource, Bundles of other
  types included, becomes a ``collection`` unit of that one resource.
* ``.ndjson``, ``.ndjson.gz``: one resource a line, read line by line into ``collection`` units of
  up to ``ndjson_batch`` resources.  A bad line is a :class:`LoadError` and the lines after it
  still load.
* ``.tar.gz``, ``.tgz``: each member is read like a file of the same name.

Folders are walked recursively.  In every folder, on disk or in an archive, entries are taken in
the order (not a shared-information file, name), so Synthea's ``hospitalInformation*`` and
``practitionerInformation*`` bundles, which the patient bundles reference, load first.  Paths
given by the caller keep the caller's order.  Inside folders and archives, names starting with
"." are skipped: they are editor and OS litter such as macOS ``._x.json`` files, which are not JSON.
So are files of other types; a file given by the caller with an unknown type is a LoadError.

Every item carries ``bytes``, the input bytes as stored on disk (compressed bytes for gzip) that
it accounts for, so that a progress display can show a percentage and an ETA against
:func:`total_bytes`.  Within a gzip file that is the compressed offset the decompressor has
reached; within an archive, the archive's size is shared among its members in proportion to their
uncompressed sizes.  Over a whole iteration the ``bytes`` add up to ``total_bytes(paths)``; they
fall short only by the tail of the last input when that tail yields no item (blank lines, say).

Nothing is read before it is needed: JSON documents are read one at a time, NDJSON line by line,
archive members one at a time.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol, TypeAlias

from fhir_server.model import jsonio

Kind = Literal["transaction", "batch", "collection"]
_Format = Literal["json", "ndjson", "archive"]

# Files whose resources the other files reference (Synthea writes these once per run).
SHARED_INFO_MARKERS = ("hospitalInformation", "practitionerInformation")

_SUFFIXES: tuple[tuple[str, _Format, bool], ...] = (
    (".json", "json", False),
    (".json.gz", "json", True),
    (".ndjson", "ndjson", False),
    (".ndjson.gz", "ndjson", True),
    (".tar.gz", "archive", True),
    (".tgz", "archive", True),
)

_BUNDLE_KINDS: dict[str, Kind] = {
    "transaction": "transaction",
    "batch": "batch",
    "collection": "collection",
    "searchset": "collection",
}

# Reading a tar.gz member that lies before the current position restarts decompression at the
# start of the archive.  A name-sorted archive costs two restarts (on to the shared-information
# files near its end, then back to the first patient); tar does not sort by default, though, and
# directory order would cost a restart per member, so beyond this the archive is decompressed
# once into a temporary file and read from there.
_MAX_REWINDS = 3

# The bytes could not be read, as opposed to read and not understood.
_READ_ERRORS = (OSError, EOFError, zlib.error, tarfile.TarError)

_NOT_A_RESOURCE = "not a FHIR resource (expected a JSON object with a resourceType)"


@dataclass
class LoadUnit:
    """Entries to load together: one transaction or batch as written, or a run of resources."""

    source: str  # where the entries came from, e.g. "/data/a.tar.gz:fhir/b.json"
    kind: Kind
    entries: list[dict[str, Any]]  # shaped like Bundle.entry: {"fullUrl"?, "resource"?, "request"?}
    first_index: int = 0  # index of entries[0] in the source: bundle entry index or NDJSON line number
    line_numbers: list[int] | None = None  # NDJSON: the line number of each entry
    bytes: int = 0  # input bytes on disk this unit accounts for (see the module docstring)
    file: str = ""  # the file (or archive member) it came from; several units of one NDJSON file share it

    def __post_init__(self) -> None:
        if not self.file:
            self.file = self.source


@dataclass
class LoadError:
    """Input that cannot be loaded: a whole file (entry None), a bundle entry or an NDJSON line."""

    source: str
    entry: int | None  # bundle entry index, or NDJSON line number
    message: str
    bytes: int = 0  # input bytes on disk skipped with it, so progress still advances


LoadItem: TypeAlias = LoadUnit | LoadError


class _Stream(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...

    def __iter__(self) -> Iterator[bytes]: ...


class _Meter:
    """Hands out one input's size on disk in step with a reading position, so that the items of
    that input add up to exactly its size whatever the rounding on the way."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.span = budget  # the position at which all of the budget is spent
        self.given = 0

    def at(self, position: int) -> int:
        target = self.budget if position >= self.span else self.budget * max(position, 0) // self.span
        delta = max(target - self.given, 0)
        self.given += delta
        return delta


def iter_units(paths: Iterable[str | Path], *, ndjson_batch: int = 500) -> Iterator[LoadUnit | LoadError]:
    """Yield the units of work in ``paths`` in load order, and a LoadError for whatever cannot be
    loaded; an error never stops the iteration."""
    if ndjson_batch < 1:
        raise ValueError("ndjson_batch must be at least 1")
    carry = 0  # bytes of an input that ended without an item, handed to the next item
    for found in _walk(paths):
        if isinstance(found, LoadError):
            yield found
            continue
        meter = _Meter(_size(found))
        for item in _read_file(found, meter, ndjson_batch):
            item.bytes += carry
            carry = 0
            yield item
        carry += meter.budget - meter.given


def total_bytes(paths: Iterable[str | Path]) -> int:
    """The size on disk of everything :func:`iter_units` would read from ``paths``: the 100% mark
    for the ``bytes`` of its items.  Only walks folders and stats files, so it is cheap."""
    return sum(_size(found) for found in _walk(paths) if isinstance(found, Path))


def is_shared_info(name: str) -> bool:
    return any(marker in name for marker in SHARED_INFO_MARKERS)


def _sort_key(name: str) -> tuple[bool, str]:
    return (not is_shared_info(name), name)


def _classify(name: str) -> tuple[_Format, bool] | None:
    lower = name.lower()
    for suffix, fmt, gzipped in _SUFFIXES:
        if lower.endswith(suffix):
            return fmt, gzipped
    return None


def _size(path: Path) -> int:
    with suppress(OSError):
        return path.stat().st_size
    return 0


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _json_message(exc: ValueError, *, one_line: bool) -> str:
    if isinstance(exc, json.JSONDecodeError):
        where = f"column {exc.colno}" if one_line else f"line {exc.lineno} column {exc.colno}"
        return f"invalid JSON: {exc.msg} at {where}"
    return f"invalid JSON: {exc}"


# --- walking -------------------------------------------------------------------------------------


def _walk(paths: Iterable[str | Path]) -> Iterator[Path | LoadError]:
    for given in paths:
        path = Path(given)
        try:
            info = path.stat()
        except OSError as exc:
            yield LoadError(str(path), None, f"cannot read: {_reason(exc)}")
            continue
        if stat.S_ISDIR(info.st_mode):
            yield from _walk_folder(path, frozenset({(info.st_dev, info.st_ino)}))
        else:
            yield path


def _walk_folder(folder: Path, ancestors: frozenset[tuple[int, int]]) -> Iterator[Path | LoadError]:
    try:
        with os.scandir(folder) as listing:
            names = sorted((e.name for e in listing if not e.name.startswith(".")), key=_sort_key)
    except OSError as exc:
        yield LoadError(str(folder), None, f"cannot read folder: {_reason(exc)}")
        return
    for name in names:
        path = folder / name
        try:
            info = path.stat()
        except OSError as exc:  # a dangling symbolic link, or removed since the listing
            if _classify(name) is not None:
                yield LoadError(str(path), None, f"cannot read: {_reason(exc)}")
            continue
        if stat.S_ISDIR(info.st_mode):
            folder_id = (info.st_dev, info.st_ino)
            if folder_id in ancestors:
                yield LoadError(str(path), None, "symbolic link back to an enclosing folder, not followed")
            else:
                yield from _walk_folder(path, ancestors | {folder_id})
        elif stat.S_ISREG(info.st_mode) and _classify(name) is not None:
            yield path


# --- reading -------------------------------------------------------------------------------------


def _read_file(path: Path, meter: _Meter, ndjson_batch: int) -> Iterator[LoadItem]:
    source = str(path)
    found = _classify(path.name)
    if found is None:
        expected = ", ".join(suffix for suffix, _, _ in _SUFFIXES)
        yield LoadError(source, None, f"unsupported file type (expected {expected})", meter.at(meter.span))
        return
    fmt, gzipped = found
    try:
        with open(path, "rb") as raw:
            if fmt == "archive":
                yield from _read_archive(raw, source, meter, ndjson_batch)
            elif gzipped:
                with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
                    yield from _read_document(unzipped, fmt, source, raw.tell, meter.span, meter, ndjson_batch)
            else:
                yield from _read_document(raw, fmt, source, raw.tell, meter.span, meter, ndjson_batch)
    except _READ_ERRORS as exc:
        yield LoadError(source, None, f"cannot read: {_reason(exc)}", meter.at(meter.span))


def _read_document(
    stream: _Stream,
    fmt: _Format,
    source: str,
    position: Callable[[], int],
    end: int,
    meter: _Meter,
    ndjson_batch: int,
) -> Iterator[LoadItem]:
    """Items of one JSON or NDJSON document; ``position`` is the reading position in the units of
    ``meter`` and ``end`` the position at which the document ends."""
    if fmt == "ndjson":
        yield from _read_ndjson(stream, source, position, end, meter, ndjson_batch)
        return
    data = stream.read()
    try:
        document = jsonio.loads(data)
    except ValueError as exc:
        yield LoadError(source, None, _json_message(exc, one_line=False), meter.at(end))
        return
    yield _document_item(document, source, meter.at(end))


def _document_item(document: Any, source: str, nbytes: int) -> LoadItem:
    if not _is_resource(document):
        return LoadError(source, None, _NOT_A_RESOURCE, nbytes)
    kind = _BUNDLE_KINDS.get(document.get("type")) if document["resourceType"] == "Bundle" else None
    if kind is None:
        return LoadUnit(source, "collection", [{"resource": document}], bytes=nbytes)
    entries = document.get("entry", [])
    if not isinstance(entries, list):
        return LoadError(source, None, "Bundle.entry is not an array", nbytes)
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            # Rejecting the whole bundle keeps a transaction all or nothing and entry indexes true.
            return LoadError(source, index, "Bundle entry is not an object", nbytes)
    return LoadUnit(source, kind, entries, bytes=nbytes)


def _is_resource(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    resource_type = value.get("resourceType")
    return isinstance(resource_type, str) and resource_type != ""


def _read_ndjson(
    stream: _Stream,
    source: str,
    position: Callable[[], int],
    end: int,
    meter: _Meter,
    ndjson_batch: int,
) -> Iterator[LoadItem]:
    entries: list[dict[str, Any]] = []
    numbers: list[int] = []
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            # Leading blanks kept, so that error columns match the line as the user sees it.
            resource = jsonio.loads(line.rstrip(b"\r\n"))
        except ValueError as exc:
            yield LoadError(source, number, _json_message(exc, one_line=True), meter.at(position()))
            continue
        if not _is_resource(resource):
            yield LoadError(source, number, _NOT_A_RESOURCE, meter.at(position()))
            continue
        entries.append({"resource": resource})
        numbers.append(number)
        if len(entries) == ndjson_batch:
            yield _ndjson_unit(source, entries, numbers, meter.at(position()))
            entries, numbers = [], []
    if entries:
        yield _ndjson_unit(source, entries, numbers, meter.at(end))


def _ndjson_unit(source: str, entries: list[dict[str, Any]], numbers: list[int], nbytes: int) -> LoadUnit:
    lines = f"line {numbers[0]}" if len(numbers) == 1 else f"lines {numbers[0]}-{numbers[-1]}"
    return LoadUnit(f"{source} ({lines})", "collection", entries, numbers[0], numbers, nbytes, file=source)


# --- archives ------------------------------------------------------------------------------------


def _read_archive(raw: BinaryIO, source: str, meter: _Meter, ndjson_batch: int) -> Iterator[LoadItem]:
    with tarfile.open(fileobj=raw, mode="r:gz") as archive:
        members = _index(archive)
        if _rewinds(members) <= _MAX_REWINDS:
            yield from _read_members(archive, members, source, meter, ndjson_batch)
            return
    with tempfile.TemporaryFile(prefix="fhir-load-") as spool:
        raw.seek(0)
        with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
            shutil.copyfileobj(unzipped, spool, 1 << 20)
        spool.seek(0)
        with tarfile.open(fileobj=spool, mode="r:") as archive:
            yield from _read_members(archive, _index(archive), source, meter, ndjson_batch)


def _index(archive: tarfile.TarFile) -> list[tuple[tarfile.TarInfo, _Format, bool]]:
    """The members to load, in the order a folder walk of the unpacked archive would take them,
    with their format and whether they are gzipped."""
    keyed: list[tuple[tuple[tuple[bool, str], ...], tarfile.TarInfo, _Format, bool]] = []
    for member in archive.getmembers():
        # "./fhir/x.json" from `tar czf x.tgz .` names the same file as "fhir/x.json".
        parts = [part for part in member.name.split("/") if part not in ("", ".")]
        if not member.isfile() or not parts or any(part.startswith(".") for part in parts):
            continue
        found = _classify(parts[-1])
        if found is not None:
            keyed.append((tuple(_sort_key(part) for part in parts), member, *found))
    keyed.sort(key=lambda row: row[0])
    return [(member, fmt, gzipped) for _, member, fmt, gzipped in keyed]


def _rewinds(members: list[tuple[tarfile.TarInfo, _Format, bool]]) -> int:
    """How many times reading ``members`` in this order goes back in the archive."""
    count = 0
    position: int | None = None  # indexing leaves the reader at the end: the first read goes back
    for member, _, _ in members:
        if position is None or member.offset_data < position:
            count += 1
        position = member.offset_data + member.size
    return count


def _read_members(
    archive: tarfile.TarFile,
    members: list[tuple[tarfile.TarInfo, _Format, bool]],
    source: str,
    meter: _Meter,
    ndjson_batch: int,
) -> Iterator[LoadItem]:
    meter.span = sum(member.size for member, _, _ in members)
    start = 0
    for member, fmt, gzipped in members:
        member_source = f"{source}:{member.name}"
        end = start + member.size
        if fmt == "archive":
            yield LoadError(member_source, None, "archives inside archives are not supported", meter.at(end))
        else:
            try:
                yield from _read_member(archive, member, fmt, gzipped, member_source, start, meter, ndjson_batch)
            except _READ_ERRORS as exc:
                yield LoadError(member_source, None, f"cannot read: {_reason(exc)}", meter.at(end))
        start = end


def _read_member(
    archive: tarfile.TarFile,
    member: tarfile.TarInfo,
    fmt: _Format,
    gzipped: bool,
    source: str,
    start: int,
    meter: _Meter,
    ndjson_batch: int,
) -> Iterator[LoadItem]:
    member_file = archive.extractfile(member)
    if member_file is None:  # only for members that are not regular files, which _index leaves out
        return
    end = start + member.size
    with member_file:
        def position() -> int:
            return start + member_file.tell()

        if gzipped:
            with gzip.GzipFile(fileobj=member_file, mode="rb") as unzipped:
                yield from _read_document(unzipped, fmt, source, position, end, meter, ndjson_batch)
        else:
            yield from _read_document(member_file, fmt, source, position, end, meter, ndjson_batch)
