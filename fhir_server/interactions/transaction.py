"""batch and transaction (R4 http.html#transaction): POST [base] with a Bundle.

A transaction is one storage transaction: every entry takes effect or none does.  Entries are
processed in the order the specification gives (DELETE, POST, PUT/PATCH, GET/HEAD); server ids of
POST entries are assigned first so that every reference to an entry's fullUrl can be rewritten
before anything is validated or written.  A batch processes each entry on its own.

The bulk loader uses the same engine with ``BundleOptions`` that keep the resources' own ids
(upserts), skip and report invalid entries, and write nothing for unchanged resources.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from fhir_server.errors import FhirError, OutcomeIssue, operation_outcome
from fhir_server.http.negotiation import DEFAULT_FORMAT, parse_body, render_stored
from fhir_server.http.request import FhirRequest
from fhir_server.interactions.common import (
    Context,
    FhirResponse,
    WriteResult,
    check_resource,
)
from fhir_server.interactions.conditional import criteria, describe, find
from fhir_server.interactions.create import create_resource
from fhir_server.interactions.delete import conditional_delete_resource, delete_resource
from fhir_server.interactions.patch import (
    Patch,
    conditional_patch_resource,
    patch_from_resource,
    patch_resource,
)
from fhir_server.interactions.references import conditional_target, rewrite_references
from fhir_server.interactions.update import (
    check_id,
    conditional_update_resource,
    parse_if_match,
    update_resource,
)
from fhir_server.model.bundle import Entry, assemble
from fhir_server.model.instant import now_instant
from fhir_server.model.registry import require_served_type
from fhir_server.storage.base import WriteConflict

if TYPE_CHECKING:
    from fhir_server.auth.policy import AccessPolicy

_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
# R4 http.html#trules: the order in which a transaction's entries are processed.
_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}


@dataclass(frozen=True, slots=True)
class BundleOptions:
    keep_ids: bool = False  # POST entries that carry resource.id upsert that id (bulk loading)
    skip_invalid: bool = False  # an entry that fails validation is reported and left out
    skip_unchanged: bool = False  # an upsert of identical content writes no new version
    # fullUrl -> "Type/id" of what earlier Bundles of the same load stored: a reference to an
    # urn:uuid that is not in this Bundle (Synthea's Group lists its patients so) resolves there.
    known: dict[str, str] | None = None


@dataclass(slots=True)
class EntryResult:
    status: int
    result: WriteResult | None = None
    body: bytes | None = None  # a GET entry's response (JSON)
    headers: list[tuple[str, str]] = field(default_factory=list)
    error: FhirError | None = None


@dataclass(slots=True)
class _Op:
    index: int
    method: str
    url: str
    resource_type: str | None
    id: str | None
    params: list[tuple[str, str]] | None  # criteria of a conditional write, or a GET's parameters
    full_url: str | None
    resource: dict[str, Any] | None
    request: dict[str, Any]
    patch: Patch | None = None
    existing: bool = False  # a conditional create that matched
    done: EntryResult | None = None

    @property
    def conditional(self) -> bool:
        return self.id is None and self.params is not None and self.method != "GET"


def _reason(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


class EntryError(FhirError):
    """The failure of one Bundle entry; ``index`` is its position in Bundle.entry."""

    def __init__(self, index: int, exc: FhirError) -> None:
        where = f"Bundle.entry[{index}]"
        issues = [OutcomeIssue(i.severity, i.code, i.diagnostics if i.diagnostics.startswith(where)
                               else f"{where}: {i.diagnostics}", i.expression or (where,)) for i in exc.issues]
        super().__init__(exc.status, issues, headers=exc.headers)
        self.index = index


def _located(index: int, exc: FhirError) -> EntryError:
    """The error of entry ``index``, saying so in every issue."""
    if isinstance(exc, EntryError) and exc.index == index:
        return exc
    return EntryError(index, exc)


# -- parsing entries -----------------------------------------------------------------------------

def _parse_url(ctx: Context, url: str) -> tuple[list[str], list[tuple[str, str]] | None]:
    """Path segments below the base and the query of an entry's request.url."""
    if url.startswith(("http://", "https://")):
        if not url.startswith(ctx.base + "/") and url != ctx.base:
            raise FhirError(400, f"request.url '{url}' is not on this server's base {ctx.base}", code="invalid")
        url = url[len(ctx.base):]
    path, sep, query = url.lstrip("/").partition("?")
    segments = [s for s in path.split("/") if s]
    return segments, (parse_qsl(query, keep_blank_values=True) if sep else None)


