"""Broken variants are rejected with the right issue; compact facts and official packages agree."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_server.validation.issues import ProfileIssue
from fhir_server.validation.validator import ProfileValidator
from tests.validation.corpus import VARIANTS, Variant
from tests.validation.data import inferno_entries, needs_shared

pytestmark = needs_shared


def test_the_corpus_has_at_least_60_variants() -> None:
    assert len(VARIANTS) >= 60
    assert len({v.name for v in VARIANTS}) == len(VARIANTS)


def _matches(issue: ProfileIssue, v: Variant) -> bool:
    e = v.expect
    return (
        issue.severity == e.severity
        and issue.code == e.code
        and issue.expression == e.expression
        and (not e.rule or e.rule in (issue.element, issue.key))
    )


@pytest.mark.parametrize("variant", VARIANTS, ids=[v.name for v in VARIANTS])
def test_variant_is_rejected_with_the_right_issue(shipped: ProfileValidator, variant: Variant) -> None:
    original = [i for i in shipped.validate(variant.original(), [variant.profile]) if i.is_error]
    assert original == [], "the unbroken resource must be valid"
    issues = shipped.validate(variant.broken(), [variant.profile])
    assert any(_matches(i, variant) for i in issues), "\n".join(map(repr, issues))


def _verdicts(v: ProfileValidator, resource: Any, profiles: list[str] | None) -> list[tuple[str, ...]]:
    return sorted(
        (i.severity, i.code, i.expression, i.profile, i.element, i.key, i.diagnostics)
        for i in v.validate(resource, profiles)
    )


def _cases(v: ProfileValidator) -> list[tuple[str, Any, list[str] | None]]:
    cases: list[tuple[str, Any, list[str] | None]] = []
    for name, index, r in inferno_entries():
        cases.append((f"{name}#{index}", r, None))
        for p in (r.get("meta") or {}).get("profile", []):
            if v.known(p + "|3.1.1"):
                cases.append((f"{name}#{index}@3.1.1", r, [p + "|3.1.1"]))
    cases += [(variant.name, variant.broken(), [variant.profile]) for variant in VARIANTS]
    return cases


def test_compact_facts_and_official_packages_give_the_same_verdicts(
    shipped: ProfileValidator, official: ProfileValidator
) -> None:
    cases = _cases(shipped)
    differ = [
        name
        for name, r, profiles in cases
        if _verdicts(shipped, r, profiles) != _verdicts(official, r, profiles)
    ]
    assert len(cases) > 1500
    assert differ == []
