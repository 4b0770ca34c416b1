"""The two reference servers every REST number is divided by, measured in the same run.

Both answer `GET /fhir/Patient/{id}` with the same Patient bytes our server stores, so a ratio
isolates what our stack adds: `bare_app` is uvicorn's floor (ASGI with nothing on top), the FastAPI
app is the floor for any route written in FastAPI. Run them as
`uvicorn bench.apps:bare_app` and `uvicorn --factory bench.apps:make_fastapi_app`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from bench.data import patient_bytes

PATIENT_BYTES = patient_bytes()
MEDIA_TYPE = "application/fhir+json"
ROUTE_PREFIX = "/fhir/Patient/"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_HEADERS = [
    (b"content-type", MEDIA_TYPE.encode("ascii")),
    (b"content-length", str(len(PATIENT_BYTES)).encode("ascii")),
]
_NOT_FOUND = b'{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"not-found"}]}'


async def bare_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    path: str = scope["path"]
    if scope["method"] == "GET" and path.startswith(ROUTE_PREFIX) and "/" not in path[len(ROUTE_PREFIX) :]:
        await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
        await send({"type": "http.response.body", "body": PATIENT_BYTES})
        return
    await send(
        {
            "type": "http.response.start",
            "status": 404,
            "headers": [(b"content-type", MEDIA_TYPE.encode()), (b"content-length", b"%d" % len(_NOT_FOUND))],
        }
    )
    await send({"type": "http.response.body", "body": _NOT_FOUND})


def make_fastapi_app() -> Any:
    # Imported here so the bare server process never pays for (or is slowed by) FastAPI's import.
    from fastapi import FastAPI, Response

    app = FastAPI()

    @app.get("/fhir/Patient/{id}")
    async def read_patient(id: str) -> Response:
        return Response(content=PATIENT_BYTES, media_type=MEDIA_TYPE)

    return app
