"""The SMART scope language: parsing (v1 and v2), the non-resource tokens, coverage and narrowing."""

from __future__ import annotations

import random

import pytest

from fhir_server.auth.scopes import Scope, ScopeError, ScopeSet, make_scope, parse_scope, parse_scopes

VITALS = "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs"
LAB = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"


# -- parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "perms"),
    [
        ("patient/Observation.read", "rs"),
        ("patient/Observation.write", "cud"),
        ("patient/Observation.*", "cruds"),
        ("user/*.read", "rs"),
        ("system/*.*", "cruds"),
    ],
)
def test_v1_permissions(token: str, perms: str) -> None:
    s = parse_scope(token)
    assert s.permissions == frozenset(perms)
    assert s.version == 1
    assert s.params == ()
    assert s.raw == token


@pytest.mark.parametrize("perms", ["c", "r", "u", "d", "s", "rs", "cud", "cruds", "cr", "rus", "ds"])
def test_v2_permissions(perms: str) -> None:
    s = parse_scope(f"user/Condition.{perms}")
    assert s == Scope("user", "Condition", frozenset(perms), (), 2, f"user/Condition.{perms}")


def test_context_and_wildcard_type() -> None:
    s = parse_scope("system/*.cruds")
    assert (s.context, s.resource_type) == ("system", "*")


def test_granular_query() -> None:
    s = parse_scope(f"patient/Observation.rs?category={VITALS}")
    assert s.params == (("category", VITALS),)
    assert s.version == 2
    assert s.query == f"category={VITALS}"


def test_granular_query_is_percent_decoded_and_keeps_every_parameter() -> None:
    s = parse_scope("patient/Condition.rs?category=urn%3Ax%7Cy&clinical-status=active")
    assert s.params == (("category", "urn:x|y"), ("clinical-status", "active"))


@pytest.mark.parametrize(
    "token",
    [
        "patient/Observation.sr",  # letters out of order
        "patient/Observation.rr",  # a letter twice
        "patient/Observation.rsx",
        "patient/Observation.",  # no permissions
        "patient/Observation",  # no dot
        "patient/Observation.readwrite",
        "patient/Observation.Read",
        "patient/Foo.rs",  # not a resource type
        "patient/observation.rs",  # case matters
        "patient/MedicinalProduct.rs",  # R4, but not served
        "patient/.rs",
        "patient/Observation/1.rs",
        "user/Observation.read?category=x",  # v1 with a query
        "user/Observation.*?category=x",
        "patient/Observation.rs?",  # empty query
        "patient/Observation.rs?category",  # no value
        "patient/Observation.rs?category=",
        "patient/Observation.rs?=x",
        "patient/Observation.rs?a=1&&b=2",
        "system/",
    ],
)
def test_invalid_resource_scopes(token: str) -> None:
    with pytest.raises(ScopeError) as err:
        parse_scope(token)
    assert token in str(err.value)
    assert err.value.token == token
    assert isinstance(err.value, ValueError)


def test_parse_scopes_names_the_bad_token() -> None:
    with pytest.raises(ScopeError, match="'patient/Observation.sr'"):
        parse_scopes("openid patient/Patient.rs patient/Observation.sr launch")


def test_non_resource_tokens() -> None:
    text = ("openid fhirUser profile launch launch/patient launch/encounter offline_access online_access "
            "Patient/Observation.read clinic/Observation.rs custom:thing")
    s = parse_scopes(text)
    assert s.resource_scopes == ()
    for token in text.split():
        assert s.has(token)
    assert s.other == ("Patient/Observation.read", "clinic/Observation.rs", "custom:thing")
    assert s.non_resource == tuple(text.split())
    assert not s.has("patient/Observation.rs")


def test_str_is_the_original_order_deduplicated() -> None:
    s = parse_scopes("  launch/patient patient/Observation.rs  openid patient/Observation.rs launch/patient\t")
    assert str(s) == "launch/patient patient/Observation.rs openid"
    assert len(s) == 3
    assert list(s) == ["launch/patient", "patient/Observation.rs", "openid"]
    assert [x.raw for x in s.resource_scopes] == ["patient/Observation.rs"]


