"""The pure-Python load generator counts real responses from a real server (no timing asserted)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn

from bench.apps import bare_app
from bench.bodies import CountedBody
from bench.loadgen import LoadSpec, parse_response, run_python


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def bare_server() -> Iterator[int]:
    port = _free_port()
    config = uvicorn.Config(bare_app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def test_counts_every_response_as_200(bare_server: int) -> None:
    spec = LoadSpec(port=bare_server, path="/fhir/Patient/example", connections=4, seconds=1.0, warmup=0.2)
    result = run_python(spec)
    assert result.requests > 0
    assert result.statuses == {"200": result.requests}
    assert "timeout" not in result.errors and "connection_lost_in_flight" not in result.errors
    assert set(result.latency_ms) == {"p50", "p95", "p99", "max"}


def test_other_statuses_are_counted_too(bare_server: int) -> None:
    # The bare app has no POST route: every request must come back as a counted 404, with its body.
    body = CountedBody.from_template(b'{"n":"' + CountedBody.MARKER.encode() + b'"}')
    spec = LoadSpec(
        port=bare_server, path="/fhir/Patient", method="POST", body=body, connections=2, seconds=0.5, warmup=0
    )
    result = run_python(spec)
    assert result.requests > 0
    assert result.statuses == {"404": result.requests}


def test_refuses_non_loopback_targets() -> None:
    with pytest.raises(ValueError, match="loopback"):
        LoadSpec(host="10.0.0.1", port=80, path="/")


def test_parses_content_length_and_chunked_framing() -> None:
    fixed = bytearray(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
    assert parse_response(fixed) == (len(fixed), 201)
    assert parse_response(fixed[:-1]) is None
    chunked = bytearray(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
    assert parse_response(chunked) == (len(chunked), 200)
    assert parse_response(chunked[:-2]) is None