def _parse_entry(ctx: Context, index: int, entry: Any) -> _Op:
    if not isinstance(entry, dict):
        raise FhirError(400, "A Bundle entry must be an object", code="structure")
    request = entry.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("method"), str) \
            or not isinstance(request.get("url"), str) or not request["url"]:
        raise FhirError(400, "Each entry of a batch or transaction needs request.method and request.url",
                        code="required")
    method = request["method"].upper()
    if method not in _METHODS:
        raise FhirError(400, f"request.method '{request['method']}' is not an HTTP verb of FHIR", code="invalid")
    segments, params = _parse_url(ctx, request["url"])
    resource = entry.get("resource")
    full_url = entry.get("fullUrl") if isinstance(entry.get("fullUrl"), str) else None
    op = _Op(index, method, request["url"], None, None, params, full_url, None, request)
    if method in ("GET", "HEAD"):
        return op  # routed like an HTTP request when its turn comes
    if not segments or len(segments) > 2 or segments[0].startswith(("$", "_")):
        raise FhirError(400, f"request.url '{request['url']}' is not a [type], [type]/[id] or [type]?criteria "
                        f"for {method}", code="invalid")
    require_served_type(segments[0])
    op.resource_type = segments[0]
    if len(segments) == 2:
        if method == "POST":
            raise FhirError(400, f"POST goes to [type], not '{request['url']}'", code="invalid")
        check_id(segments[1])
        op.id = segments[1]
        if params:
            raise FhirError(400, f"request.url '{request['url']}' has both an id and criteria", code="invalid")
        op.params = None
    elif method in ("PUT", "DELETE", "PATCH") and not params:
        raise FhirError(400, f"{method} {request['url']} needs an id or search criteria", code="invalid")
    if method in ("POST", "PUT"):
        if not isinstance(resource, dict):
            raise FhirError(400, f"A {method} entry needs a resource", code="required")
        if resource.get("resourceType") != op.resource_type:
            raise FhirError(400, f"resourceType '{resource.get('resourceType')}' does not match request.url "
                            f"'{request['url']}'", code="invalid")
        op.resource = resource
    elif method == "PATCH":
        op.patch = patch_from_resource(resource)
        op.resource = resource  # its references are rewritten too
    if method == "POST" and op.params:
        raise FhirError(400, "POST entries take no criteria in request.url; use request.ifNoneExist", code="invalid")
    return op


def _parse_bundle(ctx: Context, data: Any) -> tuple[str, list[Any]]:
    if not isinstance(data, dict) or data.get("resourceType") != "Bundle":
        raise FhirError(400, "POST to the base needs a Bundle of type batch or transaction", code="invalid")
    kind = data.get("type")
    if kind not in ("batch", "transaction"):
        raise FhirError(400, f"Bundle.type must be batch or transaction to be processed, not '{kind}'",
                        code="invalid")
    entries = data.get("entry", [])
    if not isinstance(entries, list):
        raise FhirError(400, "Bundle.entry must be an array", code="structure")
    limit = ctx.settings.bundle_max_entries
    if len(entries) > limit:
        raise FhirError(413, f"The Bundle has {len(entries)} entries; this server takes at most {limit} per "
                        "batch or transaction", code="too-costly")
    return kind, entries


# -- executing entries ---------------------------------------------------------------------------

def _write(ctx: Context, op: _Op, options: BundleOptions, policy: AccessPolicy | None) -> WriteResult:
    rt = op.resource_type
    assert rt is not None
    req = op.request
    if_match = parse_if_match(req.get("ifMatch")) if isinstance(req.get("ifMatch"), str) else None
    if op.method == "DELETE":
        if op.id is None:
            assert op.params is not None
            return conditional_delete_resource(ctx, rt, op.params, policy)
        return delete_resource(ctx, rt, op.id, if_match=if_match, policy=policy)
    if op.method == "PATCH":
        assert op.patch is not None
        if op.id is None:
            assert op.params is not None
            return conditional_patch_resource(ctx, rt, op.params, op.patch, if_match=if_match, policy=policy)
        return patch_resource(ctx, rt, op.id, op.patch, if_match=if_match, policy=policy)
    assert op.resource is not None and op.id is not None
    if op.method == "POST" and not options.keep_ids:
        return create_resource(ctx, rt, op.resource, id=op.id, policy=policy)
    if req.get("ifNoneMatch") == "*" or req.get("ifNoneMatch") == 'W/"*"':
        current = ctx.backend.read(rt, op.id)
        if current is not None and not current.deleted:
            raise FhirError(412, f"ifNoneMatch '*': {rt}/{op.id} exists already", code="duplicate")
    # A body without an id takes the target's (conditional PUT); one with a different id is refused.
    resource = op.resource if "id" in op.resource else {**op.resource, "id": op.id}
    return update_resource(ctx, rt, op.id, resource, if_match=if_match, skip_unchanged=options.skip_unchanged,
                           policy=policy)


