"""Slice discriminators as matchers: does this item belong to that slice?

Built once per slice from the values the profile states at the discriminator path (fixed[x],
pattern[x], a required binding, types, profiles); each matcher then reads only that path of an item.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fhir_server.validation.checks import coded_member
from fhir_server.validation.plan import MATCH_SHAPES, Ctx, Matcher
from fhir_server.validation.terminology import Expansion
from fhir_server.validation.values import navigate, value_test


def never(item: Any, ctx: Ctx) -> bool:
    return False


MATCH_SHAPES[never] = ("never",)


def _shaped(match: Matcher, *shape: Any) -> Matcher:
    MATCH_SHAPES[match] = shape
    return match


def all_of(matchers: list[Matcher]) -> Matcher:
    if len(matchers) == 1:
        return matchers[0]

    def match(item: Any, ctx: Ctx) -> bool:
        for m in matchers:  # noqa: SIM110 (a loop: no generator per call on this hot path)
            if not m(item, ctx):
                return False
        return True

    return _shaped(match, "all", tuple(matchers))


def any_of(matchers: list[Matcher]) -> Matcher:
    if len(matchers) == 1:
        return matchers[0]

    def match(item: Any, ctx: Ctx) -> bool:
        for m in matchers:  # noqa: SIM110 (a loop: no generator per call on this hot path)
            if m(item, ctx):
                return True
        return False

    return _shaped(match, "any", tuple(matchers))


def value_matcher(segs: tuple[str, ...], expected: Any, exact: bool) -> Matcher:
    if len(segs) == 1 and isinstance(expected, str):
        key = segs[0]
        text = str.__str__(expected)
        return _shaped(lambda item, ctx: type(item) is dict and item.get(key) == text, "equals", key, text)
    test = value_test(expected, exact)
    if not segs:
        return _shaped(lambda item, ctx: test(item), "test", test)
    if _plain(segs):
        key = segs[0]

        def match(item: Any, ctx: Ctx) -> bool:  # navigate(item, (key,)) without the lists
            if type(item) is not dict:
                return type(item) is list and any(test(v) for v in navigate(item, segs))
            v = item.get(key)
            if v is None:
                return False
            if type(v) is list:
                for x in v:  # noqa: SIM110 (a loop: no generator per call on this hot path)
                    if x is not None and test(x):
                        return True
                return False
            return test(v)

        return _shaped(match, "member", key, test)
    return _shaped(lambda item, ctx: any(test(v) for v in navigate(item, segs)), "path", segs, test)


def _plain(segs: tuple[str, ...]) -> bool:
    """One member name: no "$this", no choice type."""
    return len(segs) == 1 and segs[0] != "$this" and not segs[0].endswith("[x]")


def projected_matcher(segs: tuple[str, ...], expected: list[Any]) -> Matcher:
    if not expected:
        return never
    tests = [value_test(e, False) for e in expected]
    return lambda item, ctx: all(any(t(v) for v in navigate(item, segs)) for t in tests)


def binding_matcher(
    segs: tuple[str, ...], exp: Expansion, cs_codes: Callable[[str], frozenset[str] | None]
) -> Matcher:
    if _plain(segs):
        key = segs[0]

        def match1(item: Any, ctx: Ctx) -> bool:  # navigate(item, (key,)) without the lists
            if type(item) is not dict:
                return type(item) is list and any(
                    coded_member(exp, v, cs_codes) is True for v in navigate(item, segs)
                )
            v = item.get(key)
            if v is None:
                return False
            if type(v) is list:
                for x in v:  # noqa: SIM110 (a loop: no generator per call on this hot path)
                    if x is not None and coded_member(exp, x, cs_codes) is True:
                        return True
                return False
            return coded_member(exp, v, cs_codes) is True

        return match1

    def match(item: Any, ctx: Ctx) -> bool:
        return any(coded_member(exp, v, cs_codes) is True for v in navigate(item, segs))

    return match


def type_matcher(segs: tuple[str, ...], codes: frozenset[str]) -> Matcher:
    def match(item: Any, ctx: Ctx) -> bool:
        if not segs:
            return type(item) is dict and item.get("resourceType") in codes
        *head, last = segs
        parents = navigate(item, tuple(head)) if head else [item]
        base = last[:-3] if last.endswith("[x]") else last
        for p in parents:
            if type(p) is dict:
                for k, v in p.items():
                    if k.startswith(base) and len(k) > len(base):
                        suffix = k[len(base) :]
                        if suffix[0].lower() + suffix[1:] in codes or suffix in codes:
                            return True
                    elif k == base and type(v) is dict and v.get("resourceType") in codes:
                        return True
        return False

    return match
