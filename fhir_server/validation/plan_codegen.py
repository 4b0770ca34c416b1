"""Check plans turned into Python: one generated function per plan node and per slicing.

The plan (``plan.Node``) is data a general walk interprets; that walk pays, per value, for reading
the node's attributes, looping over its tuples and calling ``Member.visit``.  Here each node
becomes a function that does exactly its own work: its checks called one by one or written out
(``plan.INLINE`` says how), its members looked up directly when there are few (``"code" in
value``) or dispatched through a dict of member functions when there are many, leaf nodes (a fixed
value, a binding) checked inline, and cardinalities and must-support tests written out.  A member
function ends with its node's statements rather than a call where they are short.  A slicing
becomes a function that takes each item to the first slice whose discriminators it meets, written
out where their shape allows (``plan.MATCH_SHAPES``), counts and orders them and calls the slices'
nodes; fixed and pattern values become straight-line tests (``values.TEST_SHAPES``).  Nodes call
each other by name through one shared namespace, so recursive plans (Extension, Identifier <->
Reference) need nothing special.

The generated code reports what the interpreted walk (``plan.run``) reports, issue for issue:
tests/validation/test_codegen.py runs both on the same inputs.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any

from fhir_server.validation.fhirpath_native import Unsupported
from fhir_server.validation.issues import ProfileIssue
from fhir_server.validation.plan import (
    INLINE,
    MATCH_SHAPES,
    Check,
    Ctx,
    Matcher,
    Member,
    Node,
    Path,
    Slice,
    Slicing,
    report_missing,
    run,
)
from fhir_server.validation.values import TEST_SHAPES, navigate

_SMALL = 5  # a node with at most this many members looks each up instead of looping over the value
_INLINE_LINES = 40  # a node's statements written out in a member function instead of a call, up to


class WalkCompiler:
    def __init__(self) -> None:
        self._ns: dict[str, Any] = {"run": run, "report_missing": report_missing, "Unsupported": Unsupported,
                                    "ProfileIssue": ProfileIssue}  # fmt: skip
        self._names: dict[int, str] = {}
        self._lock = threading.Lock()
        self.generated = 0
        # one compile() per batch: the sources of its functions, and what to link after exec
        self._source: list[str] = []
        self._tables: list[tuple[dict[str, Any], str, str]] = []
        self._tests: dict[int, str] = {}  # id(value test) -> its function in the namespace
        self._consts: dict[int, str] = {}  # id(constant) -> its name in the namespace
        self._functions: dict[str, str] = {}  # parameters and statements -> the function's name
        self._slicings: dict[int, str] = {}  # id(Slicing) -> its function
        self._generated_slicings: list[tuple[Slicing, str]] = []  # this batch's
        self._batch: set[int] = set()  # ids of this batch's nodes
        self._bodies: dict[int, list[str]] = {}  # id(node) -> its function's statements
        self._building: set[int] = set()  # nodes whose statements are being made
        self._short: dict[int, list[str]] = {}  # id(node) -> its statements, short enough to inline
        self._inlined = 0  # statements written out so far (their variables are numbered)
        self._sites: dict[int, list[tuple[int, int, int, str]]] = {}  # id(statements) -> _variables()

    def compile_reachable(self, root: Node) -> None:
        """Generate the function of every finished node reachable from ``root`` that has none."""
        with self._lock:
            batch: list[Node] = []
            seen: set[int] = set()
            stack = [root]
            while stack:
                node = stack.pop()
                if id(node) in seen or node.fn is not None or not node.done:
                    continue
                seen.add(id(node))
                batch.append(node)
                stack.extend(_children(node))
            for node in batch:
                self._name(node)
            self._source, self._tables, self._generated_slicings = [], [], []
            self._batch = {id(node) for node in batch}
            self._bodies = {}
            for node in batch:
                self._generate(node)
            if batch:
                label = f"<plans from {root.profile}>"
                exec(compile("\n".join(self._source) + "\n", label, "exec"), self._ns)
                for table, key, fname in self._tables:
                    table[key] = self._ns[fname]
                for node in batch:
                    node.fn = self._ns[self._names[id(node)]]
                for sl, name in self._generated_slicings:
                    sl.fn = self._ns[name]
                self.generated += len(batch)

    # -- names -------------------------------------------------------------------------------

    def _name(self, node: Node) -> str:
        name = self._names.get(id(node))
        if name is None:
            name = f"w{len(self._names)}"
            self._names[id(node)] = name
            self._ns[f"N_{name}"] = node  # keeps the node alive, so its id stays unique
        return name

    def _const(self, value: Any, prefix: str = "k") -> str:
        # one name per object: the same check or node used in many places reads the same, so
        # functions written alike are alike and can be shared (the namespace keeps it alive)
        if value is not None:
            name = self._consts.get(id(value))
            if name is not None:
                return name
        name = f"{prefix}{len(self._ns)}"
        self._ns[name] = value
        if value is not None:
            self._consts[id(value)] = name
        return name

    def _check(self, check: Check, value: str, path: str, ind: str, lines: list[str]) -> None:
        spec = INLINE.get(check)
        if spec is None:
            lines.append(f"{ind}{self._const(check)}({value}, {path}, ctx)")
        elif spec[0] == "predicate":
            _, test, fallback, _report, failed, unknown = spec
            t, f = self._const(test), self._const(fallback)
            lines.append(f"{ind}try:")
            lines.append(f"{ind}    ok = {t}({value}, ctx.root)")
            lines.append(f"{ind}except Unsupported:")
            lines.append(f"{ind}    ok = {f}({value}, ctx.root)")
            # the issue made here rather than through report() and ctx.add(): dom-6 (no narrative)
            # fails on most resources
            lines.append(f"{ind}if ok is not True:")
            lines.append(f"{ind}    ctx.issues.append(ProfileIssue(*({self._const(unknown, 'a')} if ok is None else "
                         f"{self._const(failed, 'a')}), {path}))")  # fmt: skip
        elif spec[0] == "equals":
            _, text, report = spec
            lines.append(f"{ind}if {value} != {text!r} or type({value}) is not str:")
            lines.append(f"{ind}    {self._const(report)}({value}, {path}, ctx)")
        elif spec[0] == "concept":
            _, memo, verdict, required = spec
            m, vf, full = self._const(memo), self._const(verdict), self._const(check)
            # as coded_member reads the codings: the check (which reports) is called unless one is
            # in the value set or cannot be judged; an item that is not an object counts for nothing
            lines.append(f"{ind}if type({value}) is dict:")
            lines.append(f"{ind}    cs = {value}.get('coding')")
            lines.append(f"{ind}    if type(cs) is list and cs:")
            lines.append(f"{ind}        for c in cs:")
            lines.append(f"{ind}            if type(c) is dict:")
            lines.append(f"{ind}                k = c.get('code')")
            lines.append(f"{ind}                if type(k) is not str and not isinstance(k, str):")
            lines.append(f"{ind}                    break")
            lines.append(f"{ind}                s = c.get('system')")
            lines.append(
                f"{ind}                if s is not None and type(s) is not str and not isinstance(s, str):"
            )
            lines.append(f"{ind}                    s = None")
            lines.append(f"{ind}                r = {m}.get((s, k), 2)")
            lines.append(f"{ind}                if r == 2:")
            lines.append(f"{ind}                    r = {vf}(s, k)")
            lines.append(f"{ind}                if r is not False:")
            lines.append(f"{ind}                    break")
            lines.append(f"{ind}        else:")
            lines.append(f"{ind}            {full}({value}, {path}, ctx)")
            if required:
                lines.append(f"{ind}    else:")
                lines.append(f"{ind}        {full}({value}, {path}, ctx)")
        elif spec[0] == "test":
            _, test, report = spec
            lines.append(f"{ind}if not {self._value_test(test)}({value}):")
            lines.append(f"{ind}    {self._const(report)}({value}, {path}, ctx)")
        elif spec[0] == "memo":
            _, memo, kind = spec
            m, full = self._const(memo), self._const(check)
            if kind == "code":
                lines.append(f"{ind}if type({value}) is not str or {m}.get((None, {value}), 2) is not True:")
            else:  # as coded_member reads a Coding: (system if a string, code)
                lines.append(f"{ind}if type({value}) is not dict or 'coding' in {value} or "
                             f"type(c := {value}.get('code')) is not str or "
                             f"{m}.get((s if isinstance(s := {value}.get('system'), str) else None, c), 2) is not True:")  # fmt: skip
            lines.append(f"{ind}    {full}({value}, {path}, ctx)")
        else:
            lines.append(f"{ind}if type({value}) is dict and ('type' in {value} or not isinstance(r := {value}.get("
                         f"'reference', ''), str) or r[:4] != 'urn:'):")  # fmt: skip
            lines.append(f"{ind}    {self._const(check)}({value}, {path}, ctx)")

    # -- value tests (fixed and pattern values, slice discriminators) --------------------------

    def _value_test(self, test: Callable[[Any], bool]) -> str:
        """The name of a function doing ``test``: generated from its shape, or ``test`` itself."""
        name = self._tests.get(id(test))
        if name is not None:
            return name
        shape = TEST_SHAPES.get(test)
        if shape is None or shape[0] == "text":
            name = self._const(test, "t")  # one call either way
        else:
            self._ns[f"T{len(self._ns)}"] = test  # keeps the test alive, so its id stays unique
            body: list[str] = []
            self._test_body(shape, "v", "    ", body, [0])
            # the same pattern stated twice (a slice's discriminator, its node's check): one function
            name = self._function("t", "(v)", [*body, "    return True"])
        self._tests[id(test)] = name
        return name

    def _test_body(self, shape: tuple[Any, ...], var: str, ind: str, lines: list[str], n: list[int]) -> None:
        """Statements that return False from the generated test unless ``var`` passes ``shape``."""
        if shape[0] == "parts":
            lines.append(f"{ind}if type({var}) is not dict:")
            lines.append(f"{ind}    return False")
            for key, sub in shape[1]:
                n[0] += 1
                x = f"x{n[0]}"
                lines.append(f"{ind}{x} = {var}.get({key!r})")
                lines.append(f"{ind}if {x} is None:")
                lines.append(f"{ind}    return False")
                sub_shape = TEST_SHAPES.get(sub)
                if sub_shape is not None and sub_shape[0] in ("parts", "list"):
                    self._test_body(sub_shape, x, ind, lines, n)  # a conjunction too: inline
                else:
                    lines.append(f"{ind}if not {self._test_expr(sub, x, n)}:")
                    lines.append(f"{ind}    return False")
            return
        # "list": each sub-test passes on some item
        n[0] += 1
        items, y = f"y{n[0]}", f"z{n[0]}"
        lines.append(f"{ind}{items} = {var} if type({var}) is list else ({var},)")
        for sub in shape[1]:
            lines.append(f"{ind}for {y} in {items}:")
            lines.append(f"{ind}    if {self._test_expr(sub, y, n)}:")
            lines.append(f"{ind}        break")
            lines.append(f"{ind}else:")
            lines.append(f"{ind}    return False")

    def _test_expr(self, test: Callable[[Any], bool], var: str, n: list[int]) -> str:
        """An expression true when ``var`` (a plain name) passes ``test``."""
        shape = TEST_SHAPES.get(test)
        if shape is not None and shape[0] == "text":
            return f"({var} == {shape[1]!r} if type({var}) is str else isinstance({var}, str) and str.__eq__({var}, {shape[1]!r}))"
        if (
            shape is not None
            and shape[0] == "parts"
            and all((TEST_SHAPES.get(sub) or ("",))[0] == "text" for _, sub in shape[1])
        ):
            # a Coding pattern: a dict with some strings, as one expression (no call per item)
            terms = [f"type({var}) is dict"]
            for key, sub in shape[1]:
                n[0] += 1
                w = f"w{n[0]}"
                terms.append(f"({w} := {var}.get({key!r})) is not None")
                terms.append(self._test_expr(sub, w, n))
            return "(" + " and ".join(terms) + ")"
        return f"{self._value_test(test)}({var})"

    def _path_test(self, segs: tuple[str, ...], test: Callable[[Any], bool]) -> str:
        """The name of a function answering ``any(test(v) for v in navigate(item, segs))``: for
        member names (no "$this", no choice), the navigation as nested loops that stop at the
        first value passing."""
        if any(seg == "$this" or seg.endswith("[x]") for seg in segs):
            nav = self._const(navigate, "f")
            lines = [f"    for v in {nav}(x0, {segs!r}):", f"        if {self._value_test(test)}(v):",
                     "            return True", "    return False"]  # fmt: skip
            return self._function("p", "(x0)", lines)
        # as navigate(): a list at the start is taken item by item, objects are read, nulls left out
        lines = ["    for x1 in (x0 if type(x0) is list else (x0,)):"]
        ind, cur, n = "        ", "x1", [1]
        for seg in segs:
            n[0] += 1
            got, each = f"x{n[0]}", f"x{n[0] + 1}"
            n[0] += 1
            lines.append(f"{ind}if type({cur}) is dict:")
            lines.append(f"{ind}    {got} = {cur}.get({seg!r})")
            lines.append(f"{ind}    if {got} is not None:")
            lines.append(f"{ind}        for {each} in ({got} if type({got}) is list else ({got},)):")
            ind, cur = ind + "            ", each
        lines.append(f"{ind}if {cur} is not None and {self._test_expr(test, cur, n)}:")
        lines.append(f"{ind}    return True")
        lines.append("    return False")
        return self._function("p", "(x0)", lines)

    def _function(self, prefix: str, params: str, body: list[str]) -> str:
        """The name of a function with these parameters and statements: one written before with
        the same, or a new one (the same discriminator in several profiles)."""
        text = params + "\n" + "\n".join(body)
        name = self._functions.get(text)
        if name is None:
            name = self._functions[text] = f"{prefix}{len(self._ns)}"
            self._ns[name] = None  # reserved: the name stays unique until exec fills it in
            self._source.extend([f"def {name}{params}:", *body])
        return name

    def _call(self, node: Node, value: str, path: str, ind: str, lines: list[str]) -> None:
        """Code that runs ``node`` on the variable ``value`` at ``path`` (an expression without side
        effects, evaluated where it is needed)."""
        if node.leaf and node.done:
            for check in node.checks:
                self._check(check, value, path, ind, lines)
            return
        if node.gate is None:
            body = self._inlinable(node)
            if body is not None:
                # the node's statements in place of the call, their variables made its own
                self._inlined += 1
                names = {name: f"{name}_{self._inlined}" for name in _LOCALS}
                names["value"], names["path"] = value, path
                sites = self._sites.get(id(body))
                if sites is None:
                    sites = self._sites[id(body)] = _variables(body)
                lines.extend(ind + line[4:] for line in _renamed(body, sites, names))
                return
        target = f"{self._names[id(node)]}" if id(node) in self._names else None
        call = (
            f"{target}({value}, {path}, ctx)"
            if target
            else f"run({self._const(node, 'n')}, {value}, {path}, ctx)"
        )
        if node.gate is not None and node.done:
            gate = self._const(node.gate, "g")
            lines.append(f"{ind}if type({value}) is not dict or not {gate}.isdisjoint({value}):")
            lines.append(f"{ind}    {call}")
        else:
            lines.append(f"{ind}{call}")

    # -- generation --------------------------------------------------------------------------

    def _generate(self, node: Node, name: str | None = None, skip: Check | None = None) -> None:
        """The function of ``node`` (under ``name``, less the check ``skip``: a variant)."""
        name = name or self._names[id(node)]
        body = self._body(node) if skip is None else self._build_body(node, skip)
        self._source.append(f"# {node.profile} {node.eid}".replace("\n", " "))
        self._source.append(f"def {name}(value, path, ctx):")
        self._source.extend(body or ["    return"])

    def _body(self, node: Node) -> list[str]:
        """The statements of ``node``'s function (on ``value`` at ``path``), made once per batch."""
        found = self._bodies.get(id(node))
        if found is None:
            self._building.add(id(node))
            try:
                found = self._bodies[id(node)] = self._build_body(node, None)
            finally:
                self._building.discard(id(node))
        return found

    def _build_body(self, node: Node, skip: Check | None) -> list[str]:
        lines: list[str] = []
        for check in node.checks:
            if check is not skip:
                self._check(check, "value", "path", "    ", lines)
        if node.members or node.required or node.ms:
            lines.append("    if type(value) is dict:")
            self._members(node, lines)
            self._required(node, lines)
            self._must_support(node, lines)
        for other in node.also:
            self._call(other, "value", "path", "    ", lines)
        return lines

    def _inlinable(self, node: Node) -> list[str] | None:
        """The statements of ``node`` to write out in place of a call, where they are short (and
        ``node`` is not on the way to itself)."""
        if not node.done or id(node) in self._building:
            return None
        found = self._short.get(id(node))
        if found is not None or id(node) not in self._batch:
            return found
        body = self._body(node)
        if 0 < len(body) <= _INLINE_LINES:
            self._short[id(node)] = body
            return body
        return None

    def _members(self, node: Node, lines: list[str]) -> None:
        members = node.members
        if not members:
            return
        if len(members) <= _SMALL:
            for key, m in members.items():
                # most members are absent ("extension", "_system"): "in" is the cheapest miss
                lines.append(f"        if {key!r} in value:")
                lines.append(f"            v = value[{key!r}]")
                self._member_body(m, lines, "            ")
            return
        table: dict[str, Callable[..., None]] = {}
        for key, m in members.items():
            if key[:1] == "_" or m.forbidden is not None:
                # rare members (a primitive's extensions, a removed choice type): the interpreted
                # visit is as good, and generating them all would slow the warm-up down
                table[key] = m.visit
                continue
            body: list[str] = []
            self._member_body(m, body, "    ", tail=True)
            # the same member in another profile or datatype: one function
            self._tables.append((table, key, self._function("m", "(v, value, path, ctx)", body)))
        d = self._const(table, "d")
        keys = self._const(frozenset(members), "g")
        lines.append(f"        if not {keys}.isdisjoint(value):")
        lines.append(f"            get = {d}.get")
        lines.append("            for key, v in value.items():")
        lines.append("                m = get(key)")
        lines.append("                if m is not None:")
        lines.append("                    m(v, value, path, ctx)")

    def _member_body(self, m: Member, lines: list[str], ind: str, tail: bool = False) -> None:
        """The statements for the value ``v`` of member ``m`` (``tail``: they end the function)."""
        expr = repr(m.expr)
        owner = self._const(m.owner, "n")
        eid = repr(m.eid)
        if m.forbidden is not None:
            lines.append(
                f"{ind}ctx.add('error', 'structure', (path, {expr}, -1), {m.forbidden!r}, {owner}, {eid})"
            )
            return
        lines.append(f"{ind}if type(v) is list:")
        inner = ind + "    "
        if m.max >= 0:
            msg = f"{m.eid}: maximum allowed = {m.max}, but found "
            lines.append(f"{inner}if len(v) > {m.max}:")
            lines.append(f"{inner}    ctx.add('error', 'structure', (path, {expr}, -1), {msg!r} + str(len(v)), "
                         f"{owner}, {eid})")  # fmt: skip
        if m.slicing is not None:
            sl = self._slicing(m.slicing)
            lines.append(f"{inner}{sl}(v, path, {expr}, True, value, ctx)")
        elif m.node is not None:
            lines.append(f"{inner}for i, x in enumerate(v):")
            lines.append(f"{inner}    if x is not None:")
            # the path as an expression: built only when the node is called or reports
            self._call(m.node, "x", f"(path, {expr}, i)", inner + "        ", lines)
        else:
            lines.append(f"{inner}pass")
        # as Member.visit: a null is no value (the structural validator reports it), nothing to
        # check in it but the slices it does not fill and a maximum of 0
        node = m.node
        if m.slicing is not None or m.max == 0:
            lines.append(f"{ind}else:")
            if m.max == 0:
                msg = f"{m.eid}: maximum allowed = 0, but the element is present"
                lines.append(
                    f"{inner}ctx.add('error', 'structure', (path, {expr}, -1), {msg!r}, {owner}, {eid})"
                )
            if m.slicing is not None:
                lines.append(f"{inner}{self._slicing(m.slicing)}([v], path, {expr}, False, value, ctx)")
                return
            if node is None:
                return
            lines.append(f"{inner}if v is None:")
            lines.append(f"{inner}    return" if tail else f"{inner}    pass")
            if not tail:
                lines.append(f"{inner}else:")
                inner += "    "
        elif node is not None:
            lines.append(f"{ind}elif v is not None:")
        else:
            return
        body = self._inlinable(node) if tail else None
        if body is None:
            self._call(node, "v", f"(path, {expr}, -1)", inner, lines)
            return
        # the last thing the member function does: the node's statements in place of a call, on
        # value and path rebound (the parent's are not needed any more)
        if node.gate is not None:
            lines.append(f"{inner}if type(v) is dict and {self._const(node.gate, 'g')}.isdisjoint(v):")
            lines.append(f"{inner}    return")
        lines.append(f"{inner}path = (path, {expr}, -1)")
        lines.append(f"{inner}value = v")
        lines.extend(inner[4:] + line for line in body)

    # -- slicing -----------------------------------------------------------------------------

    def _slicing(self, sl: Slicing) -> str:
        """The name of the function doing ``sl.run``: each item matched against the slices in
        order (discriminators inline where their shape allows), counted, checked, walked."""
        name = self._slicings.get(id(sl))
        if name is not None:
            return name
        name = f"s{len(self._ns)}"
        self._ns[name] = None  # reserved until exec
        self._ns[f"S_{name}"] = sl  # keeps the slicing alive, so its id stays unique
        self._slicings[id(sl)] = name
        self._generated_slicings.append((sl, name))
        owner = self._const(sl.owner, "n")
        slices = sl.slices
        live = [(si, s) for si, s in enumerate(slices) if MATCH_SHAPES.get(s.match) != ("never",)]
        lines = [f"def {name}(items, path, expr, array, obj, ctx):"]
        for si in range(len(slices)):
            lines.append(f"    c{si} = 0")
        if sl.ordered:
            lines.append("    last = -1")
        if sl.rules == "openAtEnd":
            lines.append("    seen = False")
        lines.append("    for i, item in enumerate(items):")
        lines.append("        if item is None:")
        lines.append("            continue")
        lines.append("        ipath = (path, expr, i if array else -1)")
        n = [0]
        for si, s in live:
            self._match(s.match, "        ", lines, n)
            lines.append("        if ok:")
            lines.append(f"            c{si} += 1")
            if sl.ordered:
                msg = f"{sl.eid}: slice {s.name} is out of order (the slicing is ordered)"
                lines.append(f"            if {si} < last:")
                lines.append(
                    f"                ctx.add('error', 'structure', ipath, {msg!r}, {owner}, {s.eid!r})"
                )
                lines.append(f"            if {si} > last:")
                lines.append(f"                last = {si}")
            if sl.rules == "openAtEnd":
                msg = f"{sl.eid}: items outside the slices must come last (openAtEnd)"
                lines.append("            if seen:")
                lines.append(
                    f"                ctx.add('error', 'structure', ipath, {msg!r}, {owner}, {s.eid!r})"
                )
            if s.node is not None:
                variant = self._matched_variant(s)
                if variant is not None:
                    lines.append(f"            {variant}(item, ipath, ctx)")
                else:
                    self._call(s.node, "item", "ipath", "            ", lines)
            lines.append("            continue")
        # no slice takes the item
        if sl.rules == "openAtEnd":
            lines.append("        seen = True")
        if sl.rules == "closed":
            msg = (f"{sl.eid}: this item matches none of the slices ({', '.join(s.name for s in slices)}) "
                   f"and the slicing is closed")  # fmt: skip
            lines.append(f"        ctx.add('error', 'structure', ipath, {msg!r}, {owner}, {sl.eid!r})")
        if sl.base is not None:
            self._call(sl.base, "item", "ipath", "        ", lines)
        if sl.unmatched is not None:
            lines.append(f"        {self._const(sl.unmatched, 'u')}(item, ipath, obj, ctx)")
        for si, s in enumerate(slices):
            cases: list[tuple[str, str, str, str]] = []
            if s.min > 0:
                cases.append((f"c{si} < {s.min}", "error", "required",
                              f"{s.eid}: slice {s.name} requires at least {s.min} item(s), found "))  # fmt: skip
            if s.max >= 0:
                cases.append((f"c{si} > {s.max}", "error", "structure",
                              f"{s.eid}: slice {s.name} allows at most {s.max} item(s), found "))  # fmt: skip
            if s.ms:
                cases.append((f"c{si} == 0 and ctx.must_support", "information", "informational",
                              f"must-support slice {s.eid} has no item"))  # fmt: skip
            for k, (cond, severity, code, msg) in enumerate(cases):
                lines.append(f"    {'if' if k == 0 else 'elif'} {cond}:")
                text = f"{msg!r}" if code == "informational" else f"{msg!r} + str(c{si})"
                lines.append(
                    f"        ctx.add({severity!r}, {code!r}, (path, expr, -1), {text}, {owner}, {s.eid!r})"
                )
        self._source.extend(lines)
        return name

    def _matched_variant(self, s: Slice) -> str | None:
        """A slice chosen by a pattern usually states the same pattern as a check on its node: an
        item the slice took passes it.  The name of the node's function without that check, or
        None where there is no such check (or the node is not a small finished one)."""
        shape = MATCH_SHAPES.get(s.match)
        node = s.node
        if shape is None or shape[0] != "test" or node is None or not node.done or len(node.members) > _SMALL:
            return None
        matched = self._value_test(shape[1])
        for check in node.checks:
            spec = INLINE.get(check)
            if spec is not None and spec[0] == "test" and self._value_test(spec[1]) == matched:
                name = f"{self._names.get(id(node), 'w')}_{len(self._ns)}"
                self._ns[name] = None  # reserved until exec
                self._generate(node, name, check)
                return name
        return None

    def _match(self, m: Matcher, ind: str, lines: list[str], n: list[int]) -> None:
        """Statements setting ``ok`` to whether ``item`` matches ``m`` (truthy or falsy)."""
        shape = MATCH_SHAPES.get(m)
        kind = shape[0] if shape is not None else None
        if shape is None or kind is None:
            lines.append(f"{ind}ok = {self._const(m, 'x')}(item, ctx)")
        elif kind == "never":
            lines.append(f"{ind}ok = False")
        elif kind == "equals":
            _, key, text = shape
            lines.append(f"{ind}ok = type(item) is dict and item.get({key!r}) == {text!r}")
        elif kind == "test":
            lines.append(f"{ind}ok = {self._test_expr(shape[1], 'item', n)}")
        elif kind == "path":
            lines.append(f"{ind}ok = {self._path_test(shape[1], shape[2])}(item)")
        elif kind == "member":
            _, key, test = shape
            n[0] += 1
            v, x = f"mv{n[0]}", f"mx{n[0]}"
            lines.append(f"{ind}if type(item) is dict:")
            lines.append(f"{ind}    {v} = item.get({key!r})")
            lines.append(f"{ind}    if {v} is None:")
            lines.append(f"{ind}        ok = False")
            lines.append(f"{ind}    elif type({v}) is list:")
            lines.append(f"{ind}        ok = False")
            lines.append(f"{ind}        for {x} in {v}:")
            lines.append(f"{ind}            if {x} is not None and {self._test_expr(test, x, n)}:")
            lines.append(f"{ind}                ok = True")
            lines.append(f"{ind}                break")
            lines.append(f"{ind}    else:")
            lines.append(f"{ind}        ok = {self._test_expr(test, v, n)}")
            lines.append(f"{ind}else:")
            lines.append(f"{ind}    ok = {self._const(m, 'x')}(item, ctx)")
        else:  # "all" / "any": each further matcher only while the answer is open
            subs = shape[1]
            self._match(subs[0], ind, lines, n)
            for sub in subs[1:]:
                lines.append(f"{ind}if {'ok' if kind == 'all' else 'not ok'}:")
                ind += "    "
                self._match(sub, ind, lines, n)

    def _required(self, node: Node, lines: list[str]) -> None:
        owner = self._const(node, "n")
        for keys, minimum, eid, label in node.required:
            ind = "        "
            if minimum == 1:
                # a truthy value counts at least 1: the exact count only when none is (null and []
                # count 0, "" and {} count 1)
                present = " or ".join(f"{k!r} in value and value[{k!r}]" for k in keys)
                lines.append(f"        if not ({present}):")
                ind = "            "
            lines.append(f"{ind}c = 0")
            for k in keys:
                lines.append(f"{ind}v = value.get({k!r})")
                lines.append(f"{ind}if v is not None:")
                lines.append(f"{ind}    c += len(v) if type(v) is list else 1")
            lines.append(f"{ind}if c < {minimum}:")
            lines.append(f"{ind}    report_missing(value, {keys!r}, {minimum}, c, path, {label!r}, {eid!r}, "
                         f"{owner}, ctx)")  # fmt: skip

    def _must_support(self, node: Node, lines: list[str]) -> None:
        if not node.ms:
            return
        owner = self._const(node, "n")
        lines.append("        if ctx.must_support:")
        for keys, eid, label in node.ms:
            present = " or ".join(f"{k!r} in value" for k in keys) or "False"
            msg = f"must-support element {eid} is absent"
            lines.append(f"            if not ({present}):")
            lines.append(f"                ctx.add('information', 'informational', (path, {label!r}, -1), {msg!r}, "
                         f"{owner}, {eid!r})")  # fmt: skip


