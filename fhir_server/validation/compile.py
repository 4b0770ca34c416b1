"""Profile -> check plan.  Each profile is compiled once; the plan is cached by the validator.

The snapshot is read element by element.  What the structural validator already checks (the base
cardinality, base required bindings, JSON types, ele-1/ext-1, dom-2..5, txt-1/2, ref-1) is left
out; what a profile adds is compiled into the ``plan.Node`` tree:

* cardinality stricter than the base, on elements and on slices; ``max 0`` and removed choice types;
* fixed[x] (exact) and pattern[x] (contains), on any element;
* bindings: required (error) and extensible (warning, not when a CodeableConcept has text only) on
  code, string, uri, Coding, CodeableConcept and Quantity values; preferred and example check nothing;
* slicing: value, pattern, type, profile and exists discriminators; closed, open, openAtEnd and
  ordered rules; slice cardinality;
* extensions: a slice's profile, and for every other extension its definition looked up by url
  (unknown url: warning, error for a modifierExtension), its context and its value type;
* invariants of the element and of its datatype (``invariants``);
* reference targets: the type of the referenced resource (relative, absolute or contained
  reference), and the target profiles through ``Host.check_target``;
* must-support elements and slices, reported as information when absent.
"""

from __future__ import annotations

import threading
from typing import Any

from fhir_server.model.facts import ElementDef, Facts
from fhir_server.validation.checks import (
    binding_check,
    extension_context_allowed,
    fixed_check,
    invariant_check,
    pattern_check,
    reference_check,
)
from fhir_server.validation.compact import CompactSD, Element, type_code, type_profiles
from fhir_server.validation.discriminators import (
    all_of,
    any_of,
    binding_matcher,
    never,
    projected_matcher,
    type_matcher,
    value_matcher,
)
from fhir_server.validation.invariants import InvariantCompiler
from fhir_server.validation.issues import Path
from fhir_server.validation.packages import Conformance
from fhir_server.validation.plan import Check, Ctx, Matcher, Member, Node, Slice, Slicing, run
from fhir_server.validation.plan_codegen import WalkCompiler
from fhir_server.validation.values import navigate

_SYSTEM_STRING = "http://hl7.org/fhirpath/System.String"
_CORE = "http://hl7.org/fhir/StructureDefinition/"
_BINDABLE = frozenset(("code", "string", "uri", "Coding", "CodeableConcept", "Quantity"))
_CHOICE_BINDABLE = frozenset(("code", "Coding", "CodeableConcept", "Quantity"))
_EXTENSIONS = ("extension", "modifierExtension")


def _max(value: Any) -> int:
    return -1 if value in (None, "*") else int(value)


def canonical_label(sd: CompactSD) -> str:
    return f"{sd['url']}|{sd['version']}" if sd.get("version") else str(sd["url"])