def _read(ctx: Context, op: _Op, policy: AccessPolicy | None) -> EntryResult:
    """A GET/HEAD entry: routed exactly like the HTTP request it describes."""
    from fhir_server.http.router import resolve  # the router imports this module

    segments, params = _parse_url(ctx, op.url)
    headers = {}
    for key, header in (("ifNoneMatch", "if-none-match"), ("ifModifiedSince", "if-modified-since")):
        if isinstance(op.request.get(key), str):
            headers[header] = op.request[key]
    route = resolve("GET", segments)
    if not route.reads_only:
        raise FhirError(400, f"GET {op.url} is not a read or search", code="invalid")
    fake = FhirRequest("GET", segments, params or [], headers, b"", ctx.base, DEFAULT_FORMAT, policy=policy)
    resp: FhirResponse = route.handler(ctx, fake, *route.args)
    body = resp.body if resp.status == 200 and op.method == "GET" and resp.body else None
    return EntryResult(resp.status, body=body, headers=resp.headers)


def _run(ctx: Context, op: _Op, options: BundleOptions, policy: AccessPolicy | None) -> EntryResult:
    if op.method in ("GET", "HEAD"):
        return _read(ctx, op, policy)
    result = _write(ctx, op, options, policy)
    return EntryResult(result.status, result=result)


# -- identities and references -------------------------------------------------------------------

class _Identities:
    """fullUrl -> "Type/id" of every entry, and the cache of resolved conditional references."""

    def __init__(self, ctx: Context, known: dict[str, str] | None = None,
                 policy: AccessPolicy | None = None) -> None:
        self.ctx = ctx
        self.policy = policy
        self.known = known or {}
        self.by_full_url: dict[str, str] = {}
        self.conditional: dict[str, str] = {}

    def assign(self, op: _Op, options: BundleOptions, *, lock: bool) -> None:
        rt = op.resource_type
        assert rt is not None
        if op.method == "POST":
            condition = op.request.get("ifNoneExist")
            if isinstance(condition, str) and condition:
                if self.policy is not None and op.resource is not None:
                    self.policy.require_resource(rt, op.resource, "c")
                found = find(self.ctx, criteria(self.ctx, rt, condition, "ifNoneExist", self.policy), lock=lock)
                if len(found) > 1:
                    raise FhirError(412, f"ifNoneExist '{condition}' matched more than one resource",
                                    code="multiple-matches")
                if found:
                    op.id, op.existing = found[0].id, True
                    op.done = EntryResult(200, WriteResult(
                        200, found[0], f"A matching resource {rt}/{found[0].id} exists; nothing was created"))
            if op.id is None:
                own = op.resource.get("id") if op.resource is not None and options.keep_ids else None
                op.id = own if isinstance(own, str) else str(uuid.uuid4())
        elif op.conditional and op.method == "PUT":
            assert op.params is not None and op.resource is not None
            query = criteria(self.ctx, rt, op.params, "Conditional update", self.policy)
            found = find(self.ctx, query, lock=lock)
            if len(found) > 1:
                raise FhirError(412, f"Conditional update '{describe(query)}' matched more than one resource",
                                code="multiple-matches")
            body_id = op.resource.get("id")
            if found and body_id is not None and body_id != found[0].id:
                raise FhirError(400, f"The id '{body_id}' in the resource differs from the matching resource "
                                f"{rt}/{found[0].id}", code="invalid")
            op.id = found[0].id if found else body_id if isinstance(body_id, str) else str(uuid.uuid4())
        if op.full_url and op.id is not None:
            self.by_full_url[op.full_url] = f"{rt}/{op.id}"

    def resolver(self, rewrite_full_urls: bool) -> Callable[[str], str | None]:
        def resolve(reference: str) -> str | None:
            if rewrite_full_urls:
                known = self.by_full_url.get(reference) or self.known.get(reference)
                if known is not None:
                    return known
            target = conditional_target(reference)
            if target is None:
                return None
            cached = self.conditional.get(reference)
            if cached is None:
                rt, query = target
                require_served_type(rt)
                found = find(self.ctx, criteria(self.ctx, rt, query, "Conditional reference", self.policy))
                if len(found) > 1:
                    raise FhirError(412, f"Conditional reference '{reference}' matched more than one resource",
                                    code="multiple-matches")
                if not found:
                    raise FhirError(400, f"Conditional reference '{reference}' matched no resource",
                                    code="not-found")
                cached = self.conditional[reference] = f"{found[0].resource_type}/{found[0].id}"
            return cached

        return resolve


