"""The reference workloads measured in every run: the generator's ceiling, bare ASGI, minimal FastAPI.

Each starts its own server process (one uvicorn worker, or the raw server for `cap`) on a free
loopback port, drives `GET /fhir/Patient/{id}` at it and stops it.
"""

from __future__ import annotations

import sys

from bench.drive import Settings, drive, spec_for
from bench.loadgen import LoadResult
from bench.servers import free_port, serve, uvicorn_cmd

READ_PATH = "/fhir/Patient/58c297c4-d684-4677-8024-01131d93835e"


def run_cap(settings: Settings) -> LoadResult:
    port = free_port()
    with serve("rawserver", [sys.executable, "-m", "bench.rawserver", str(port)], port, READ_PATH) as server:
        return drive(server, spec_for(settings, port, READ_PATH), settings)


def run_bare(settings: Settings) -> LoadResult:
    port = free_port()
    with serve("bare-asgi", uvicorn_cmd("bench.apps:bare_app", port), port, READ_PATH) as server:
        return drive(server, spec_for(settings, port, READ_PATH), settings)


def run_fastapi(settings: Settings) -> LoadResult:
    port = free_port()
    cmd = uvicorn_cmd("bench.apps:make_fastapi_app", port, factory=True)
    with serve("minimal-fastapi", cmd, port, READ_PATH) as server:
        return drive(server, spec_for(settings, port, READ_PATH), settings)
