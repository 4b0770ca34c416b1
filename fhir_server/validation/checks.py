"""The value checks a plan node runs: invariants, fixed and pattern values, bindings, references,
and the context rule of extensions.

Each factory returns a closure over what it needs; ``plan.INLINE`` tells the code generator how to
do the common ones without calling the closure.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from fhir_server.validation.fhirpath_runtime import Unsupported
from fhir_server.validation.invariants import Invariant
from fhir_server.validation.issues import Path, expression
from fhir_server.validation.plan import INLINE, Check, Ctx, Node
from fhir_server.validation.terminology import Expansion
from fhir_server.validation.values import short, value_test

_INDEX = re.compile(r"\[\d+\]|\.ofType\([^)]*\)")


def reference_type(ref: str, root: Any) -> str | None:
    """The resource type a Reference.reference names, None when it cannot be told (urn:uuid:...)."""
    if ref[:1] == "#":
        contained = root.get("contained") if type(root) is dict else None
        if type(contained) is list:
            for c in contained:
                if type(c) is dict and c.get("id") == ref[1:]:
                    rt = c.get("resourceType")
                    return rt if type(rt) is str else None
        return None
    if ref[:4] == "urn:" or "/" not in ref:
        return None  # urn:uuid/urn:oid (a Bundle's), or not a resource reference at all
    parts = ref.split("?", 1)[0].split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        del parts[-2:]
    if len(parts) < 2 or not parts[-1]:
        return None
    rt = parts[-2]
    return rt if rt[:1].isupper() and rt.isalpha() else None


def extension_context_allowed(
    contexts: Sequence[Sequence[Any]], types: set[str], host_type: str, path: Path
) -> bool:
    host_path: str | None = None
    for kind, expr in contexts:
        if kind == "fhirpath":
            return True  # not evaluated here
        if kind == "extension":
            if host_type == "Extension":
                return True
            continue
        if not isinstance(expr, str):
            continue
        e = expr.replace("[x]", "")
        if e in ("Element", "Base") or e in types:
            return True
        if host_path is None:
            host_path = _INDEX.sub("", expression(path[0])) if path[0] is not None else ""
        if e == host_path:
            return True
    return False


_MEMO_LIMIT = 4096


def coded_member(exp: Expansion, v: Any, cs_codes: Callable[[str], frozenset[str] | None],
                  memo: dict[tuple[str | None, str], bool | None] | None = None) -> bool | None:  # fmt: skip
    """Membership of a code, Coding, Quantity or CodeableConcept (any coding) in an expansion;
    ``memo`` remembers verdicts per (system, code): data repeats the same few codes."""
    if isinstance(v, str):
        return _verdict(exp, None, str.__str__(v), cs_codes, memo)
    if type(v) is not dict:
        return None
    if "coding" in v:
        unknown = False
        codings = v["coding"]
        for c in codings if type(codings) is list else ():
            if type(c) is not dict:
                continue
            code = c.get("code")
            if not isinstance(code, str):
                unknown = True
                continue
            system = c.get("system")
            r = _verdict(exp, system if isinstance(system, str) else None, str.__str__(code), cs_codes, memo)
            if r is True:
                return True
            unknown = unknown or r is None
        return None if unknown else False
    code = v.get("code")
    if not isinstance(code, str):
        return None
    system = v.get("system")
    return _verdict(exp, system if isinstance(system, str) else None, str.__str__(code), cs_codes, memo)


def _verdict(
    exp: Expansion,
    system: str | None,
    code: str,
    cs_codes: Callable[[str], frozenset[str] | None],
    memo: dict[tuple[str | None, str], bool | None] | None,
) -> bool | None:
    if memo is None:
        return exp.member(system, code, cs_codes)
    key = (system, code)
    if key in memo:
        return memo[key]
    r = exp.member(system, code, cs_codes)
    if len(memo) < _MEMO_LIMIT:  # bounded: a stream of distinct codes must not grow it forever
        memo[key] = r
    return r


def invariant_check(inv: Invariant, node: Node, eid: str) -> Check:
    test, fallback, key, severity, expr = inv.test, inv.fallback, inv.key, inv.severity, inv.expression

    unknown = f"{key}: the constraint could not be evaluated: {expr}"
    failed = f"{key}: constraint failed: {expr}"

    def report(ok: bool | None, value: Any, path: Path, ctx: Ctx) -> None:
        if ok is None:
            ctx.add("warning", "invariant", path, unknown, node, eid, key)
        else:
            ctx.add(severity, "invariant", path, failed, node, eid, key)

    def check(value: Any, path: Path, ctx: Ctx) -> None:
        try:
            ok = test(value, ctx.root)
        except Unsupported:  # a runtime case outside the fast subset (several items before "in", ...)
            ok = fallback(value, ctx.root)
        if ok is not True:
            report(ok, value, path, ctx)

    element = eid or node.eid
    INLINE[check] = ("predicate", test, fallback, report, (severity, "invariant", failed, "", node.profile, element, key),
                     ("warning", "invariant", unknown, "", node.profile, element, key))  # fmt: skip
    return check


def fixed_check(fixed: Any, node: Node, eid: str) -> Check:
    test = value_test(fixed, exact=True)

    def report(value: Any, path: Path, ctx: Ctx) -> None:
        ctx.add(
            "error",
            "value",
            path,
            f"{eid}: the value must be {short(fixed)}, found {short(value)}",
            node,
            eid,
        )

    def check(value: Any, path: Path, ctx: Ctx) -> None:
        if not test(value):
            report(value, path, ctx)

    if isinstance(fixed, str) and _is_text(fixed):
        INLINE[check] = ("equals", str.__str__(fixed), report)
    else:
        INLINE[check] = ("test", test, report)
    return check


def _is_text(v: str) -> bool:
    # A JSON string, not a decimal kept as text: equality of str is then exactly json_equal.
    return type(v) is str


def pattern_check(pattern: Any, node: Node, eid: str) -> Check:
    test = value_test(pattern, exact=False)

    def report(value: Any, path: Path, ctx: Ctx) -> None:
        ctx.add("error", "value", path, f"{eid}: the value must match the pattern {short(pattern)}, found {short(value)}",
                node, eid)  # fmt: skip

    def check(value: Any, path: Path, ctx: Ctx) -> None:
        if not test(value):
            report(value, path, ctx)

    INLINE[check] = ("test", test, report)
    return check


def binding_check(exp: Expansion, strength: str, vs: str, value_type: str,
                   cs_codes: Callable[[str], frozenset[str] | None], node: Node, eid: str) -> Check:  # fmt: skip
    severity = "error" if strength == "required" else "warning"
    code = "code-invalid"
    memo: dict[tuple[str | None, str], bool | None] = {}

    if value_type == "CodeableConcept":

        def check_cc(value: Any, path: Path, ctx: Ctx) -> None:
            if type(value) is not dict:
                return
            codings = value.get("coding")
            if type(codings) is not list or not codings:
                if strength == "required":
                    ctx.add(severity, code, path, f"{eid}: no code given, and the required value set {vs} needs one",
                            node, eid)  # fmt: skip
                return  # extensible: a text-only concept is fine
            if coded_member(exp, value, cs_codes, memo) is False:
                found = ", ".join(f"{c.get('system')}#{c.get('code')}" for c in codings if type(c) is dict)
                ctx.add(severity, code, path,
                        f"{eid}: none of the codings ({found}) is in the {strength} value set {vs}", node, eid)  # fmt: skip

        def verdict(system: str | None, code: str) -> bool | None:
            return _verdict(exp, system, code, cs_codes, memo)

        INLINE[check_cc] = ("concept", memo, verdict, strength == "required")
        return check_cc

    def check(value: Any, path: Path, ctx: Ctx) -> None:
        if value_type in ("Coding", "Quantity"):
            if type(value) is not dict or not isinstance(value.get("code"), str):
                return
            shown = f"{value.get('system')}#{value.get('code')}"
        else:
            if not isinstance(value, str):
                return
            shown = repr(str.__str__(value))
        if coded_member(exp, value, cs_codes, memo) is False:
            ctx.add(
                severity, code, path, f"{eid}: {shown} is not in the {strength} value set {vs}", node, eid
            )

    INLINE[check] = ("memo", memo, "coding" if value_type in ("Coding", "Quantity") else "code")
    return check


def reference_check(allowed: frozenset[str], targets: tuple[str, ...], node: Node, eid: str) -> Check:
    shown = ", ".join(sorted(allowed))

    def check(value: Any, path: Path, ctx: Ctx) -> None:
        if type(value) is not dict:
            return
        ref = value.get("reference")
        declared = value.get("type")
        if isinstance(declared, str) and declared not in allowed:
            ctx.add("error", "structure", (path, "type", -1),
                    f"{eid}: Reference.type {declared!r} is not an allowed target ({shown})", node, eid)  # fmt: skip
        if not isinstance(ref, str):
            return
        rt = reference_type(ref, ctx.root)
        if rt is not None and rt not in allowed:
            ctx.add("error", "structure", (path, "reference", -1),
                    f"{eid}: the reference {short(ref)} points to a {rt}, which is not an allowed target ({shown})",
                    node, eid)  # fmt: skip
        elif targets and rt is not None and ctx.targets:
            ctx.host.check_target(ref, targets, (path, "reference", -1), ctx, node)

    INLINE[check] = ("reference",)
    return check