def _check_duplicates(ops: list[_Op]) -> None:
    seen_urls: dict[str, int] = {}
    seen_ids: dict[str, int] = {}
    for op in ops:
        if op.full_url:
            if op.full_url in seen_urls:
                raise _located(op.index, FhirError(
                    400, f"fullUrl '{op.full_url}' also names Bundle.entry[{seen_urls[op.full_url]}]",
                    code="duplicate"))
            seen_urls[op.full_url] = op.index
        if op.method not in ("GET", "HEAD") and op.id is not None:
            ident = f"{op.resource_type}/{op.id}"
            if ident in seen_ids:
                raise _located(op.index, FhirError(
                    400, f"{ident} is also the target of Bundle.entry[{seen_ids[ident]}]; a transaction may "
                    "touch each resource once", code="duplicate"))
            seen_ids[ident] = op.index


# -- the two bundle kinds -----------------------------------------------------------------------

@contextmanager
def _entry(index: int) -> Iterator[None]:
    try:
        yield
    except FhirError as exc:
        raise _located(index, exc) from None


def run_transaction(ctx: Context, entries: list[Any], options: BundleOptions = BundleOptions(),
                    policy: AccessPolicy | None = None) -> list[EntryResult]:
    """Process a transaction's entries atomically; results in entry order.

    Raises the first failing entry's FhirError (nothing written).  With ``options.skip_invalid``,
    entries whose resource fails validation (or whose references cannot be resolved) get an error
    result and are left out instead."""
    ops: list[_Op] = []
    results: dict[int, EntryResult] = {}
    for i, entry in enumerate(entries):
        try:
            ops.append(_parse_entry(ctx, i, entry))
        except FhirError as exc:
            if not options.skip_invalid:
                raise _located(i, exc) from None
            results[i] = EntryResult(exc.status, error=_located(i, exc))
    _check_duplicates(ops)
    ordered = sorted(ops, key=lambda o: (_ORDER[o.method], o.index))
    ids = _Identities(ctx, options.known, policy)
    with ctx.backend.transaction():
        # Every resource named by id, locked up front in one order: two transactions touching
        # the same resources then queue instead of deadlocking.
        ctx.backend.lock_resources([(op.resource_type, op.id) for op in ops
                                    if op.resource_type is not None and op.id is not None])
        for op in ordered:
            if op.method == "DELETE":
                with _entry(op.index):
                    results[op.index] = _run(ctx, op, options, policy)
        for op in ordered:
            if op.method in ("POST", "PUT"):
                with _entry(op.index):
                    ids.assign(op, options, lock=True)
        _check_duplicates(ops)  # again, now that conditional writes have their targets
        resolve = ids.resolver(rewrite_full_urls=True)
        for op in ordered:
            if op.resource is None or op.existing:
                continue
            try:
                with _entry(op.index):
                    rewrite_references(op.resource, resolve)
                    if op.method != "PATCH":
                        assert op.resource_type is not None
                        check_resource(op.resource, op.resource_type, ctx)
            except FhirError as exc:
                if not options.skip_invalid or exc.status >= 500:
                    raise
                results[op.index] = EntryResult(exc.status, error=exc)
                op.done = results[op.index]
        for op in ordered:
            if op.method in ("POST", "PUT", "PATCH", "GET", "HEAD"):
                if op.done is not None:
                    results[op.index] = op.done
                    continue
                with _entry(op.index):
                    results[op.index] = res = _run(ctx, op, options, policy)
                    if op.method in ("GET", "HEAD") and res.status >= 400:
                        raise FhirError(res.status, f"GET {op.url} failed with {res.status}",
                                        code="processing")
    return [results[i] for i in sorted(results)]


