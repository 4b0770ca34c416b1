"""Bundles assembled from stored resource bytes: no parse, no model round trip.

Each entry's resource is the stored JSON spliced in verbatim; only the small envelope is
serialised.  Search and history share this code, as will batch/transaction responses.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class Entry:
    full_url: str | None
    resource: bytes | None  # stored JSON bytes
    extra: dict[str, Any]  # search / request / response members of the entry


def http_date(ms: int) -> str:
    return formatdate(ms / 1000, usegmt=True)


def assemble(
    bundle_type: str,
    *,
    last_updated: str,
    total: int | None,
    links: Sequence[tuple[str, str]],
    entries: Iterable[Entry],
) -> bytes:
    head: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"lastUpdated": last_updated},
        "type": bundle_type,
    }
    if total is not None:
        head["total"] = total
    if links:
        head["link"] = [{"relation": rel, "url": url} for rel, url in links]
    parts: list[bytes] = []
    for e in entries:
        chunks: list[bytes] = []
        if e.full_url is not None:
            chunks.append(b'"fullUrl":' + orjson.dumps(e.full_url))
        if e.resource is not None:
            chunks.append(b'"resource":' + e.resource)
        for key, value in e.extra.items():
            chunks.append(orjson.dumps(key) + b":" + orjson.dumps(value))
        parts.append(b"{" + b",".join(chunks) + b"}")
    out = orjson.dumps(head)
    if not parts:
        return out
    return out[:-1] + b',"entry":[' + b",".join(parts) + b"]}"
