"""The FHIR REST surface as a plain ASGI application.

It sits below FastAPI's routing on purpose: measured, FastAPI's per-request machinery costs more
than the whole read of a stored resource.  Every failure leaves through ``_error_response`` as an
OperationOutcome in the negotiated format; no traceback ever reaches a client.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import anyio
import anyio.to_thread

from fhir_server.errors import FhirError, OutcomeIssue, operation_outcome
from fhir_server.http.negotiation import DEFAULT_FORMAT, OutFormat, choose_format, render_dict
from fhir_server.http.request import FhirRequest
from fhir_server.http.router import Route, resolve
from fhir_server.interactions.common import Context, FhirResponse
from fhir_server.storage.base import BackendUnavailable, WriteConflict

if TYPE_CHECKING:
    from fhir_server.auth.authenticate import Authenticator
    from fhir_server.auth.policy import AccessPolicy

log = logging.getLogger("fhir_server.http")

_BODY_METHODS = {"POST", "PUT", "PATCH"}
# Bodies up to this size are validated on the event loop when the interaction can await its write
# (a 2.8 KB Patient takes ~0.3 ms of parsing, validation and index extraction); bigger ones go to a
# worker thread, so that one large resource cannot hold up every other request for long.
_ON_LOOP_BODY_BYTES = 64 * 1024


class BodyTooLarge(Exception):
    pass


class FhirAsgiApp:
    def __init__(self, ctx: Context, prefix: str = "/fhir") -> None:
        self.ctx = ctx
        self.prefix = prefix
        self.limiter = anyio.CapacityLimiter(max(4, ctx.settings.db_pool_size * 2))
        # A backend that cannot take concurrent writes gets one writing thread: measured, 16 threads
        # queueing on SQLite's write lock burned more CPU on lock and GIL hand-offs than the writes.
        # (SQLite files take them: the backend batches them into group commits.)
        self.write_limiter = self.limiter if ctx.backend.parallel_writes else anyio.CapacityLimiter(1)
        self._authenticator: Authenticator | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        fmt = DEFAULT_FORMAT
        head = False
        try:
            headers: dict[str, str] = {}
            for k, v in scope["headers"]:
                name = k.decode("latin-1").lower()
                value = v.decode("latin-1")
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
            qs = scope.get("query_string", b"")
            query = parse_qsl(qs.decode("latin-1"), keep_blank_values=True) if qs else []
            fmt = self._format(query, headers)
            method = scope["method"]
            head = method == "HEAD"
            if head:
                # HEAD is GET without the body (RFC 9110 9.3.2): same status and headers.
                method = "GET"
            rest = scope["path"][len(self.prefix):].strip("/")
            segments = rest.split("/") if rest else []
            route = resolve(method, segments)
            policy = self._authenticate(route, headers)
            body = await self._read_body(receive, headers) if method in _BODY_METHODS else b""
            req = FhirRequest(method, segments, query, headers, body, self.ctx.base, fmt, policy=policy)
            if route.reads_only and self.ctx.backend.fast_reads:
                resp = route.handler(self.ctx, req, *route.args)
            elif (route.on_loop is not None and self.ctx.backend.async_writes
                  and len(body) <= _ON_LOOP_BODY_BYTES):
                resp = await route.on_loop(self.ctx, req, *route.args)
            else:
                resp = await anyio.to_thread.run_sync(
                    lambda: route.handler(self.ctx, req, *route.args),
                    limiter=self.limiter if route.reads_only else self.write_limiter,
                )
        except Exception as exc:  # noqa: BLE001 - every failure becomes an OperationOutcome
            resp = _error_response(exc, fmt)
        await _send(send, resp, head)

    def _authenticate(self, route: Route, headers: dict[str, str]) -> AccessPolicy | None:
        """The caller's policy (None with FHIR_AUTH=off); the CapabilityStatement is public."""
        if self.ctx.auth is None or route.public:
            return None
        if self._authenticator is None:
            from fhir_server.auth.authenticate import Authenticator

            self._authenticator = Authenticator(self.ctx.auth)
        return self._authenticator.policy(headers)

    @staticmethod
    def _format(query: list[tuple[str, str]], headers: dict[str, str]) -> OutFormat:
        fmt_param = pretty = None
        for k, v in query:
            if k == "_format":
                fmt_param = v
            elif k == "_pretty":
                pretty = v
        return choose_format(fmt_param, headers.get("accept"), pretty)

    async def _read_body(self, receive: Any, headers: dict[str, str]) -> bytes:
        limit = self.ctx.settings.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise FhirError(413, f"The request body is larger than the limit of {limit} bytes", code="too-costly")
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise FhirError(400, "The client disconnected before sending the whole body", code="incomplete")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise FhirError(413, f"The request body is larger than the limit of {limit} bytes", code="too-costly")
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)


def _error_response(exc: Exception, fmt: OutFormat) -> FhirResponse:
    if isinstance(exc, FhirError):
        status, issues, extra = exc.status, exc.issues, exc.headers
        if status == 406:
            fmt = DEFAULT_FORMAT  # the client's format is the problem; answer in JSON
    elif isinstance(exc, WriteConflict):
        log.warning("write conflict, transaction aborted: %s", exc)
        status, extra = 409, {"Retry-After": "1"}
        issues = [OutcomeIssue("error", "conflict", "A concurrent write to the same resources aborted this one; "
                                                    "nothing of it was kept; retry")]
    elif isinstance(exc, BackendUnavailable):
        log.error("database unavailable: %s", exc)
        status, extra = 503, {"Retry-After": "5"}
        issues = [OutcomeIssue("error", "transient", "The database is unavailable; retry later")]
    else:
        log.exception("unexpected error")
        status, extra = 500, {}
        issues = [OutcomeIssue("fatal", "exception", "Internal server error; the server log has the details")]
    try:
        body = render_dict(operation_outcome(issues), fmt)
    except Exception:  # noqa: BLE001 - never fail while reporting a failure
        log.exception("rendering an OperationOutcome failed")
        fmt = DEFAULT_FORMAT
        body = render_dict(operation_outcome(issues), fmt)
    return FhirResponse(status, body, fmt.content_type, list(extra.items()))


async def _send(send: Any, resp: FhirResponse, head: bool = False) -> None:
    raw: list[tuple[bytes, bytes]] = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in resp.headers]
    if resp.content_type is not None:
        raw.append((b"content-type", resp.content_type.encode("latin-1")))
    if resp.status != 304:
        length = resp.length if resp.stream is not None else len(resp.body)
        raw.append((b"content-length", str(length).encode()))
    await send({"type": "http.response.start", "status": resp.status, "headers": raw})
    if resp.stream is not None and not head:
        # Each piece is read from the database in a worker thread, then sent: flat memory.
        stream = resp.stream
        while (piece := await anyio.to_thread.run_sync(next, stream, None)) is not None:
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    await send({"type": "http.response.body", "body": b"" if head or resp.status == 304 else resp.body})