class PlanCompiler:
    """Compiles profiles of one ``Conformance`` into plans; thread-safe, each plan built once."""

    def __init__(
        self, conf: Conformance, facts: Facts, invariants: InvariantCompiler, generate: bool = True
    ) -> None:
        self.conf = conf
        # plans turned into Python (plan_codegen); False keeps them interpreted (tests compare both)
        self.generate = generate
        self.facts = facts
        self.invariants = invariants
        self._plans: dict[int, Node] = {}
        self._types: dict[str, Node] = {}
        self._type_checks: dict[str, tuple[Check, ...]] = {}
        self._dynamic: dict[tuple[str, str, bool], Node] = {}
        self._lock = threading.RLock()
        self.walks = WalkCompiler()
        self.native_invariants = 0
        self.reference_invariants = 0

    # -- public --------------------------------------------------------------------------------

    def plan(self, sd: CompactSD) -> Node:
        node = self._plans.get(id(sd))
        if node is not None and node.done:
            return node  # the hot path: no lock once built
        with self._lock:
            node = self._plans.get(id(sd))
            if node is None:
                node = Node(canonical_label(sd), sd["type"])
                self._plans[id(sd)] = node  # before building: a profile may reach itself
                try:
                    builder = _Builder(self, sd)
                    builder.fill_root(node)
                except BaseException:
                    del self._plans[id(sd)]  # no half-built plan stays behind
                    raise
                builder.seal()
                if self.generate:
                    self.walks.compile_reachable(node)
            return node

    def type_plan(self, type_name: str) -> Node | None:
        """The base definition of a complex datatype as a plan (its invariants, extensible
        bindings, nested datatypes, extensions)."""
        with self._lock:
            node = self._types.get(type_name)
            if node is None:
                sd = self.conf.sd_by_type(type_name)
                if sd is None or sd.get("kind") != "complex-type":
                    return None
                node = self.plan(sd)
                self._types[type_name] = node
            return node

    def type_checks(self, type_name: str) -> tuple[Check, ...]:
        """The invariants a complex datatype states on its root (per-1 on Period, ...)."""
        with self._lock:
            found = self._type_checks.get(type_name)
            if found is None:
                node = self.type_plan(type_name)
                found = node.checks if node is not None else ()
                if node is None or node.done:  # a type still being built has no checks yet
                    self._type_checks[type_name] = found
            return found

    def extension_plan(self, url: str, scope: str) -> tuple[Node, CompactSD] | None:
        sd = self.conf.sd(url, scope)
        if sd is None or sd.get("type") != "Extension" or sd.get("derivation") != "constraint":
            return None
        return self.plan(sd), sd

    def dynamic_extension_node(self, scope: str, host_type: str, modifier: bool) -> Node:
        key = (scope, host_type, modifier)
        with self._lock:
            node = self._dynamic.get(key)
            if node is None:
                node = Node(_CORE + "Extension", "Extension")
                node.checks = (self._dynamic_check(scope, host_type, modifier, node),)
                node.done = True
                node.seal()
                self._dynamic[key] = node
            return node

    # -- extensions ----------------------------------------------------------------------------

    def _dynamic_check(self, scope: str, host_type: str, modifier: bool, node: Node) -> Check:
        ancestors = self._ancestors(host_type) | {host_type}

        def check(value: Any, path: Path, ctx: Ctx) -> None:
            if type(value) is not dict:
                return
            url = value.get("url")
            if type(url) is not str:
                return  # the structural validator reports the missing url
            found = self.extension_plan(url, scope)
            if found is None:
                if ":" not in url:
                    return  # a sub-extension of a complex extension we do not know: nothing to say
                what = "modifier extension" if modifier else "extension"
                ctx.add("error" if modifier else "warning", "extension", path,
                        f"unknown {what} {url!r}: no loaded package defines it", node)  # fmt: skip
                base = self.type_plan("Extension")
                if base is not None:
                    run(base, value, path, ctx)
                return
            plan, sd = found
            contexts = sd.get("context") or ()
            if contexts and not extension_context_allowed(contexts, ancestors, host_type, path):
                allowed = ", ".join(str(c[1]) for c in contexts)
                ctx.add("error", "extension", path,
                        f"extension {url!r} is not allowed here (its contexts: {allowed})", plan)  # fmt: skip
            run(plan, value, path, ctx)

        return check

    def _ancestors(self, type_name: str) -> set[str]:
        out: set[str] = set()
        td = self.facts.types.get(type_name)
        while td is not None and td.base:
            out.add(td.base)
            td = self.facts.types.get(td.base)
        if "." in type_name:
            out |= {"BackboneElement", "Element"}
        return out