def test_equivalent_spellings_are_different_tokens() -> None:
    # v1 read and v2 rs grant the same, but the token text is what a client asked for.
    s = parse_scopes("patient/Observation.read patient/Observation.rs")
    assert len(s.resource_scopes) == 2


def test_empty_and_equality() -> None:
    assert str(parse_scopes("")) == ""
    assert len(parse_scopes("   ")) == 0
    assert parse_scopes("a b") == parse_scopes("b a")
    assert parse_scopes("a b") != parse_scopes("a")
    assert hash(parse_scopes("a b")) == hash(parse_scopes("b a"))


def test_make_scope() -> None:
    assert make_scope("patient", "*", frozenset("rs"), v1=True).raw == "patient/*.read"
    assert make_scope("patient", "*", frozenset("rs")).raw == "patient/*.rs"
    assert make_scope("user", "Observation", frozenset("cu"), v1=True).raw == "user/Observation.cu"
    src = parse_scope(f"patient/Observation.rs?category={VITALS}")
    built = make_scope("patient", "Observation", frozenset("r"), src, v1=True)
    assert built.raw == f"patient/Observation.r?category={VITALS}"
    assert built.params == src.params
    assert parse_scope(built.raw) == built


# -- allows -------------------------------------------------------------------------------------


def test_allows_by_context_type_and_permission() -> None:
    s = parse_scopes(f"patient/Observation.rs?category={VITALS} user/*.c system/Patient.write")
    assert s.allows("patient", "Observation", "r")  # the query is ignored
    assert s.allows("patient", "Observation", "s")
    assert not s.allows("patient", "Observation", "c")
    assert not s.allows("patient", "Condition", "r")
    assert s.allows("user", "Condition", "c")
    assert not s.allows("user", "Condition", "r")
    assert s.allows("system", "Patient", "d")
    assert not s.allows("system", "Observation", "d")
    assert s.allows(None, "Encounter", "c")
    assert s.allows(None, "Observation", "r")
    assert not s.allows(None, "Encounter", "r")


# -- covers (refresh-token narrowing) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("granted", "asked", "expected"),
    [
        ("patient/*.rs openid", "patient/Observation.rs", True),
        ("patient/*.rs", "patient/Observation.r", True),
        ("patient/*.rs", "patient/*.rs", True),
        ("patient/*.read", "patient/Observation.rs", True),  # v1 and v2 compare by permissions
        ("patient/*.cruds", "patient/Observation.write", True),
        ("patient/*.rs", "patient/Observation.cruds", False),  # wider permissions
        ("patient/Observation.rs", "patient/*.rs", False),  # wider type
        ("patient/Observation.rs", "patient/Condition.rs", False),
        ("patient/*.rs", "user/Observation.rs", False),  # another context
        ("user/*.rs", "patient/Observation.rs", False),
        ("patient/Observation.rs patient/Observation.cud", "patient/Observation.cruds", True),  # a union
        ("patient/Observation.rs patient/*.cud", "patient/Observation.cruds", True),
        ("patient/Observation.rs", f"patient/Observation.rs?category={VITALS}", True),
        (f"patient/Observation.rs?category={VITALS}", f"patient/Observation.r?category={VITALS}", True),
        (f"patient/Observation.rs?category={VITALS}", f"patient/Observation.rs?category={LAB}", False),
        (f"patient/Observation.rs?category={VITALS}", "patient/Observation.rs", False),
        (f"patient/*.rs?category={VITALS}", f"patient/Observation.rs?category={VITALS}", True),
        (f"patient/Observation.rs?category={VITALS}&status=final",
         f"patient/Observation.rs?status=final&category={VITALS}", True),  # order does not matter
        (f"patient/Observation.rs?category={VITALS}&status=final",
         f"patient/Observation.rs?category={VITALS}", False),
        ("patient/*.rs offline_access", "offline_access patient/Patient.rs", True),
        ("patient/*.rs", "offline_access patient/Patient.rs", False),  # non-resource tokens verbatim
        ("launch/patient", "launch", False),
        ("custom:x openid", "custom:x", True),
        ("openid", "", True),
        ("", "", True),
    ],
)
def test_covers(granted: str, asked: str, expected: bool) -> None:
    assert parse_scopes(granted).covers(parse_scopes(asked)) is expected


