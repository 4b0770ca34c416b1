"""The storage seam: the only interface the HTTP layer and interactions use to reach data.

Every backend (SQL on SQLite or PostgreSQL, facade adapters over a non-FHIR schema) implements
``Backend``; one contract test suite runs against each.  Bodies cross the seam as the exact JSON
bytes that were validated and stamped, so reads never re-parse.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from fhir_server.search.query import SearchQuery


@dataclass(frozen=True, slots=True)
class StoredResource:
    resource_type: str
    id: str
    version: int
    last_updated: str  # FHIR instant as written in meta.lastUpdated
    last_updated_ms: int  # epoch milliseconds, for headers and comparisons
    deleted: bool
    body: bytes | None  # None for a deleted version

    @property
    def etag(self) -> str:
        return f'W/"{self.version}"'


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    resource: StoredResource
    method: str  # POST | PUT | DELETE


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    resource: StoredResource
    created: bool  # True when the write created the resource (201), False for an update (200)
    # For a conditional create that matched an existing resource: nothing was written.
    existing: bool = False


@dataclass(frozen=True, slots=True)
class Page:
    """One page of matches, the resources _include/_revinclude brought, and opaque page cursors."""

    items: list[StoredResource]
    total: int | None
    next_cursor: str | None
    prev_cursor: str | None = None
    included: list[StoredResource] = field(default_factory=list)
    include_capped: bool = False


@dataclass(frozen=True, slots=True)
class HistoryPage:
    items: list[HistoryEntry]
    total: int | None
    next_cursor: str | None


@dataclass(slots=True)
class HistoryQuery:
    resource_type: str | None = None  # None: system history
    id: str | None = None  # set: instance history
    since_ms: int | None = None
    at_ms: tuple[int, int] | None = None  # [lo, hi) range of the _at value
    count: int = 20
    cursor: str | None = None


# Builds the stored bytes of a resource for its assigned identity; the backend calls it inside
# the write transaction once it knows the version (the body must carry meta.versionId).
Stamper = Callable[[dict[str, Any], str, int, str], bytes]


@dataclass(slots=True)
class WriteRequest:
    resource_type: str
    resource: dict[str, Any]
    id: str | None = None  # None: server assigns
    if_match: int | None = None  # expected current version
    if_none_exist: SearchQuery | None = None  # conditional create
    # update only: when the stored current version has the same content, write nothing (existing=True)
    skip_unchanged: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class BackendUnavailable(Exception):
    """The database cannot be reached; the HTTP layer answers 503."""


class WriteConflict(Exception):
    """The database aborted a write to break a deadlock or a serialisation conflict; the HTTP
    layer answers 409 and the client may retry (nothing of the aborted transaction was kept)."""


class VersionConflict(Exception):
    """If-Match named a version that is not the current one."""

    def __init__(self, current: int | None) -> None:
        super().__init__(f"current version is {current}")
        self.current = current


class MultipleMatches(Exception):
    """A conditional interaction matched more than one resource."""

    def __init__(self, count: int) -> None:
        super().__init__(f"{count} resources match")
        self.count = count


class Backend(Protocol):
    # True when reads are quick in-process work (embedded database) that may run on the event loop.
    fast_reads: bool
    # False when the database admits one writer at a time (SQLite): writes are then queued, not threaded.
    parallel_writes: bool
    # True when an event loop can await writes (``create_async``, ``update_async``) instead of
    # blocking a thread on each: the SQLite backend writes them on the loop itself.
    async_writes: bool

    def start(self) -> None:
        """Create or upgrade the schema; called once before serving."""

    def close(self) -> None: ...

    def ping(self) -> bool: ...

    def read(self, resource_type: str, id: str) -> StoredResource | None:
        """The current version (possibly a deleted marker), or None if the id never existed."""

    def vread(self, resource_type: str, id: str, version: int) -> StoredResource | None: ...

    def create(self, req: WriteRequest, stamp: Stamper) -> WriteOutcome:
        """Create with a server id (or ``req.id``); honours ``if_none_exist`` race-free.

        Raises MultipleMatches when the condition matches more than one resource."""

    async def create_async(self, req: WriteRequest, stamp: Stamper) -> WriteOutcome:
        """``create`` awaited on the event loop; only called when ``async_writes`` is True."""

    async def update_async(self, req: WriteRequest, stamp: Stamper) -> WriteOutcome:
        """``update`` awaited on the event loop; only called when ``async_writes`` is True."""

    def update(self, req: WriteRequest, stamp: Stamper) -> WriteOutcome:
        """Update (or create with the client's id). Raises VersionConflict on a stale If-Match."""

    def delete(self, resource_type: str, id: str, if_match: int | None = None) -> StoredResource | None:
        """Logical delete; returns the delete marker version, or None when nothing was there to delete.

        Raises VersionConflict when ``if_match`` is not the current version."""

    def lock_resources(self, keys: Sequence[tuple[str, str]]) -> None:
        """Inside transaction(): hold off other writers of these (type, id) resources until it ends.

        Taken in one sorted order, so that transactions touching the same resources queue
        instead of deadlocking."""

    def match(self, query: SearchQuery, limit: int, *, lock: bool = False) -> list[StoredResource]:
        """Up to ``limit`` current resources matching ``query``, for conditional interactions.

        ``lock`` (inside transaction()) holds the criteria until the transaction ends, so that
        concurrent conditional writes with the same criteria are serialised."""

    def history(self, query: HistoryQuery) -> HistoryPage: ...

    def search(self, query: SearchQuery, max_include: int = 1000) -> Page: ...

    def transaction(self) -> AbstractContextManager[Backend]:
        """A context in which every call commits together or not at all."""

    def iter_all(self, resource_type: str | None = None) -> Iterator[StoredResource]: ...
