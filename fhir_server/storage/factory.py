"""Choose the backend from the database URL."""

from __future__ import annotations

from fhir_server.config import Settings
from fhir_server.storage.base import Backend
from fhir_server.storage.sql.backend import SqlBackend


def open_backend(settings: Settings) -> Backend:
    url = settings.database_url
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        from pathlib import Path

        path = Path(url.removeprefix("sqlite:///").split("?", 1)[0])
        if str(path) and not path.parent.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
    from fhir_server.search.extract import Indexer

    return SqlBackend(url, pool_size=settings.db_pool_size, timeout_s=settings.db_timeout_seconds,
                      indexer=Indexer(settings.fhir_base))
