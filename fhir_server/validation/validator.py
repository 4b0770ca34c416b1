"""``ProfileValidator``: validate resources against profiles from FHIR packages.

    validator = default_validator()            # shipped US Core 3.1.1 / 6.1.0 + FHIR_PACKAGES
    issues = validator.validate(resource)      # structural + every known meta.profile
    issues = validator.validate(resource, ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient|3.1.1"])
    outcome = operation_outcome(issues)        # fhir_server.validation.issues

A profile is compiled into a check plan the first time it is used (``warm_up`` compiles them all
ahead).  ``validate`` never raises: what cannot be checked is reported as an issue.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

from fhir_server.model.facts import Facts, get_facts
from fhir_server.model.validate import validate_resource
from fhir_server.validation.checks import reference_type
from fhir_server.validation.compact import CompactSD
from fhir_server.validation.compile import PlanCompiler, canonical_label
from fhir_server.validation.fhirpath_reference import member_of_items
from fhir_server.validation.invariants import InvariantCompiler
from fhir_server.validation.issues import Path, ProfileIssue
from fhir_server.validation.packages import (
    Conformance,
    Package,
    load_package,
    merge_packages,
    packages_from_env,
)
from fhir_server.validation.plan import Ctx, Node, run
from fhir_server.validation.snapshot import SnapshotError

# Reads a referenced resource from this server: the Reference.reference as written ("Patient/123")
# -> the resource, or None when it is not here.
Resolver = Callable[[str], "dict[str, Any] | None"]
TargetMode = Literal["off", "meta", "validate"]

_MAX_DEPTH = 4
# Distinct (type, meta.profile) lists whose resolution is remembered: clients choose them, so the
# memory they can take is bounded; past the limit they are resolved on each call.
_STEPS_LIMIT = 4096
# one declared profile: its plan, or no plan and the ProfileIssue arguments saying why (or the
# exception its compilation raised)
_Step = tuple["Node | None", "tuple[str, str, str, str, str] | Exception | None"]


class ProfileValidator:
    """Profiles and terminology of an ordered list of packages, compiled into check plans on demand.

    ``target_profiles`` decides what happens with a Reference whose targets are profiles
    (us-core-patient) when ``resolver`` finds the target on this server: "off" checks only the
    target's type, "meta" requires the target to claim one of the profiles in meta.profile,
    "validate" validates the target against them (one must pass).

    ``generate`` False keeps the plans interpreted rather than turned into Python: slower, the
    same issues (the tests hold the two to that).
    """

    def __init__(self, packages: Sequence[Package], *, facts: Facts | None = None, resolver: Resolver | None = None,
                 target_profiles: TargetMode = "off", must_support: bool = True, generate: bool = True) -> None:  # fmt: skip
        self.packages = list(packages)
        self.conformance = Conformance(self.packages)
        self.facts = facts or get_facts()
        self.resolver = resolver
        self.target_profiles: TargetMode = target_profiles
        self.must_support = must_support
        self._invariants = InvariantCompiler(self.facts, self._member_of)
        self._compiler = PlanCompiler(self.conformance, self.facts, self._invariants, generate)
        self._profiles: dict[str, tuple[CompactSD | None, Node | None, str | None]] = {}
        self._derived: dict[tuple[str, ...], list[str]] = {}
        self._steps: dict[tuple[Any, ...], list[_Step]] = {}

    # -- what is known ---------------------------------------------------------------------------

    def known(self, url: str) -> bool:
        """True when ``url`` (``url`` or ``url|version``) names a loaded profile."""
        return isinstance(url, str) and self.conformance.sd(url) is not None

    def profiles(self, resource_type: str | None = None) -> list[str]:
        """Canonicals (``url|version``) of the loaded resource profiles, e.g. for
        CapabilityStatement.rest.resource.supportedProfile; all packages but the R4 core."""
        out = []
        for pkg in self.packages:
            if pkg.name == "hl7.fhir.r4.core":
                continue
            for sd in pkg.sds:
                if sd.get("kind") != "resource" or sd.get("derivation") != "constraint":
                    continue
                if resource_type is None or sd["type"] == resource_type:
                    out.append(canonical_label(sd))
        return sorted(set(out))

    def warm_up(self, urls: Iterable[str] | None = None) -> int:
        """Compile the plans of ``urls`` (default: every profile of ``profiles()``, and the extension
        definitions of the same packages) now rather than on first use; returns how many profiles."""
        n = 0
        for url in urls if urls is not None else self.profiles():
            found = self._profiles.get(url)
            if found is None:
                found = self._profiles[url] = self._resolve(url)
            n += found[1] is not None
        if urls is None:
            for pkg in self.packages:
                if pkg.name != "hl7.fhir.r4.core":
                    for sd in pkg.sds:
                        if sd.get("type") == "Extension" and sd.get("derivation") == "constraint":
                            self._compiler.extension_plan(sd["url"], pkg.key)
        return n

    # -- validation ------------------------------------------------------------------------------

    def validate(self, resource: Any, profiles: Sequence[str] | None = None, *, structural: bool = True,
                 must_support: bool | None = None, resolver: Resolver | None = None) -> list[ProfileIssue]:  # fmt: skip
        """Every issue of ``resource`` (a dict as parsed by ``fhir_server.model.jsonio.loads``).

        ``profiles`` None means the resource's own meta.profile entries (one not loaded gives a
        warning).  ``structural`` False skips the structural R4 validation, for a caller that has
        just run ``fhir_server.model.validate.validate_resource`` itself.  ``must_support`` reports
        absent must-support elements as information (default: the validator's setting).
        ``resolver`` reads referenced resources for this call (say, in the request's transaction);
        default: the validator's.
        """
        issues: list[ProfileIssue] = []
        if structural:
            found = validate_resource(resource)
            if found:
                issues.extend(ProfileIssue(i.severity, i.code, i.diagnostics, i.expression) for i in found)
        if type(resource) is not dict:
            return issues
        # the profile pass inline, not in a method of its own: it runs on every write
        try:
            rt = resource.get("resourceType")
            if type(rt) is not str:
                return issues
            declared: Sequence[Any] | None = profiles
            if declared is None:
                meta = resource.get("meta")
                declared = meta.get("profile") if type(meta) is dict else None
                if type(declared) is not list:
                    return issues
            # Resources repeat a few meta.profile lists: what they resolve to is remembered per
            # (type, declared urls), so the common case costs one lookup.
            key = (rt, *declared)
            try:
                steps = self._steps.get(key)
            except TypeError:  # an unhashable entry (an object where a url should be)
                steps = self._resolve_steps(rt, [p for p in declared if isinstance(p, str)])[0]
            if steps is None:
                steps, complete = self._resolve_steps(rt, [p for p in declared if isinstance(p, str)])
                if complete and len(self._steps) < _STEPS_LIMIT:
                    self._steps[key] = steps
            if not steps:
                return issues
            if must_support is None:
                must_support = self.must_support
            resolver = resolver or self.resolver
            targets = resolver is not None and self.target_profiles != "off"
            path = (None, rt, -1)
            for plan, problem in steps:
                if plan is None:
                    if isinstance(problem, Exception):
                        raise problem
                    if problem is not None:
                        issues.append(ProfileIssue(*problem))
                    continue
                ctx = Ctx(resource, self, must_support, targets, resolver)
                fn = plan.fn
                if fn is not None:
                    fn(resource, path, ctx)
                else:
                    run(plan, resource, path, ctx)
                issues.extend(ctx.issues)
        except RecursionError:
            issues.append(
                ProfileIssue("error", "exception", "the resource is nested too deeply to validate", "")
            )
        except Exception as exc:  # never raise on client input; report what could not be checked
            issues.append(
                ProfileIssue(
                    "error", "exception", f"profile validation failed: {type(exc).__name__}: {exc}", ""
                )
            )
        return issues

    def _resolve_steps(self, rt: str, profiles: list[str]) -> tuple[list[_Step], bool]:
        """What validating a ``rt`` against ``profiles`` takes: per profile, in order, its plan, or
        (no plan) the arguments of the issue that says why it is not used; and whether that can be
        remembered.  A profile that fails to compile ends the list with its exception, raised when
        the steps before it have run (and not remembered: the next call tries again)."""
        if len(profiles) > 1:
            profiles = list(self._most_derived(tuple(profiles)))
        steps: list[_Step] = []
        for url in profiles:
            found = self._profiles.get(url)
            if found is None:
                try:
                    found = self._resolve(url)
                    # Only known profiles are remembered: meta.profile is client input, and every
                    # distinct unknown URL kept would grow this dict without limit.
                    if found[0] is not None:
                        self._profiles[url] = found
                except Exception as exc:
                    steps.append((None, exc))
                    return steps, False
            sd, plan, problem = found
            if plan is None:
                steps.append((None, ("warning", "not-supported", problem or "", f"{rt}.meta.profile",
                                     canonical_label(sd) if sd is not None else url)))  # fmt: skip
            elif sd is not None and sd["type"] != rt:
                steps.append((None, ("error", "invalid", f"profile {url} is for {sd['type']}, not {rt}", rt,
                                     canonical_label(sd))))  # fmt: skip
            else:
                steps.append((plan, None))
        return steps, True

    def _most_derived(self, declared: tuple[str, ...]) -> Sequence[str]:
        """The declared profiles less those another declared one derives from: a snapshot holds
        all of its bases' rules, so bodyweight covers vitalsigns (and its issues come once)."""
        found = self._derived.get(declared)
        if found is None:
            ancestors: set[str] = set()
            for url in declared:
                sd = self.conformance.sd(url)
                while sd is not None and sd.get("base") and sd.get("derivation") == "constraint":
                    ancestors.add(sd["base"])
                    sd = self.conformance.sd(sd["base"], self.conformance.package_of(sd))
            if len(self._derived) >= _STEPS_LIMIT:  # keyed by client input: bounded
                self._derived.clear()
            found = self._derived[declared] = [
                u for u in dict.fromkeys(declared) if u.split("|", 1)[0] not in ancestors
            ]
        return found

    def _resolve(self, url: str) -> tuple[CompactSD | None, Node | None, str | None]:
        """A declared profile: (its definition, its plan, why it cannot be used); remembered per url."""
        sd = self.conformance.sd(url)
        if sd is None:
            return None, None, f"profile {url} is not known to this server, so it was not checked"
        if sd.get("kind") != "resource":
            return sd, None, f"profile {url} is not a resource profile, so it was not checked"
        try:
            return sd, self._compiler.plan(sd), None
        except SnapshotError as exc:
            return sd, None, f"profile {url} cannot be used: {exc}"

    # -- Host: what the plans ask of the validator -------------------------------------------------

    def conforms(self, profile: str, value: Any, scope: str, ctx: Ctx) -> bool | None:
        sd = self.conformance.sd(profile, scope)
        if sd is None or ctx.depth >= _MAX_DEPTH:
            return None
        sub = Ctx(ctx.root, self, False)
        sub.depth = ctx.depth + 1
        run(self._compiler.plan(sd), value, (None, sd["type"], -1), sub)
        return not any(i.is_error for i in sub.issues)

    def check_target(self, reference: str, targets: Sequence[str], path: Path, ctx: Ctx, node: Node) -> None:
        resolver = ctx.resolver
        if resolver is None or self.target_profiles == "off" or ctx.depth >= _MAX_DEPTH:
            return
        if reference[:1] == "#" or reference_type(reference, ctx.root) is None:
            return
        target = resolver(reference)
        if type(target) is not dict:
            return  # not on this server: its type was checked, its profile cannot be
        shown = ", ".join(targets)
        if self.target_profiles == "meta":
            meta = target.get("meta")
            claimed = meta.get("profile") if type(meta) is dict else None
            claims = (
                {p.split("|", 1)[0] for p in claimed if isinstance(p, str)}
                if type(claimed) is list
                else set()
            )
            if not claims & {t.split("|", 1)[0] for t in targets}:
                ctx.add("error", "structure", path,
                        f"the target {reference} does not claim any of the profiles {shown} in meta.profile", node)  # fmt: skip
            return
        for t in targets:
            sd = self.conformance.sd(t)
            if sd is None or sd["type"] != target.get("resourceType"):
                continue
            sub = Ctx(target, self, False)
            sub.depth = ctx.depth + 1
            run(self._compiler.plan(sd), target, (None, sd["type"], -1), sub)
            if not any(i.is_error for i in sub.issues):
                return
        ctx.add(
            "error", "structure", path, f"the target {reference} does not conform to any of {shown}", node
        )

    def _member_of(self, value_set: str, system: str | None, code: str) -> bool | None:
        return self.conformance.terminology.member(value_set, system, code)

    def member_of(self, value_set: str, value: Any) -> bool | None:
        """Terminology check of one code, Coding or CodeableConcept (True/False, None: cannot tell)."""
        r = member_of_items(self._member_of, [value], value_set)
        return r[0] if r else None

    @property
    def compiler(self) -> PlanCompiler:
        return self._compiler


# ------------------------------------------------------------------------------------------------
# The process-wide validator


def shipped_packages() -> list[Package]:
    """The compact packages committed in profiles/: R4 base, US Core 3.1.1 and 6.1.0, Inferno's extras."""
    from profiles import shipped_paths

    return [load_package(p) for p in shipped_paths()]


_default: ProfileValidator | None = None
_default_lock = threading.Lock()


def default_validator() -> ProfileValidator:
    """The shipped profiles plus the packages in ``FHIR_PACKAGES`` (paths of .tgz packages, folders
    or compact .json files, separated by ``os.pathsep``; one with the name and version of a shipped
    package replaces it).  ``FHIR_TARGET_PROFILES`` (off | meta | validate, default off) sets what
    a Reference's target profiles require of a target found through the resolver passed to
    ``validate``.  Built once per process; ``warm_up()`` it at start."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                configured = packages_from_env(os.environ.get("FHIR_PACKAGES"))
                mode = os.environ.get("FHIR_TARGET_PROFILES", "off")
                if mode not in ("off", "meta", "validate"):
                    raise ValueError(f"FHIR_TARGET_PROFILES must be off, meta or validate, not {mode!r}")
                _default = ProfileValidator(
                    merge_packages(shipped_packages(), configured),
                    target_profiles=mode,  # type: ignore[arg-type]
                )
    return _default