def test_every_set_covers_itself_and_its_restrictions() -> None:
    s = parse_scopes(f"openid patient/*.rs user/Observation.cud?category={VITALS}")
    assert s.covers(s)
    assert s.covers(parse_scopes("openid"))
    assert not parse_scopes("openid").covers(s)


# -- restrict_to -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("asked", "allowed", "expected"),
    [
        ("patient/*.cruds", "patient/*.rs", "patient/*.rs"),
        ("patient/*.*", "patient/*.read", "patient/*.read"),  # a v1 request keeps v1 words
        ("patient/*.*", "patient/*.rs", "patient/*.read"),
        ("patient/Observation.write", "patient/*.cu", "patient/Observation.cu"),  # no v1 word for cu
        ("patient/Observation.rs", "patient/*.read", "patient/Observation.rs"),  # covered: verbatim
        ("patient/Observation.read", "patient/*.rs", "patient/Observation.read"),
        ("patient/*.rs", "patient/Observation.rs patient/Condition.r",
         "patient/Observation.rs patient/Condition.r"),  # wildcard narrowed to the registered types
        ("patient/*.rs", "patient/*.r patient/Observation.rs", "patient/*.r patient/Observation.rs"),
        ("patient/*.rs", "patient/*.r patient/*.s", "patient/*.rs"),  # covered by a union: verbatim
        ("patient/Observation.cruds", "patient/Observation.r patient/*.s", "patient/Observation.rs"),
        ("user/Observation.rs", "patient/*.rs", ""),  # another context
        ("patient/Observation.cud", "patient/*.rs", ""),  # no permission in common
        ("patient/Observation.rs", f"patient/Observation.rs?category={VITALS}",
         f"patient/Observation.rs?category={VITALS}"),  # the allowed query is kept
        (f"patient/Observation.cruds?category={VITALS}", "patient/*.rs",
         f"patient/Observation.rs?category={VITALS}"),  # the asked query is kept
        (f"patient/Observation.rs?category={VITALS}", f"patient/Observation.rs?category={LAB}", ""),
        ("openid fhirUser launch/patient offline_access custom:x patient/*.rs",
         "openid launch/patient patient/*.read",
         "openid launch/patient patient/*.rs"),
        ("patient/Observation.rs patient/*.rs", "patient/*.rs", "patient/Observation.rs patient/*.rs"),
    ],
)
def test_restrict_to(asked: str, allowed: str, expected: str) -> None:
    result = parse_scopes(asked).restrict_to(parse_scopes(allowed))
    assert str(result) == expected


POOL = [
    "patient/*.rs", "patient/*.cruds", "patient/*.read", "patient/*.*", "patient/*.write",
    "patient/Observation.rs", "patient/Observation.cud", "patient/Observation.read", "patient/Condition.r",
    "patient/Condition.s", "user/*.rs", "user/Observation.cruds", "system/*.r", "system/Patient.cud",
    f"patient/Observation.rs?category={VITALS}", f"patient/Observation.cruds?category={LAB}",
    f"patient/*.rs?category={VITALS}", "openid", "launch/patient", "offline_access", "custom:x",
]


def test_restrict_to_result_is_covered_by_both_sides() -> None:
    rng = random.Random(20240601)
    for _ in range(2000):
        asked = ScopeSet(rng.sample(POOL, rng.randint(0, 6)))
        allowed = ScopeSet(rng.sample(POOL, rng.randint(0, 6)))
        result = asked.restrict_to(allowed)
        assert allowed.covers(result), (asked, allowed, result)
        assert asked.covers(result), (asked, allowed, result)
        if allowed.covers(asked):
            assert str(result) == str(asked)
        # Every permission the two share on a concrete context and type survives.
        for ctx in ("patient", "user", "system"):
            for rt in ("Observation", "Condition", "Patient"):
                for p in "cruds":
                    plain = f"{ctx}/{rt}.{p}"
                    if asked.covers(ScopeSet([plain])) and allowed.covers(ScopeSet([plain])):
                        assert result.covers(ScopeSet([plain])), (asked, allowed, result, plain)
        assert str(result.restrict_to(allowed)) == str(result)
