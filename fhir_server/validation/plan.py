"""The check plan a profile compiles into, and the walk that runs it over a resource.

A ``Node`` holds what applies to every JSON value of one element definition: value checks (fixed,
pattern, binding, invariants, references), the members to descend into (keyed by JSON member
name: ``valueQuantity``, ``_birthDate``), the cardinalities stricter than the base definition,
must-support flags, and further nodes that apply to the same value (a type's profile, a datatype's
own rules).  Members and nodes with nothing to check are pruned when the plan is built, so the walk
only visits what a rule can see; it builds no strings unless it reports an issue.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol
from weakref import WeakKeyDictionary

from fhir_server.validation.issues import Path, ProfileIssue


class Host(Protocol):
    """What the walk needs from the validator: nested conformance checks (profile discriminators)
    and the resources references point to (target profiles)."""

    def conforms(self, profile: str, value: Any, scope: str, ctx: Ctx) -> bool | None: ...

    def check_target(
        self, reference: str, targets: Sequence[str], path: Path, ctx: Ctx, node: Node
    ) -> None: ...


class Ctx:
    """One validation run: the issues found, the root resource, the options."""

    __slots__ = ("issues", "root", "must_support", "host", "depth", "targets", "resolver")

    def __init__(self, root: Any, host: Host, must_support: bool, targets: bool = False,
                 resolver: Callable[[str], Any] | None = None) -> None:  # fmt: skip
        self.issues: list[ProfileIssue] = []
        self.root = root
        self.must_support = must_support
        self.host = host
        self.depth = 0
        self.targets = targets  # check referenced resources on this server against target profiles
        self.resolver = resolver  # reads them

    def add(self, severity: str, code: str, path: Path | None, diagnostics: str, node: Node, eid: str = "",
            key: str = "") -> None:  # fmt: skip
        self.issues.append(
            ProfileIssue(severity, code, diagnostics, "", node.profile, eid or node.eid, key, path)
        )


Check = Callable[[Any, Path, Ctx], None]

# How generated code may do a check's work without calling it (plan_codegen reads this):
#   ("predicate", test, fallback, report, failed, unknown): ok = test(value, root) (fallback(value,
#       root) when test raises Unsupported); report(ok, value, path, ctx) unless ok is True, which
#       adds ProfileIssue(*unknown, path) when ok is None, else ProfileIssue(*failed, path)
#   ("equals", text, report): report(value, path, ctx) unless value == text
#   ("concept", memo, verdict, required): a CodeableConcept binding; the check is called (to report)
#       only when no coding is acceptable: memo[(system, code)] is a coding's remembered verdict,
#       verdict(system, code) works one out
#   ("reference",): call the check only for a Reference that names a type or a resource by a
#       relative or absolute URL (a Bundle's urn:uuid: references say nothing about their target)
#   ("test", test, report): report(value, path, ctx) unless test(value) (a fixed or pattern value;
#       test may have a shape in values.TEST_SHAPES)
#   ("memo", memo, kind): a binding on a "code" (a string) or a "coding" (a Coding or Quantity): the
#       check is called unless memo[(system, code)] says the code is in the value set
INLINE: dict[Check, tuple[Any, ...]] = {}


class Node:
    __slots__ = ("profile", "eid", "checks", "members", "required", "ms", "also", "done", "gate", "leaf",
                 "fn")  # fmt: skip

    def __init__(self, profile: str, eid: str) -> None:
        self.profile = profile  # canonical|version
        self.eid = eid
        self.checks: tuple[Check, ...] = ()
        self.members: dict[str, Member] = {}
        # (JSON names, min, element id, label): cardinality the profile makes stricter than the base
        self.required: tuple[tuple[tuple[str, ...], int, str, str], ...] = ()
        # (JSON names, element id, label): must-support elements, reported when absent
        self.ms: tuple[tuple[tuple[str, ...], str, str], ...] = ()
        self.also: tuple[Node, ...] = ()
        self.done = False  # filled in completely (plans of recursive types are linked while half-built)
        # For a node that only descends (no checks of its own): its member names, so the walk can
        # skip a value holding none of them without a call (most Codings, References, ...).
        self.gate: frozenset[str] | None = None
        self.leaf = False  # value checks only (a primitive's fixed value, binding, invariants)
        # the node as generated Python (plan_codegen), once the plan is complete; until then the
        # walk below interprets it
        self.fn: Callable[[Any, Path, Ctx], None] | None = None

    def seal(self) -> None:
        """Called once the node is complete and will not change."""
        pure = not (self.checks or self.required or self.ms or self.also)
        self.gate = frozenset(self.members) if pure else None
        self.leaf = not (self.members or self.required or self.ms or self.also)

    def empty(self) -> bool:
        return not (self.checks or self.members or self.required or self.ms or self.also)


def run(node: Node, value: Any, path: Path, ctx: Ctx) -> None:
    fn = node.fn
    if fn is not None:
        fn(value, path, ctx)
        return
    for check in node.checks:
        check(value, path, ctx)
    if type(value) is dict:
        members = node.members
        if members:
            for key, val in value.items():
                m = members.get(key)
                if m is not None:
                    m.visit(val, value, path, ctx)
        if node.required:
            _required(node, value, path, ctx)
        if node.ms and ctx.must_support:
            for keys, eid, label in node.ms:  # keys include the "_name" of primitives
                for k in keys:
                    if k in value:
                        break
                else:
                    ctx.add("information", "informational", (path, label, -1),
                            f"must-support element {eid} is absent", node, eid)  # fmt: skip
    for other in node.also:
        run(other, value, path, ctx)


def _required(node: Node, value: dict[str, Any], path: Path, ctx: Ctx) -> None:
    for keys, minimum, eid, label in node.required:
        count = 0
        for k in keys:
            v = value.get(k)
            if v is not None:
                count += len(v) if type(v) is list else 1
        if count < minimum:
            report_missing(value, keys, minimum, count, path, label, eid, node, ctx)


def report_missing(value: dict[str, Any], keys: tuple[str, ...], minimum: int, count: int, path: Path, label: str,
                   eid: str, node: Node, ctx: Ctx) -> None:  # fmt: skip
    """Too few values under ``keys``; a primitive present only through its extensions ("_gender")
    counts too, so it is looked for before reporting."""
    for k in keys:
        c = value.get("_" + k) if k not in value else None
        if c is not None:
            count += len(c) if type(c) is list else 1
    if count < minimum:
        ctx.add("error", "required", (path, label, -1),
                f"{eid}: minimum required = {minimum}, but only found {count}", node, eid)  # fmt: skip


class Member:
    """One JSON member of a node: where its values go, and the limits on how many."""

    __slots__ = ("expr", "node", "max", "slicing", "forbidden", "eid", "owner")

    def __init__(self, expr: str, node: Node | None, owner: Node, eid: str) -> None:
        self.expr = expr  # FHIRPath segment: "name", or "value.ofType(Quantity)"
        self.node = node
        self.max = -1  # -1: no limit beyond the base definition's
        self.slicing: Slicing | None = None
        self.forbidden: str | None = None  # why any value here is an error (a type the profile removed)
        self.eid = eid
        self.owner = owner

    def empty(self) -> bool:
        return self.node is None and self.max < 0 and self.slicing is None and self.forbidden is None

    def visit(self, val: Any, obj: dict[str, Any], path: Path, ctx: Ctx) -> None:
        if self.forbidden is not None:
            ctx.add("error", "structure", (path, self.expr, -1), self.forbidden, self.owner, self.eid)
            return
        if type(val) is list:
            if self.max >= 0 and len(val) > self.max:
                ctx.add("error", "structure", (path, self.expr, -1),
                        f"{self.eid}: maximum allowed = {self.max}, but found {len(val)}", self.owner, self.eid)  # fmt: skip
            if self.slicing is not None:
                self.slicing.run(val, path, self.expr, True, obj, ctx)
                return
            node = self.node
            if node is not None:
                expr = self.expr
                if node.leaf:
                    checks = node.checks
                    for i, item in enumerate(val):
                        if item is not None:
                            ipath = (path, expr, i)
                            for check in checks:
                                check(item, ipath, ctx)
                    return
                gate = node.gate
                for i, item in enumerate(val):
                    if item is not None and (
                        gate is None or type(item) is not dict or not gate.isdisjoint(item)
                    ):
                        run(node, item, (path, expr, i), ctx)
            return
        if self.max == 0:
            ctx.add("error", "structure", (path, self.expr, -1),
                    f"{self.eid}: maximum allowed = 0, but the element is present", self.owner, self.eid)  # fmt: skip
        if self.slicing is not None:
            self.slicing.run([val], path, self.expr, False, obj, ctx)
        elif val is not None:
            node = self.node
            if node is not None:
                if node.leaf:
                    vpath = (path, self.expr, -1)
                    for check in node.checks:
                        check(val, vpath, ctx)
                    return
                gate = node.gate
                if gate is None or type(val) is not dict or not gate.isdisjoint(val):
                    run(node, val, (path, self.expr, -1), ctx)


Matcher = Callable[[Any, Ctx], bool]

# How generated code may match a slice without calling its matcher (plan_codegen reads this):
#   ("never",): no item
#   ("equals", key, text): type(item) is dict and item.get(key) == text
#   ("test", test): test(item)
#   ("member", key, test): item is a dict and test passes on item[key] (or, a list, on an item of
#       it that is not None); the matcher itself answers for an item that is not a dict
#   ("path", segs, test): test passes on one of values.navigate(item, segs)
#   ("all", matchers) / ("any", matchers): every one / some one of them
# Weak keys: a matcher lives as long as the plans that use it.
MATCH_SHAPES: WeakKeyDictionary[Matcher, tuple[Any, ...]] = WeakKeyDictionary()


class Slice:
    __slots__ = ("name", "match", "min", "max", "node", "eid", "ms")

    def __init__(self, name: str, match: Matcher, minimum: int, maximum: int, node: Node | None, eid: str,
                 ms: bool) -> None:  # fmt: skip
        self.name = name
        self.match = match
        self.min = minimum
        self.max = maximum  # -1 unbounded
        self.node = node
        self.eid = eid
        self.ms = ms


class Slicing:
    __slots__ = ("slices", "rules", "ordered", "base", "eid", "owner", "unmatched", "fn")

    def __init__(self, slices: tuple[Slice, ...], rules: str, ordered: bool, base: Node | None, eid: str,
                 owner: Node) -> None:  # fmt: skip
        self.slices = slices
        self.rules = rules  # closed | open | openAtEnd
        self.ordered = ordered
        self.base = base  # the unsliced element's node: for items no slice takes
        self.eid = eid
        self.owner = owner
        # items no slice takes also go here (the dynamic extension check, for extension arrays)
        self.unmatched: Callable[[Any, Path, dict[str, Any], Ctx], None] | None = None
        # run() as generated Python (plan_codegen), once the plan is complete
        self.fn: Callable[[list[Any], Path, str, bool, dict[str, Any], Ctx], None] | None = None

    def run(
        self, items: list[Any], path: Path, expr: str, array: bool, obj: dict[str, Any], ctx: Ctx
    ) -> None:
        gen = self.fn
        if gen is not None:
            gen(items, path, expr, array, obj, ctx)
            return
        slices = self.slices
        counts = [0] * len(slices)
        last = -1
        seen_unmatched = False
        for i, item in enumerate(items):
            if item is None:
                continue
            ipath = (path, expr, i if array else -1)
            hit = -1
            for si, s in enumerate(slices):
                if s.match(item, ctx):
                    hit = si
                    break
            if hit < 0:
                seen_unmatched = True
                if self.rules == "closed":
                    ctx.add("error", "structure", ipath,
                            f"{self.eid}: this item matches none of the slices ({', '.join(s.name for s in slices)}) "
                            f"and the slicing is closed", self.owner, self.eid)  # fmt: skip
                if self.base is not None:
                    run(self.base, item, ipath, ctx)
                if self.unmatched is not None:
                    self.unmatched(item, ipath, obj, ctx)
                continue
            s = slices[hit]
            counts[hit] += 1
            if self.ordered and hit < last:
                ctx.add("error", "structure", ipath,
                        f"{self.eid}: slice {s.name} is out of order (the slicing is ordered)", self.owner, s.eid)  # fmt: skip
            if self.rules == "openAtEnd" and seen_unmatched:
                ctx.add("error", "structure", ipath,
                        f"{self.eid}: items outside the slices must come last (openAtEnd)", self.owner, s.eid)  # fmt: skip
            if hit > last:
                last = hit
            node = s.node
            if node is not None:
                fn = node.fn
                if fn is not None:
                    fn(item, ipath, ctx)
                else:
                    run(node, item, ipath, ctx)
        here = (path, expr, -1)
        for s, n in zip(slices, counts, strict=True):
            if n < s.min:
                ctx.add("error", "required", here,
                        f"{s.eid}: slice {s.name} requires at least {s.min} item(s), found {n}", self.owner, s.eid)  # fmt: skip
            elif s.max >= 0 and n > s.max:
                ctx.add("error", "structure", here,
                        f"{s.eid}: slice {s.name} allows at most {s.max} item(s), found {n}", self.owner, s.eid)  # fmt: skip
            elif n == 0 and s.ms and ctx.must_support:
                ctx.add("information", "informational", here,
                        f"must-support slice {s.eid} has no item", self.owner, s.eid)  # fmt: skip
