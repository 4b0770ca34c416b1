"""HTTP/1.1 keep-alive load against a loopback server: the spec, the result, the pure-Python driver.

The Python driver runs in its own process so it never shares a GIL with whatever started it, and is
written on asyncio Protocol callbacks rather than stream coroutines: a response costs one
`data_received` call, one header scan and one `write`, which lets one core drive roughly as many
requests as a bare uvicorn app on the other core can answer (measure it with the `cap` workload).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import multiprocessing as mp
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, cast

# A response still missing this long after the duration ends counts as a timeout, not a result.
DRAIN_SECONDS = 5.0
# Reconnects are normal when a server answers `Connection: close`, but must not loop forever.
MAX_RECONNECTS = 10_000

BodySource = bytes | Callable[[int], bytes] | None


def check_loopback(host: str) -> None:
    """Refuse any target but this machine: the bench must never load a host it does not own."""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ValueError(f"load target {host!r} is not a loopback address")


@dataclass(frozen=True)
class LoadSpec:
    port: int
    path: str
    host: str = "127.0.0.1"
    method: str = "GET"
    # bytes: the same body every time; a callable gets the request number (it must pickle, as the
    # generator runs in a spawned process): a module-level function or a `CountedBody`.
    body: BodySource = None
    content_type: str = "application/fhir+json"
    accept: str = "application/fhir+json"
    authorization: str = ""  # an Authorization header value sent with every request ("" for none)
    connections: int = 32
    seconds: float = 5.0
    warmup: float = 1.0
    max_requests: int = 5_000_000

    def __post_init__(self) -> None:
        check_loopback(self.host)
        if self.connections < 1 or self.seconds <= 0 or self.max_requests < 1:
            raise ValueError("connections, seconds and max_requests must be positive")


@dataclass
class LoadResult:
    driver: str
    requests: int = 0  # responses completed inside the measured window (warm-up excluded)
    elapsed: float = 0.0  # seconds from the end of warm-up to the last counted response
    statuses: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50, p95, p99, max
    client_cpu: float | None = None  # share of one core the generator itself used
    server_cpu: float | None = None  # share of one core the server used (filled in by the runner)
    connections: int = 0

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def per_server_cpu(self) -> float | None:
        """Requests per server CPU-second: what the server would do with a whole core to itself."""
        if not self.server_cpu or not self.requests or self.server_cpu < 0.05:
            return None
        return self.rps / self.server_cpu

    def count(self, *codes: int) -> int:
        return sum(self.statuses.get(str(code), 0) for code in codes)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["rps"] = round(self.rps, 1)
        per_cpu = self.per_server_cpu
        data["per_server_cpu"] = None if per_cpu is None else round(per_cpu, 1)
        return data


def percentiles_ms(latencies_s: list[float]) -> dict[str, float]:
    if not latencies_s:
        return {}
    ordered = sorted(latencies_s)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] * 1000.0

    return {"p50": rank(0.50), "p95": rank(0.95), "p99": rank(0.99), "max": ordered[-1] * 1000.0}


# --- response framing -------------------------------------------------------------------------------


def _chunked_end(buf: bytearray, pos: int) -> int | None:
    """Offset just past a chunked body starting at `pos`, or None while it is incomplete."""
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(bytes(buf[pos:line_end]).split(b";", 1)[0], 16)
        pos = line_end + 2
        if size == 0:
            while True:  # optional trailers, then the empty line
                line_end = buf.find(b"\r\n", pos)
                if line_end < 0:
                    return None
                if line_end == pos:
                    return pos + 2
                pos = line_end + 2
        pos += size + 2
        if pos > len(buf):
            return None


def parse_response(buf: bytearray) -> tuple[int, int] | None:
    """(end offset, status) of the first complete response in `buf`, or None if more bytes are due.

    Only the status and the body's framing are read: anything more would make the generator, not
    the server, the thing being measured.
    """
    header_end = buf.find(b"\r\n\r\n")
    if header_end < 0:
        return None
    status = int(buf[9:12])
    head = bytes(buf[:header_end]).lower()
    body_start = header_end + 4
    at = head.find(b"\r\ncontent-length:")
    if at >= 0:
        line_end = head.find(b"\r\n", at + 2)
        length = int(head[at + 17 : line_end if line_end >= 0 else len(head)])
        end = body_start + length
        return (end, status) if len(buf) >= end else None
    if b"chunked" in head and b"\r\ntransfer-encoding:" in head:
        chunked_end = _chunked_end(buf, body_start)
        return (chunked_end, status) if chunked_end is not None else None
    # 1xx/204/304 carry no body; anything else without framing would be read-until-close,
    # which a keep-alive benchmark cannot use, so it is treated as bodiless and shows up in statuses.
    return body_start, status


# --- the driver (runs inside the child process) -------------------------------------------------------


class _Conn(asyncio.Protocol):
    __slots__ = ("gen", "buf", "transport", "sent_at", "busy")

    def __init__(self, gen: _Generator) -> None:
        self.gen = gen
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.sent_at = 0.0
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.gen.open_conns.add(self)
        self.gen.send_next(self)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while buf:
            try:
                parsed = parse_response(buf)
            except ValueError:
                # Not HTTP we can frame: drop the connection (reconnects are bounded) and say so.
                self.gen.error("bad_response")
                buf.clear()
                if self.transport is not None:
                    self.transport.close()
                return
            if parsed is None:
                return
            end, status = parsed
            del buf[:end]
            self.gen.on_response(self, status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gen.on_lost(self)


class _Generator:
    def __init__(self, spec: LoadSpec, loop: asyncio.AbstractEventLoop) -> None:
        self.spec = spec
        self.loop = loop
        head = (
            f"{spec.method} {spec.path} HTTP/1.1\r\nHost: {spec.host}:{spec.port}\r\n"
            f"Accept: {spec.accept}\r\nUser-Agent: fhir-server-bench\r\n"
            + (f"Authorization: {spec.authorization}\r\n" if spec.authorization else "")
        ).encode("latin-1")
        self.head = head
        self.ctype = f"Content-Type: {spec.content_type}\r\n".encode("latin-1")
        self.body_factory: Callable[[int], bytes] | None = None
        self.static_request: bytes | None = None
        if callable(spec.body):
            self.body_factory = spec.body
        elif spec.body is not None:
            self.static_request = self._with_body(spec.body)
        else:
            self.static_request = head + b"\r\n"
        self.sent = 0
        self.recording = False
        self.stopping = False
        self.latencies: list[float] = []
        self.statuses: dict[int, int] = {}
        self.errors: dict[str, int] = {}
        self.open_conns: set[_Conn] = set()
        self.reconnects = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.last_response_at = 0.0
        self.cap_reached: asyncio.Future[None] = loop.create_future()
        self.drained: asyncio.Future[None] = loop.create_future()

    def _with_body(self, body: bytes) -> bytes:
        return b"%s%sContent-Length: %d\r\n\r\n%s" % (self.head, self.ctype, len(body), body)

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def send_next(self, conn: _Conn) -> None:
        if self.stopping or self.sent >= self.spec.max_requests or conn.transport is None:
            conn.busy = False
            if not self.cap_reached.done() and self.sent >= self.spec.max_requests:
                self.cap_reached.set_result(None)
            self._check_drained()
            return
        self.sent += 1
        request = self.static_request
        if request is None:
            assert self.body_factory is not None
            request = self._with_body(self.body_factory(self.sent))
        conn.busy = True
        conn.sent_at = time.perf_counter()
        conn.transport.write(request)

    def on_response(self, conn: _Conn, status: int) -> None:
        if not conn.busy:
            self.error("unsolicited_response")
            return
        now = time.perf_counter()
        if self.recording:
            self.latencies.append(now - conn.sent_at)
            self.statuses[status] = self.statuses.get(status, 0) + 1
            self.last_response_at = now
        self.send_next(conn)

    def on_lost(self, conn: _Conn) -> None:
        self.open_conns.discard(conn)
        if conn.busy:
            conn.busy = False
            self.error("connection_lost_in_flight")
        transport, conn.transport = conn.transport, None
        if transport is not None and not self.stopping and self.reconnects < MAX_RECONNECTS:
            # A server may close after any response (Connection: close); keep the connection count.
            self.reconnects += 1
            task = self.loop.create_task(self.connect())
            self.tasks.add(task)  # the loop keeps only weak references to tasks
            task.add_done_callback(self.tasks.discard)
        self._check_drained()

    def _check_drained(self) -> None:
        if self.stopping and not self.drained.done() and not any(c.busy for c in self.open_conns):
            self.drained.set_result(None)

    async def connect(self) -> None:
        try:
            await self.loop.create_connection(lambda: _Conn(self), self.spec.host, self.spec.port)
        except OSError as exc:
            self.error(f"connect:{type(exc).__name__}")


async def _drive(spec: LoadSpec, phase: Callable[[str], None]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    gen = _Generator(spec, loop)
    await asyncio.gather(*(gen.connect() for _ in range(spec.connections)))
    if not gen.open_conns:
        return {"fatal": f"no connection to {spec.host}:{spec.port} could be opened: {gen.errors}"}
    if spec.warmup > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(gen.cap_reached), spec.warmup)
    gen.latencies.clear()
    gen.statuses.clear()
    gen.recording = True
    started = time.perf_counter()
    cpu_started = time.process_time()
    gen.last_response_at = started
    phase("start")
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(gen.cap_reached), spec.seconds)
    gen.stopping = True
    phase("end")
    gen._check_drained()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(gen.drained), DRAIN_SECONDS)
    cpu = time.process_time() - cpu_started
    stalled = sum(1 for c in gen.open_conns if c.busy)
    if stalled:
        gen.errors["timeout"] = gen.errors.get("timeout", 0) + stalled
    for conn in list(gen.open_conns):
        if conn.transport is not None:
            conn.transport.close()
    if gen.reconnects:
        gen.errors["reconnects"] = gen.reconnects
    elapsed = max(gen.last_response_at - started, 1e-9)
    return {
        "requests": len(gen.latencies),
        "elapsed": elapsed,
        "statuses": {str(k): v for k, v in sorted(gen.statuses.items())},
        "errors": gen.errors,
        "latency_ms": percentiles_ms(gen.latencies),
        "client_cpu": cpu / elapsed,
    }


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _child_main(spec: LoadSpec, out: Any) -> None:
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            out.send(runner.run(_drive(spec, out.send)))
    except BaseException as exc:  # the parent must always get an answer, never wait out its timeout
        out.send({"fatal": f"{type(exc).__name__}: {exc}"})
    finally:
        out.close()


def run_python(spec: LoadSpec, on_phase: Callable[[str], None] | None = None) -> LoadResult:
    """Drive `spec` from a fresh process; bounded by warm-up + duration + drain + start-up slack.

    `on_phase("start")` and `on_phase("end")` run in this process as the measured window opens and
    closes, so a caller can sample the server's CPU over exactly that window.
    """
    ctx = mp.get_context("spawn")  # no inherited sockets, threads or event loops from the runner
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(spec, sender), name="bench-loadgen", daemon=True)
    proc.start()
    sender.close()
    result = LoadResult(
        driver="python+uvloop" if _loop_factory() else "python+asyncio", connections=spec.connections
    )
    deadline = time.monotonic() + spec.warmup + spec.seconds + DRAIN_SECONDS + 60
    data: dict[str, Any] = {"fatal": "load generator did not report in time"}
    try:
        while receiver.poll(max(0.0, deadline - time.monotonic())):
            message = receiver.recv()
            if isinstance(message, str):
                if on_phase is not None:
                    on_phase(message)
                continue
            data = message
            break
    except EOFError:
        data = {"fatal": f"load generator exited with code {proc.exitcode}"}
    finally:
        receiver.close()
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
    if "fatal" in data:
        raise LoadError(data["fatal"])
    result.requests = data["requests"]
    result.elapsed = data["elapsed"]
    result.statuses = data["statuses"]
    result.errors = data["errors"]
    result.latency_ms = data["latency_ms"]
    result.client_cpu = data.get("client_cpu")
    return result


class LoadError(RuntimeError):
    pass