class _Builder:
    """Compiles one profile's snapshot."""

    def __init__(self, pc: PlanCompiler, sd: CompactSD) -> None:
        self.pc = pc
        self.sd = sd
        self.conf = pc.conf
        self.facts = pc.facts
        self.scope = pc.conf.package_of(sd)
        self.label = canonical_label(sd)
        self.root_type: str = sd["type"]
        self.snap = pc.conf.snapshot(sd)
        self.by_id = {e["id"]: e for e in self.snap}
        self.kids: dict[str, dict[str, list[Element]]] = {}
        for e in self.snap[1:]:
            parent, _, last = e["id"].rpartition(".")
            self.kids.setdefault(parent, {}).setdefault(last.split(":", 1)[0], []).append(e)
        self.memo: dict[tuple[str, str], Node] = {}
        # element id -> the R4 required binding the structural validator checks there
        self.base_binding: dict[str, str | None] = {}
        self.foreign: dict[int, dict[str, dict[str, list[Element]]]] = {}

    # -- nodes ---------------------------------------------------------------------------------

    def seal(self) -> None:
        for node in self.memo.values():
            node.seal()
            for m in node.members.values():
                if m.node is not None:
                    m.node.seal()

    def fill_root(self, node: Node) -> None:
        root = self.snap[0]
        self.memo[(root["id"], self.root_type)] = node
        self._fill(node, root, self.root_type, is_root=True)
        node.done = True

    def _node(self, el: Element, value_type: str) -> Node | None:
        key = (el["id"], value_type)
        node = self.memo.get(key)
        if node is None:
            node = Node(self.label, el["id"])
            self.memo[key] = node
            self._fill(node, el, value_type, is_root=False)
            node = self.memo[key] = _flatten(node)
        return None if node.empty() else node

    def _fill(self, node: Node, el: Element, value_type: str, is_root: bool) -> None:
        eid = el["id"]
        checks: list[Check] = []
        for key, severity, expr, _bp in el.get("con", ()):
            inv = self.pc.invariants.compile(key, severity, expr, value_type, self.root_type)
            if inv is not None:
                if inv.native:
                    self.pc.native_invariants += 1
                else:
                    self.pc.reference_invariants += 1
                checks.append(invariant_check(inv, node, eid))
        if "fixed" in el:
            checks.append(fixed_check(el["fixed"][1], node, eid))
        if "pattern" in el:
            checks.append(pattern_check(el["pattern"][1], node, eid))
        binding = self.binding_check(el, value_type, node)
        if binding is not None:
            checks.append(binding)
        if value_type == "Reference":
            ref = self.reference_check(el, node)
            if ref is not None:
                checks.append(ref)
        kids = self._kids_of(el)
        also: list[Node] = []
        complex_type = self._is_datatype(value_type)
        profiles = (
            [p for t in el.get("types", ()) for p in type_profiles(t, "profile")] if not is_root else []
        )
        profile_sd = self.conf.sd(profiles[0], self.scope) if profiles else None
        if kids is not None:
            self._members(node, kids, value_type)
            if not is_root and complex_type:
                checks.extend(self.pc.type_checks(value_type))
            if profile_sd is not None:
                checks.extend(self.pc.plan(profile_sd).checks)
        elif not is_root:
            if profile_sd is not None:
                also.append(self.pc.plan(profile_sd))
            elif complex_type:
                tp = self.pc.type_plan(value_type)
                if tp is not None:
                    also.append(tp)
        node.checks = tuple(checks)
        node.also = tuple(also)
        node.done = True

    def _kids_of(self, el: Element) -> dict[str, list[Element]] | None:
        kids = self.kids.get(el["id"])
        if kids is not None:
            return kids
        if "cref" in el:
            return self.kids.get(el["cref"].lstrip("#"))
        if "slice" in el and not any(type_profiles(t, "profile") for t in el.get("types", ())):
            # A slice without children of its own keeps the sliced element's children (one with a
            # profile on its type takes the profile's instead).
            return self.kids.get(_unsliced_id(el["id"]))
        return None

    def _is_datatype(self, type_name: str) -> bool:
        td = self.facts.types.get(type_name)
        return td is not None and td.kind == "complex-type"

    # -- members -------------------------------------------------------------------------------

    def _members(self, node: Node, kids: dict[str, list[Element]], parent_type: str) -> None:
        ptd = self.facts.types.get(parent_type)
        required: list[tuple[tuple[str, ...], int, str, str]] = []
        ms: list[tuple[tuple[str, ...], str, str]] = []
        for name, els in kids.items():
            unsliced = next((e for e in els if "slice" not in e), None)
            slices = [e for e in els if "slice" in e]
            if unsliced is None:
                continue
            base_name = name[:-3] if name.endswith("[x]") else name
            fel = next((e for e in ptd.elements if e.name == base_name), None) if ptd is not None else None
            if fel is None or base_name == "id":
                continue
            for e in els:
                self.base_binding[e["id"]] = fel.binding
            if fel.choice:
                keys = self._choice(node, unsliced, slices, fel, base_name)
            else:
                keys = self._plain(node, unsliced, slices, fel, name, parent_type)
            minimum = unsliced.get("min", 0)
            if minimum > unsliced.get("bmin", minimum) and keys:
                required.append((keys, minimum, unsliced["id"], base_name))
            if unsliced.get("ms"):
                prim = tuple(
                    "_" + k for k in keys if self.facts.is_primitive(self._key_type(fel, k, base_name))
                )
                ms.append((keys + prim, unsliced["id"], base_name))
        node.required = tuple(required)
        node.ms = tuple(ms)

    def _key_type(self, fel: ElementDef, key: str, base_name: str) -> str:
        if not fel.choice:
            return fel.types[0] if fel.types else ""
        suffix = key[len(base_name) :]
        return next((t for t in fel.types if t[:1].upper() + t[1:] == suffix), "")

    def _value_type(self, el: Element, fel: ElementDef) -> str:
        codes = [type_code(t) for t in el.get("types", ())]
        if len(codes) == 1:
            code = codes[0]
            if code in ("BackboneElement", "Element") or code == _SYSTEM_STRING:
                return fel.types[0] if fel.types else code
            return code
        return fel.types[0] if fel.types else ""

    def _plain(self, node: Node, el: Element, slices: list[Element], fel: ElementDef, name: str,
               parent_type: str) -> tuple[str, ...]:  # fmt: skip
        vtype = self._value_type(el, fel)
        if vtype == "Resource" or (
            self.facts.types.get(vtype) is not None and self.facts.types[vtype].kind == "resource"
        ):
            return (name,)
        if name in _EXTENSIONS:
            dyn = self.pc.dynamic_extension_node(self.scope, parent_type, name == "modifierExtension")
            member = Member(name, dyn, node, el["id"])
            if el.get("slicing") and slices:
                member.slicing = self._slicing(el, slices, "Extension", dyn, node)
                member.node = None
        else:
            member = Member(name, self._node(el, vtype), node, el["id"])
            if el.get("slicing") and slices:
                member.slicing = self._slicing(el, slices, vtype, member.node, node)
        bmax = el.get("bmax")
        if bmax is not None and _max(bmax) != _max(el.get("max")) and el.get("max") is not None:
            member.max = _max(el["max"])
        if not member.empty():
            node.members[name] = member
        if self.facts.is_primitive(vtype):
            self._companion(node, name, el["id"], vtype)
        return (name,)

    def _companion(self, node: Node, key: str, eid: str, primitive_type: str) -> None:
        # "_name": the id and extensions of a primitive value; only its extensions have rules here.
        holder = Node(self.label, eid)
        holder.members["extension"] = Member(
            "extension",
            self.pc.dynamic_extension_node(self.scope, primitive_type, False),
            holder,
            eid + ".extension",
        )
        holder.done = True
        holder.seal()
        node.members["_" + key] = Member(key, holder, node, eid)

    def _choice(self, node: Node, el: Element, slices: list[Element], fel: ElementDef,
                base_name: str) -> tuple[str, ...]:  # fmt: skip
        allowed = [type_code(t) for t in el.get("types", ())] or list(fel.types)
        by_type: dict[str, Element] = {}
        for s in slices:
            codes = [type_code(t) for t in s.get("types", ())]
            if len(codes) == 1:
                by_type[codes[0]] = s
        keys: list[str] = []
        removed_all = _max(el.get("max")) == 0
        for tc in fel.types:
            key = base_name + tc[:1].upper() + tc[1:]
            expr = f"{base_name}.ofType({tc})"
            variant = by_type.get(tc, el)
            if removed_all:
                continue  # max 0 on the whole choice: the Member below says so once
            if tc not in allowed or _max(variant.get("max")) == 0:
                m = Member(expr, None, node, el["id"])
                m.forbidden = f"{el['id']}: type {tc} is not allowed here by the profile (allowed: {', '.join(allowed) or 'none'})"
                node.members[key] = m
                continue
            keys.append(key)
            vnode = self._node_variant(variant, el, tc)
            member = Member(expr, vnode, node, variant["id"])
            if not member.empty():
                node.members[key] = member
            if self.facts.is_primitive(tc):
                self._companion(node, key, variant["id"], tc)
        if removed_all:
            for tc in fel.types:
                m = Member(f"{base_name}.ofType({tc})", None, node, el["id"])
                m.forbidden = f"{el['id']}: maximum allowed = 0, but the element is present"
                node.members[base_name + tc[:1].upper() + tc[1:]] = m
        return tuple(keys)

    def _node_variant(self, variant: Element, choice_el: Element, tc: str) -> Node | None:
        # A binding on a choice applies to the coded types only (component.value[x] binds its
        # Quantity to UCUM, not its string).
        if variant is choice_el and tc not in _CHOICE_BINDABLE and "binding" in choice_el:
            el = dict(choice_el)
            del el["binding"]
            el["id"] = choice_el["id"]
            key = (el["id"] + "#" + tc, tc)
            node = self.memo.get(key)
            if node is None:
                node = Node(self.label, el["id"])
                self.memo[key] = node
                self._fill(node, el, tc, is_root=False)
                node = self.memo[key] = _flatten(node)
            return None if node.empty() else node
        return self._node(variant, tc)

    # -- checks --------------------------------------------------------------------------------

    def binding_check(self, el: Element, value_type: str, node: Node) -> Check | None:
        binding = el.get("binding")
        if not binding or binding[0] not in ("required", "extensible") or not binding[1]:
            return None
        if value_type not in _BINDABLE:
            return None
        strength, vs = binding
        if strength == "required" and self._base_required(el) == vs.split("|", 1)[0]:
            return None  # the structural validator checks base required bindings
        expansion = self.conf.terminology.expand(vs, self.scope)
        if expansion is None:
            return None  # a value set no loaded package defines: nothing to check against
        return binding_check(
            expansion, strength, vs, value_type, self.conf.terminology.cs_codes, node, el["id"]
        )

    def _base_required(self, el: Element) -> str | None:
        return self.base_binding.get(el["id"])

    def reference_check(self, el: Element, node: Node) -> Check | None:
        targets = [
            p for t in el.get("types", ()) if type_code(t) == "Reference" for p in type_profiles(t, "target")
        ]
        if not targets:
            return None
        allowed: set[str] = set()
        profiled: list[str] = []
        for t in targets:
            sd = self.conf.sd(t, self.scope)
            rt = sd["type"] if sd is not None else (t[len(_CORE) :] if t.startswith(_CORE) else None)
            if rt is None:
                return None  # a target we cannot resolve: do not guess
            if rt == "Resource":
                return None
            allowed.add(rt)
            if sd is not None and sd.get("derivation") == "constraint":
                profiled.append(t)
        return reference_check(frozenset(allowed), tuple(targets) if profiled else (), node, el["id"])

    # -- slicing -------------------------------------------------------------------------------

    def _slicing(
        self, el: Element, slices: list[Element], vtype: str, base: Node | None, owner: Node
    ) -> Slicing:
        spec = el["slicing"]
        rules = spec.get("rules", "open")
        built: list[Slice] = []
        for s in slices:
            matchers = [self._matcher(s, kind, path, vtype) for kind, path in spec.get("disc", ())]
            if not matchers or never in matchers:
                # A discriminator this compiler cannot evaluate (a path through resolve() or
                # extension('...'), a slice with no value to compare): the slice is not counted and
                # closed rules are not enforced, rather than report what cannot be known.
                built.append(Slice(s["slice"], never, 0, -1, None, s["id"], False))
                rules = "open"
                continue
            built.append(Slice(s["slice"], all_of(matchers), s.get("min", 0), _max(s.get("max")), self._node(s, vtype),
                               s["id"], bool(s.get("ms"))))  # fmt: skip
        return Slicing(tuple(built), rules, bool(spec.get("ordered")), base, el["id"], owner)

    def _matcher(self, s: Element, kind: str, path: str, vtype: str) -> Matcher:
        segs = tuple(p for p in path.split(".") if p != "$this")
        targets = self._discriminator_targets(s, segs)
        if not targets:
            return never
        if kind in ("value", "pattern"):
            alternatives: list[Matcher] = []
            for target, inherited in targets:
                if "fixed" in target:
                    alternatives.append(value_matcher(segs, target["fixed"][1], exact=kind == "value"))
                elif "pattern" in target:
                    alternatives.append(value_matcher(segs, target["pattern"][1], exact=False))
                elif inherited:
                    alternatives.append(projected_matcher(segs, inherited))
            if not alternatives:
                target = targets[0][0]
                binding = target.get("binding")
                if binding and binding[0] == "required" and binding[1]:
                    exp = self.conf.terminology.expand(binding[1], self.scope)
                    if exp is not None:
                        return binding_matcher(segs, exp, self.conf.terminology.cs_codes)
                if vtype == "Extension" and segs == ("url",):
                    profs = [p for t in s.get("types", ()) for p in type_profiles(t, "profile")]
                    if profs:
                        return value_matcher(segs, profs[0], exact=True)
                return never
            return any_of(alternatives)
        target = targets[0][0]
        if kind == "exists":
            want = target.get("min", 0) >= 1
            return lambda item, ctx: bool(navigate(item, segs)) == want
        if kind == "type":
            codes = frozenset(type_code(t) for t in target.get("types", ()))
            return type_matcher(segs, codes)
        if kind == "profile":
            profiles = [p for t in target.get("types", ()) for p in type_profiles(t, "profile")]
            scope = self.scope
            if not profiles:
                return never

            def by_profile(item: Any, ctx: Ctx) -> bool:
                values = navigate(item, segs)
                return any(ctx.host.conforms(p, v, scope, ctx) for p in profiles for v in values)

            return by_profile
        return never

    def _discriminator_targets(self, s: Element, segs: tuple[str, ...]) -> list[tuple[Element, Any]]:
        """The elements a discriminator path names under slice ``s`` (through the slices of an
        element on the way, as bp's component.code.coding:SBPCode.code, and into the profile
        on a type, as an extension's url), each with the fixed/pattern value an ancestor on the
        way states for it (projected down the rest of the path)."""
        out: list[tuple[Element, Any]] = []

        def walk(cur: Element, kids: dict[str, dict[str, list[Element]]], i: int, inherited: Any) -> None:
            for key in ("fixed", "pattern"):
                if key in cur and inherited is None:
                    inherited = navigate(cur[key][1], segs[i:])
            if i == len(segs):
                out.append((cur, inherited))
                return
            seg = segs[i]
            found = kids.get(cur["id"], {}).get(seg)
            if found is None and "slice" in cur:
                found = kids.get(_unsliced_id(cur["id"]), {}).get(seg)
            if found is None:
                profs = [p for t in cur.get("types", ()) for p in type_profiles(t, "profile")]
                psd = self.conf.sd(profs[0], self.scope) if profs else None
                if psd is None:
                    return
                pkids = self._foreign_kids(psd)
                root = self.conf.snapshot(psd)[0]
                found = pkids.get(root["id"], {}).get(seg)
                kids = pkids
                if found is None:
                    return
            before = len(out)
            plain = [e for e in found if "slice" not in e]
            for e in plain:
                walk(e, kids, i + 1, inherited)
            if len(out) == before or not any(
                "fixed" in t or "pattern" in t or inh for t, inh in out[before:]
            ):
                del out[before:]
                for e in found:
                    if "slice" in e:
                        walk(e, kids, i + 1, inherited)

        walk(s, self.kids, 0, None)
        return out

    def _foreign_kids(self, sd: CompactSD) -> dict[str, dict[str, list[Element]]]:
        found = self.foreign.get(id(sd))
        if found is None:
            found = {}
            for e in self.conf.snapshot(sd)[1:]:
                parent, _, last = e["id"].rpartition(".")
                found.setdefault(parent, {}).setdefault(last.split(":", 1)[0], []).append(e)
            self.foreign[id(sd)] = found
        return found


def _flatten(node: Node) -> Node:
    """One node fewer per value on the hot path: a node that only defers to a finished datatype
    or type-profile node becomes that node, or takes over its members."""
    if len(node.also) != 1 or node.members or node.required or node.ms:
        return node
    other = node.also[0]
    if not other.done:
        return node  # still being built (a recursive type): keep the indirection
    if not node.checks:
        return other
    node.checks = node.checks + other.checks
    node.members = other.members
    node.required = other.required
    node.ms = other.ms
    node.also = other.also
    return node


def _unsliced_id(eid: str) -> str:
    head, _, last = eid.rpartition(".")
    return (head + "." if head else "") + last.split(":", 1)[0]
