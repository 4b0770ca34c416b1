"""A server that costs next to nothing per request, for measuring the load generator's own ceiling.

It answers every GET with the same pre-built response and parses nothing but the blank line that
ends each request, so against it the generator (not the server) runs out of CPU first. Loopback
only: `python -m bench.rawserver PORT`.
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast

from bench.data import patient_bytes

_BODY = patient_bytes()
RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/fhir+json\r\ncontent-length: %d\r\n\r\n" % len(_BODY)
) + _BODY


class _Echo(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        # GETs have no body, so each blank line is one request; pipelined ones get one reply each.
        self.buf += data
        complete = self.buf.count(b"\r\n\r\n")
        if complete and self.transport is not None:
            self.buf = self.buf[self.buf.rindex(b"\r\n\r\n") + 4 :]
            self.transport.write(RESPONSE * complete)


async def _serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(_Echo, "127.0.0.1", port, backlog=512)
    async with server:
        await server.serve_forever()


def main() -> None:
    port = int(sys.argv[1])
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(port))
    else:
        uvloop.run(_serve(port))


if __name__ == "__main__":
    main()