def run_batch(ctx: Context, entries: list[Any], options: BundleOptions = BundleOptions(),
              policy: AccessPolicy | None = None) -> list[EntryResult]:
    """Process each entry on its own; a failure is that entry's result and nothing else's."""
    results: list[EntryResult] = []
    ids = _Identities(ctx, options.known, policy)
    resolve = ids.resolver(rewrite_full_urls=options.keep_ids)
    if options.keep_ids:
        for entry in entries:
            res = entry.get("resource") if isinstance(entry, dict) else None
            if isinstance(res, dict) and isinstance(entry.get("fullUrl"), str) and isinstance(res.get("id"), str):
                ids.by_full_url[entry["fullUrl"]] = f"{res.get('resourceType')}/{res['id']}"
    for i, entry in enumerate(entries):
        try:
            op = _parse_entry(ctx, i, entry)
            # Entries of a batch may not depend on each other (R4 http.html#transaction), so
            # fullUrls are not resolved, except for loads that keep ids: those are known upfront.
            if op.method == "PUT" and op.conditional:
                assert op.params is not None and op.resource is not None and op.resource_type is not None
                rewrite_references(op.resource, resolve)
                result = conditional_update_resource(ctx, op.resource_type, op.params,
                                                     check_resource(op.resource, op.resource_type, ctx), policy=policy)
                results.append(EntryResult(result.status, result=result))
                continue
            # A conditional create keeps its criteria locked from the search to the insert.
            conditional = op.method == "POST" and bool(op.request.get("ifNoneExist"))
            with ctx.backend.transaction() if conditional else nullcontext():
                if op.method in ("POST", "PUT"):
                    ids.assign(op, options, lock=True)
                if op.done is not None:
                    results.append(op.done)
                    continue
                if op.resource is not None:
                    rewrite_references(op.resource, resolve)
                    if op.method != "PATCH":
                        assert op.resource_type is not None
                        check_resource(op.resource, op.resource_type, ctx)
                results.append(_run(ctx, op, options, policy))
        except FhirError as exc:
            results.append(EntryResult(exc.status, error=_located(i, exc)))
        except WriteConflict:
            results.append(EntryResult(409, error=_located(i, FhirError(
                409, "A concurrent write to the same resources aborted this entry; retry it", code="conflict"))))
    return results


# -- the HTTP interaction ------------------------------------------------------------------------

def _response_entry(ctx: Context, res: EntryResult, preference: str) -> Entry:
    response: dict[str, Any] = {"status": _reason(res.status)}
    if res.error is not None:
        response["outcome"] = res.error.outcome()
        return Entry(None, None, {"response": response})
    if res.result is None:  # a GET/HEAD entry
        for name, value in res.headers:
            if name == "ETag":
                response["etag"] = value
            elif name == "Location":
                response["location"] = value
        return Entry(None, res.body, {"response": response})
    stored = res.result.stored
    full_url = body = None
    if stored is not None:
        full_url = f"{ctx.base}/{stored.resource_type}/{stored.id}"
        if not stored.deleted:
            response["location"] = f"{stored.resource_type}/{stored.id}/_history/{stored.version}"
            if preference == "representation":
                body = stored.body
        response["etag"] = stored.etag
        response["lastModified"] = stored.last_updated
    if preference == "operationoutcome":
        code = res.result.outcome_code
        response["outcome"] = operation_outcome([OutcomeIssue("information", code, res.result.message)])
    return Entry(full_url, body, {"response": response})


def bundle(ctx: Context, req: FhirRequest) -> FhirResponse:
    data = parse_body(req.header("content-type"), req.body, xml_max_depth=ctx.settings.xml_max_depth)
    kind, entries = _parse_bundle(ctx, data)
    run = run_transaction if kind == "transaction" else run_batch
    results = run(ctx, entries, BundleOptions(), req.policy)
    preference = req.prefer().get("return", "minimal").lower()
    body = assemble(f"{kind}-response", last_updated=now_instant(), total=None, links=(),
                    entries=[_response_entry(ctx, r, preference) for r in results])
    if req.fmt.kind == "json" and not req.fmt.pretty:
        return FhirResponse(200, body, req.fmt.content_type)
    return FhirResponse(200, render_stored(body, req.fmt), req.fmt.content_type)

