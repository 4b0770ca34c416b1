"""Check plans turned into Python: one generated function per plan node.

The plan (``plan.Node``) is data a general walk interprets; that walk pays, per value, for reading
the node's attributes, looping over its tuples and calling ``Member.visit``.  Here each node
becomes a function that does exactly its own work: its checks called one by one, its members
looked up directly when there are few (``value.get("code")``) or dispatched through a dict of member
functions when there are many, leaf nodes (a fixed value, a binding) checked inline, and
cardinalities and must-support tests written out.  Nodes call each other by name through one
shared namespace, so recursive plans (Extension, Identifier <-> Reference) need nothing special.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from fhir_server.validation.fhirpath_native import Unsupported
from fhir_server.validation.plan import INLINE, Check, Ctx, Member, Node, Path, Slicing, report_missing, run

_SMALL = 5  # a node with at most this many members looks each up instead of looping over the value


class WalkCompiler:
    def __init__(self) -> None:
        self._ns: dict[str, Any] = {"run": run, "report_missing": report_missing, "Unsupported": Unsupported}
        self._names: dict[int, str] = {}
        self._lock = threading.Lock()
        self.generated = 0
        # one compile() per batch: the sources of its functions, and what to link after exec
        self._source: list[str] = []
        self._tables: list[tuple[dict[str, Any], str, str]] = []

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
            self._source, self._tables = [], []
            for node in batch:
                self._generate(node)
            if batch:
                label = f"<plans from {root.profile}>"
                exec(compile("\n".join(self._source) + "\n", label, "exec"), self._ns)
                for table, key, fname in self._tables:
                    table[key] = self._ns[fname]
                for node in batch:
                    node.fn = self._ns[self._names[id(node)]]
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
        name = f"{prefix}{len(self._ns)}"
        self._ns[name] = value
        return name

    def _check(self, check: Check, value: str, path: str, ind: str, lines: list[str]) -> None:
        spec = INLINE.get(check)
        if spec is None:
            lines.append(f"{ind}{self._const(check)}({value}, {path}, ctx)")
        elif spec[0] == "predicate":
            _, test, fallback, report = spec
            t, f, r = self._const(test), self._const(fallback), self._const(report)
            lines.append(f"{ind}try:")
            lines.append(f"{ind}    ok = {t}({value}, ctx.root)")
            lines.append(f"{ind}except Unsupported:")
            lines.append(f"{ind}    ok = {f}({value}, ctx.root)")
            lines.append(f"{ind}if ok is not True:")
            lines.append(f"{ind}    {r}(ok, {value}, {path}, ctx)")
        elif spec[0] == "equals":
            _, text, report = spec
            lines.append(f"{ind}if {value} != {text!r} or type({value}) is not str:")
            lines.append(f"{ind}    {self._const(report)}({value}, {path}, ctx)")
        elif spec[0] == "concept":
            _, memo, verdict, required = spec
            m, vf, full = self._const(memo), self._const(verdict), self._const(check)
            lines.append(f"{ind}if type({value}) is dict:")
            lines.append(f"{ind}    cs = {value}.get('coding')")
            lines.append(f"{ind}    if type(cs) is list and cs:")
            lines.append(f"{ind}        for c in cs:")
            lines.append(
                f"{ind}            r = {m}.get((c.get('system'), c.get('code')), 2) if type(c) is dict else None"
            )
            lines.append(f"{ind}            if r == 2:")
            lines.append(f"{ind}                r = {vf}(c)")
            lines.append(f"{ind}            if r is not False:")
            lines.append(f"{ind}                break")
            lines.append(f"{ind}        else:")
            lines.append(f"{ind}            {full}({value}, {path}, ctx)")
            if required:
                lines.append(f"{ind}    else:")
                lines.append(f"{ind}        {full}({value}, {path}, ctx)")
        else:
            lines.append(f"{ind}if type({value}) is dict and ('type' in {value} or "
                         f"str({value}.get('reference', ''))[:4] != 'urn:'):")  # fmt: skip
            lines.append(f"{ind}    {self._const(check)}({value}, {path}, ctx)")

    def _call(self, node: Node, value: str, path: str, ind: str, lines: list[str]) -> None:
        """Code that runs ``node`` on the expression ``value`` at ``path``."""
        if node.leaf and node.done:
            for check in node.checks:
                self._check(check, value, path, ind, lines)
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

    def _generate(self, node: Node) -> None:
        name = self._names[id(node)]
        lines = [f"def {name}(value, path, ctx):"]
        for check in node.checks:
            self._check(check, "value", "path", "    ", lines)
        if node.members or node.required or node.ms:
            lines.append("    if type(value) is dict:")
            self._members(node, lines)
            self._required(node, lines)
            self._must_support(node, lines)
        for other in node.also:
            self._call(other, "value", "path", "    ", lines)
        if len(lines) == 1:
            lines.append("    return")
        self._source.append(f"# {node.profile} {node.eid}".replace("\n", " "))
        self._source.extend(lines)

    def _members(self, node: Node, lines: list[str]) -> None:
        members = node.members
        if not members:
            return
        if len(members) <= _SMALL:
            for key, m in members.items():
                # most members are absent ("extension", "_system"): "in" is the cheapest miss
                lines.append(f"        if {key!r} in value:")
                lines.append(f"            v = value[{key!r}]")
                lines.append("            if v is not None:")
                self._member_body(m, lines, "                ")
            return
        table: dict[str, Callable[..., None]] = {}
        for key, m in members.items():
            if key[:1] == "_" or m.forbidden is not None:
                # rare members (a primitive's extensions, a removed choice type): the interpreted
                # visit is as good, and generating them all would slow the warm-up down
                table[key] = m.visit
                continue
            fname = self._const(None, "m")
            body = [f"def {fname}(v, value, path, ctx):"]
            self._member_body(m, body, "    ")
            self._source.extend(body)
            self._tables.append((table, key, fname))
        d = self._const(table, "d")
        lines.append(f"        get = {d}.get")
        lines.append("        for key, v in value.items():")
        lines.append("            m = get(key)")
        lines.append("            if m is not None:")
        lines.append("                m(v, value, path, ctx)")

    def _member_body(self, m: Member, lines: list[str], ind: str) -> None:
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
            sl = self._const(m.slicing, "s")
            lines.append(f"{inner}{sl}.run(v, path, {expr}, True, value, ctx)")
        elif m.node is not None:
            lines.append(f"{inner}for i, x in enumerate(v):")
            lines.append(f"{inner}    if x is not None:")
            lines.append(f"{inner}        p = (path, {expr}, i)")
            self._call(m.node, "x", "p", inner + "        ", lines)
        else:
            lines.append(f"{inner}pass")
        lines.append(f"{ind}else:")
        if m.max == 0:
            msg = f"{m.eid}: maximum allowed = 0, but the element is present"
            lines.append(f"{inner}ctx.add('error', 'structure', (path, {expr}, -1), {msg!r}, {owner}, {eid})")
        if m.slicing is not None:
            sl = self._const(m.slicing, "s")
            lines.append(f"{inner}{sl}.run([v], path, {expr}, False, value, ctx)")
        elif m.node is not None:
            lines.append(f"{inner}p = (path, {expr}, -1)")
            self._call(m.node, "v", "p", inner, lines)
        else:
            lines.append(f"{inner}pass")

    def _required(self, node: Node, lines: list[str]) -> None:
        owner = self._const(node, "n")
        for keys, minimum, eid, label in node.required:
            if minimum == 1:
                # presence is enough: "in" tests, and the count only on the way to a report
                present = " or ".join(f"{k!r} in value" for k in keys)
                lines.append(f"        if not ({present}):")
                lines.append(
                    f"            report_missing(value, {keys!r}, 1, 0, path, {label!r}, {eid!r}, {owner}, ctx)"
                )
                continue
            lines.append("        c = 0")
            for k in keys:
                lines.append(f"        v = value.get({k!r})")
                lines.append("        if v is not None:")
                lines.append("            c += len(v) if type(v) is list else 1")
            lines.append(f"        if c < {minimum}:")
            lines.append(f"            report_missing(value, {keys!r}, {minimum}, c, path, {label!r}, {eid!r}, "
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