# The variables of a node's statements (theirs alone when written out inside another's)
_LOCALS = frozenset(("value", "path", "v", "x", "i", "ok", "cs", "c", "k", "s", "r", "get", "key", "m"))


# a string literal as repr() writes them (skipped), or a name not after a dot (an attribute)
_TOKEN = re.compile(r"""'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|(?<![.\w])([A-Za-z_]\w*)""")


def _variables(lines: list[str]) -> list[tuple[int, int, int, str]]:
    """Where ``lines`` use the variables of _LOCALS, (row, start, end, name) in order: names only,
    not attributes (``.get``) nor the insides of string literals."""
    found: list[tuple[int, int, int, str]] = []
    for row, line in enumerate(lines):
        for match in _TOKEN.finditer(line):
            name = match.group(1)
            if name in _LOCALS:
                found.append((row, match.start(1), match.end(1), name))
    return found


def _renamed(lines: list[str], sites: list[tuple[int, int, int, str]], names: dict[str, str]) -> list[str]:
    """``lines`` with the variables at ``sites`` (from _variables) replaced as ``names`` says."""
    out = list(lines)
    for row, start, end, name in reversed(sites):
        out[row] = out[row][:start] + names[name] + out[row][end:]
    return out


def _children(node: Node) -> list[Node]:
    out: list[Node] = list(node.also)
    for m in node.members.values():
        if m.node is not None:
            out.append(m.node)
        if m.slicing is not None:
            out.extend(_slicing_nodes(m.slicing))
    return out


def _slicing_nodes(slicing: Slicing) -> list[Node]:
    out = [s.node for s in slicing.slices if s.node is not None]
    if slicing.base is not None:
        out.append(slicing.base)
    return out


__all__ = ["WalkCompiler", "Ctx", "Path"]
