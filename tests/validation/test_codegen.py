"""Generated code against what it replaces: the plan walk, slicing and value tests turned into Python
(plan_codegen) against the interpreted walk, and the FHIRPath compiler's short forms against its
general code.  Same inputs, same issues."""

from __future__ import annotations

import copy
import itertools
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fhir_server.model.facts import get_facts
from fhir_server.validation import validator as validator_module
from fhir_server.validation.checks import pattern_check
from fhir_server.validation.discriminators import (
    all_of,
    any_of,
    never,
    type_matcher,
    value_matcher,
)
from fhir_server.validation.fhirpath_native import NativeCompiler
from fhir_server.validation.issues import ProfileIssue
from fhir_server.validation.plan import Ctx, Member, Node, Slice, Slicing, run
from fhir_server.validation.plan_codegen import WalkCompiler
from fhir_server.validation.validator import ProfileValidator, shipped_packages
from tests.validation.corpus import VARIANTS
from tests.validation.data import US_CORE, inferno_entries, needs_shared

Verdicts = list[tuple[str, ...]]


def _issues(issues: list[ProfileIssue]) -> Verdicts:
    # sorted: the interpreted walk visits members in the value's order, generated code in the
    # plan's order for nodes with few members
    return sorted(
        (i.severity, i.code, i.expression, i.profile, i.element, i.key, i.diagnostics) for i in issues
    )


# ------------------------------------------------------------------------------------------------
# The whole validator, generated and interpreted, on the corpus and on broken copies of it


@pytest.fixture(scope="module")
def interpreted() -> ProfileValidator:
    v = ProfileValidator(shipped_packages(), generate=False)
    v.warm_up()
    return v


def test_an_interpreted_validator_generates_no_code(interpreted: ProfileValidator) -> None:
    assert interpreted.compiler.walks.generated == 0
    sd = interpreted.conformance.sd(US_CORE + "us-core-patient")
    assert sd is not None and interpreted.compiler.plan(sd).fn is None


def _mutations(r: dict[str, Any], rng: random.Random) -> Iterator[dict[str, Any]]:
    """Broken copies that reach the error paths: members dropped, repeated, reordered, emptied,
    nulled, turned into the wrong JSON type; random edits deeper down."""
    for k in [k for k in r if k != "resourceType"]:
        v = r[k]
        m = copy.deepcopy(r)
        del m[k]
        yield m
        for wrong in ([], None, {}, "x"):
            m = copy.deepcopy(r)
            m[k] = wrong
            yield m
        if isinstance(v, list) and v:
            yield {**copy.deepcopy(r), k: copy.deepcopy(v + v)}
            yield {**copy.deepcopy(r), k: copy.deepcopy([None, *reversed(v), v[0]])}
            yield {**copy.deepcopy(r), k: copy.deepcopy(v[0])}
        elif isinstance(v, dict):
            yield {**copy.deepcopy(r), k: [copy.deepcopy(v), copy.deepcopy(v)]}
    junk: list[Any] = [None, [], {}, "x", 1, True, [None], [[]], {"coding": {"code": ["x"]}},
                       {"coding": [{"system": {"a": 1}, "code": "x"}, "y"]},
                       {"url": "http://example.org/x", "valueString": "y"}]  # fmt: skip
    for _ in range(8):
        m = copy.deepcopy(r)
        node: Any = m
        for _ in range(8):  # walk down to a random place, change it there
            if isinstance(node, dict) and node:
                key = rng.choice(sorted(node))
                if isinstance(node[key], (dict, list)) and node[key] and rng.random() < 0.7:
                    node = node[key]
                    continue
                node[key] = copy.deepcopy(rng.choice(junk))
            elif isinstance(node, list) and node:
                i = rng.randrange(len(node))
                if isinstance(node[i], (dict, list)) and node[i] and rng.random() < 0.7:
                    node = node[i]
                    continue
                node.insert(rng.randrange(len(node) + 1), copy.deepcopy(rng.choice([*node, *junk])))
            break
        yield m


def _corpus() -> Iterator[tuple[str, dict[str, Any], list[str] | None]]:
    rng = random.Random(6)
    for n, (name, index, r) in enumerate(inferno_entries()):
        yield f"{name}#{index}", r, None
        if n % 7 == 0:  # every resource type, most profiles; all would take too long
            for k, m in enumerate(_mutations(r, rng)):
                yield f"{name}#{index}~{k}", m, None
    for variant in VARIANTS:
        yield variant.name, variant.broken(), [variant.profile]
        for k, m in enumerate(_mutations(variant.broken(), rng)):
            yield f"{variant.name}~{k}", m, [variant.profile]


@needs_shared
def test_generated_and_interpreted_plans_report_the_same_issues(
    shipped: ProfileValidator, interpreted: ProfileValidator
) -> None:
    differ = []
    cases = 0
    for name, r, profiles in _corpus():
        for ms in (True, False):
            cases += 1
            generated = _issues(shipped.validate(r, profiles, structural=False, must_support=ms))
            if generated != _issues(interpreted.validate(r, profiles, structural=False, must_support=ms)):
                differ.append((name, ms))
    assert cases > 10000
    assert differ == []


# ------------------------------------------------------------------------------------------------
# Slicing: every rule and discriminator shape, generated and interpreted

PROFILE = "http://example.org/fhir/StructureDefinition/sliced|1"
CC_A = {"coding": [{"system": "urn:s", "code": "a"}]}
CC_B = {"coding": [{"system": "urn:s", "code": "b"}, {"system": "urn:t", "code": "x"}], "text": "b"}


class _Host:
    def conforms(self, profile: str, value: Any, scope: str, ctx: Ctx) -> bool | None:
        return None

    def check_target(self, reference: str, targets: Any, path: Any, ctx: Ctx, node: Node) -> None:
        return None


def _leaf(eid: str, pattern: Any) -> Node:
    node = Node(PROFILE, eid)
    node.checks = (pattern_check(pattern, node, eid),)
    node.done = True
    node.seal()
    return node


def _plan(rules: str, ordered: bool) -> Node:
    """An Observation whose category, component, identifier and note are sliced by each kind of
    discriminator the generator knows (and a few it leaves to the matcher)."""
    root = Node(PROFILE, "Observation")
    base = Node(PROFILE, "Observation.category")  # items no slice takes: the unsliced rules
    base.checks = (pattern_check({"text": "t"}, base, "Observation.category"),)
    base.done = True
    base.seal()
    specs: dict[str, list[tuple[str, Any, int, int, bool, Node | None]]] = {
        "category": [  # a pattern on $this (the slice node repeats it), and a member's pattern
            ("a", value_matcher((), CC_A, False), 1, 1, True, _leaf("Observation.category:a", CC_A)),
            ("b", value_matcher(("coding",), CC_B["coding"][0], False), 0, 1, False, None),
            ("c", any_of([value_matcher(("text",), "c", True), value_matcher(("text",), "cc", True)]), 0, -1,
             True, _leaf("Observation.category:c", {"text": "c"})),
        ],
        "component": [  # a path through members, all of several, one the generator calls
            ("sys", value_matcher(("code", "coding", "code"), "1", True), 1, 2, False, None),
            ("dia", all_of([value_matcher(("code", "coding", "code"), "2", True),
                            type_matcher(("value[x]",), frozenset(("Quantity",)))]), 0, 1, True, None),
            ("none", never, 0, -1, False, None),
        ],
        "identifier": [  # a value on one member; a pattern with a list and a number
            ("mrn", value_matcher(("system",), "urn:mrn", True), 1, 1, True, None),
            ("num", value_matcher((), {"period": {"start": "2020"}, "type": {"coding": [{"code": "n"}]},
                                       "rank": 1}, False), 0, 1, False, None),
            # an empty pattern matches any value, so what counts as a value shows (nulls do not)
            ("any", value_matcher(("assigner",), [], False), 0, 1, False, None),
            ("deep", value_matcher(("type", "coding"), [], False), 0, -1, True, None),
        ],
    }  # fmt: skip
    for name, slices in specs.items():
        member = Member(name, base if name == "category" else None, root, f"Observation.{name}")
        member.slicing = Slicing(
            tuple(Slice(n, m, lo, hi, node, f"Observation.{name}:{n}", ms) for n, m, lo, hi, ms, node in slices),
            rules, ordered, base if name == "category" else None, f"Observation.{name}", root,
        )  # fmt: skip
        root.members[name] = member
    root.done = True
    root.seal()
    return root


def _sliced_resources() -> Iterator[dict[str, Any]]:
    cats: list[Any] = [
        CC_A,
        CC_B,
        {"text": "c"},
        {"text": "cc"},
        {"text": "t"},
        {"text": "u"},
        None,
        "x",
        [CC_A],
    ]
    comps: list[Any] = [
        {"code": {"coding": [{"code": "1"}]}},
        {"code": {"coding": [{"code": "2"}]}, "valueQuantity": {"value": 1}},
        {"code": {"coding": [{"code": "2"}]}, "valueString": "x"},
        {"code": {"coding": [{"code": ["1"]}, None]}},
        {"code": [{"coding": {"code": "1"}}]},
        {"code": {"coding": "1"}},
        [{"code": {"coding": [{"code": "1"}]}}],
        None,
    ]
    ids: list[Any] = [
        {"system": "urn:mrn", "value": "1"},
        {"system": ["urn:mrn"]},
        {"rank": 1, "period": {"start": "2020", "end": "2021"}, "type": {"coding": [{"code": "x"}, {"code": "n"}]}},
        {"rank": 1.0, "period": {"start": "2020"}, "type": {"coding": {"code": "n"}}},
        {"rank": "1", "period": {"start": "2020"}, "type": {"coding": [{"code": "n"}]}},
        {"system": "urn:other"},
        {"assigner": [None], "type": {"coding": [None]}},
        {"assigner": {}, "type": [{"coding": None}, {"coding": {}}]},
    ]  # fmt: skip
    rng = random.Random(3)
    for pool, key in ((cats, "category"), (comps, "component"), (ids, "identifier")):
        for n in range(4):
            for items in itertools.permutations(pool, n):
                yield {"resourceType": "Observation", key: list(items)}
        for item in pool:
            yield {"resourceType": "Observation", key: item}  # one value, not an array
    for _ in range(300):
        yield {"resourceType": "Observation", "category": rng.sample(cats, rng.randrange(5)),
               "component": rng.sample(comps, rng.randrange(5)), "identifier": rng.sample(ids, rng.randrange(4))}  # fmt: skip


def _walk(plan: Node, r: Any, ms: bool) -> list[ProfileIssue]:
    ctx = Ctx(r, _Host(), ms)
    run(plan, r, (None, "Observation", -1), ctx)
    return ctx.issues


@pytest.mark.parametrize(("rules", "ordered"), [("open", False), ("closed", True), ("openAtEnd", False),
                                                 ("openAtEnd", True), ("closed", False)])  # fmt: skip
def test_generated_slicing_reports_what_the_interpreted_one_does(rules: str, ordered: bool) -> None:
    generated, interpreted = _plan(rules, ordered), _plan(rules, ordered)
    WalkCompiler().compile_reachable(generated)
    assert generated.fn is not None and interpreted.fn is None
    assert all(m.slicing is not None and m.slicing.fn is not None for m in generated.members.values())
    seen: set[tuple[str, str]] = set()
    cases = 0
    for r in _sliced_resources():
        for ms in (True, False):
            mine = _walk(generated, r, ms)
            assert _issues(mine) == _issues(_walk(interpreted, r, ms)), r
            seen |= {(i.code, i.diagnostics.split(": ", 1)[-1].split(" ")[0]) for i in mine}
            cases += 1
    assert cases > 500
    # every kind of slicing issue came up
    assert {("required", "slice"), ("structure", "slice"), ("informational", "must-support"),
            ("value", "the")} <= seen  # fmt: skip
    if rules == "closed":
        assert ("structure", "this") in seen
    if ordered:
        assert any(
            "out of order" in i.diagnostics for r in _sliced_resources() for i in _walk(generated, r, False)
        )
    if rules == "openAtEnd":
        assert ("structure", "items") in seen


def test_the_generated_slicing_is_what_slicing_run_calls() -> None:
    issues = []
    for generate in (True, False):
        plan = _plan("closed", True)
        if generate:
            WalkCompiler().compile_reachable(plan)
        sl = plan.members["category"].slicing
        assert sl is not None and (sl.fn is not None) is generate
        ctx = Ctx({}, _Host(), True)
        sl.run([CC_B, {"text": "u"}], (None, "Observation", -1), "category", True, {}, ctx)
        issues.append([(i.code, i.expression, i.element) for i in ctx.issues])
    assert (
        issues[0]
        == issues[1]
        == [
            ("structure", "Observation.category[1]", "Observation.category"),  # closed: no slice takes it
            ("value", "Observation.category[1]", "Observation.category"),  # the unsliced element's rules
            ("required", "Observation.category", "Observation.category:a"),
            ("informational", "Observation.category", "Observation.category:c"),
        ]
    )


# ------------------------------------------------------------------------------------------------
# Value tests (fixed and pattern values) generated from their shape

PATTERNS: list[Any] = [
    "a",
    {"system": "urn:s", "code": "a"},
    {"coding": [{"system": "urn:s", "code": "a"}]},
    {"coding": [{"system": "urn:s"}, {"code": "b"}], "text": "t"},
    {"period": {"start": "2020", "end": {"x": "y"}}, "type": {"coding": [{"code": "n"}]}},
    {"value": 1, "flag": True, "items": ["a", 2, {"k": "v"}]},
    {"nested": [[{"a": "b"}]]},
    {"empty": {}},
    {"none": []},
]
VALUES: list[Any] = [
    None, "a", "b", 1, 1.0, True, [], {}, ["a"], [None],
    {"system": "urn:s", "code": "a"}, {"system": "urn:s", "code": "a", "display": "A"}, {"system": "urn:s"},
    {"system": ["urn:s"], "code": "a"}, {"system": None, "code": "a"},
    {"coding": [{"system": "urn:s", "code": "a"}]}, {"coding": {"system": "urn:s", "code": "a"}},
    {"coding": [None, "x", {"system": "urn:s", "code": "a"}]}, {"coding": []}, {"coding": [{"system": "urn:s"}]},
    {"coding": [{"system": "urn:s"}, {"code": "b"}], "text": "t"}, {"coding": [{"system": "urn:s", "code": "b"}], "text": "t"},
    {"period": {"start": "2020", "end": {"x": "y", "z": 1}}, "type": {"coding": [{"code": "m"}, {"code": "n"}]}},
    {"period": {"start": "2020", "end": {"x": "z"}}, "type": {"coding": [{"code": "n"}]}},
    {"period": [{"start": "2020", "end": {"x": "y"}}], "type": {"coding": [{"code": "n"}]}},
    {"value": 1.0, "flag": True, "items": [{"k": "v", "l": 1}, 2, "a"]}, {"value": "1", "flag": True, "items": ["a", 2, {"k": "v"}]},
    {"value": 1, "flag": 1, "items": ["a", 2, {"k": "v"}]}, {"nested": [[{"a": "b"}]]}, {"nested": [{"a": "b"}]},
    {"nested": [[{"a": "c"}], [{"a": "b", "c": "d"}]]}, {"empty": {}}, {"empty": {"x": 1}}, {"empty": []}, {"none": []}, {"none": 1},
]  # fmt: skip


@pytest.mark.parametrize("pattern", PATTERNS, ids=range(len(PATTERNS)))
def test_generated_pattern_tests_agree_with_the_closures(pattern: Any) -> None:
    generated, interpreted = _leaf("X", pattern), _leaf("X", pattern)
    WalkCompiler().compile_reachable(generated)
    assert generated.fn is not None
    for value in VALUES:
        for item in (value, [value]):
            mine = _walk(generated, item, False)
            assert _issues(mine) == _issues(_walk(interpreted, item, False)), item


# ------------------------------------------------------------------------------------------------
# FHIRPath: the short forms against the general code

EXPRESSIONS = [
    ("start.hasValue()", "Period"),
    ("start.hasValue().not()", "Period"),
    ("start.hasValue().not() or end.hasValue().not() or (start <= end)", "Period"),
    ("start <= end", "Period"),
    ("end > start", "Period"),
    ("start.exists()", "Period"),
    ("start.empty() and end.exists()", "Period"),
    ("start.exists() implies end.exists()", "Period"),
    ("start.exists() xor end.exists()", "Period"),
    ("(start.exists() or end.hasValue()).not()", "Period"),
    ("start.exists() and (start <= end)", "Period"),
    ("extension.exists() or id.hasValue()", "Period"),
    ("value.exists()", "Observation"),
    ("dataAbsentReason.empty() or value.empty()", "Observation"),
    ("status.hasValue() and code.exists()", "Observation"),
    ("issued.exists() and issued.hasValue().not()", "Observation"),
    ("component.exists() or (status = 'final')", "Observation"),
    ("text.`div`.exists()", "Observation"),
    ("code.coding.code.exists()", "Observation"),
    ("component.code.coding.empty() or value.exists()", "Observation"),
    ("code.coding.exists().not()", "Observation"),
]
SHAPES: list[Any] = [
    "2020", "2020-01", "2020-01-01T10:00:00Z", "2020-01-01T09:00:00+02:00", None, [], ["2021"], [None], ["a", "b"],
    {"x": 1}, 5, True,
]  # fmt: skip


def _periods() -> Iterator[dict[str, Any]]:
    for start, end in itertools.product(SHAPES, SHAPES):
        p: dict[str, Any] = {}
        if start is not None or end == 5:  # "start": null only now and then
            p["start"] = start
        if end is not None:
            p["end"] = end
        yield p
        yield {**p, "_start": {"extension": []}}
        yield {**p, "_start": [], "_end": [{}], "extension": [{}]}
    yield {"_start": [None, {}]}
    yield {"id": "x"}
    yield {"id": None, "extension": []}


def _observations() -> Iterator[dict[str, Any]]:
    values: list[Any] = [None, [], {}, {"value": 1}, "x", [None], [{"value": 1}]]
    for key, value in itertools.product(("valueQuantity", "valueString", "dataAbsentReason", "issued", "code"),
                                        values):  # fmt: skip
        yield {"resourceType": "Observation", "status": "final", key: value}
        yield {"resourceType": "Observation", "_status": {}, key: value, "_issued": [{}]}
    yield {"resourceType": "Observation", "text": {"div": "<div/>"}, "component": []}
    yield {"resourceType": "Observation", "text": [{"div": None}, {"_div": {}}], "component": [{}]}
    yield {"resourceType": "Observation", "text": {"status": "x"}, "valueString": "", "status": []}
    codes: list[Any] = [None, [], {}, {"coding": None}, {"coding": []}, {"coding": [None]}, {"coding": {"code": "1"}},
                        {"coding": [{"code": None, "_code": {}}]}, {"coding": [{"_code": []}, {"code": ["1"]}]},
                        [{"coding": [{}]}, {"coding": [{"code": "1"}]}], [None, {"coding": [{"display": "x"}]}]]  # fmt: skip
    for code in codes:
        yield {"resourceType": "Observation", "code": code, "component": [{"code": code}]}
        yield {
            "resourceType": "Observation",
            "code": code,
            "component": [None, {"code": code}, {}],
            "valueString": "x",
        }


@pytest.mark.parametrize(("expr", "context"), EXPRESSIONS)
def test_fhirpath_short_forms_give_what_the_general_code_gives(expr: str, context: str) -> None:
    facts = get_facts()

    def member_of(value_set: str, system: str | None, code: str) -> bool | None:
        return None

    short = NativeCompiler(facts, member_of)
    general = NativeCompiler(facts, member_of, peepholes=False)
    f, g = short.compile(expr, context, "Observation"), general.compile(expr, context, "Observation")
    p, q = (
        short.compile_predicate(expr, context, "Observation"),
        general.compile_predicate(expr, context, "Observation"),
    )
    for value in _periods() if context == "Period" else _observations():
        assert f(value, value) == g(value, value), value
        assert p(value, value) is q(value, value), value


def test_fhirpath_functions_are_shared_by_contexts_that_compile_alike() -> None:
    native = NativeCompiler(get_facts(), lambda vs, s, c: None)
    patient = native.compile_predicate("text.`div`.exists()", "Patient", "Patient")
    assert native.compile_predicate("text.`div`.exists()", "Observation", "Observation") is patient
    final = native.compile_predicate("status = 'final'", "Observation", "Observation")
    amended = native.compile_predicate("status = 'amended'", "Observation", "Observation")
    assert final is not amended  # the same code, other constants
    obs = {"status": "amended"}
    assert (final(obs, obs), amended(obs, obs)) == (False, True)


# ------------------------------------------------------------------------------------------------
# The validator's memory of what declared profiles resolve to


def _patient(profiles: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "meta": {"profile": profiles}, "name": [{"family": "Doe"}]}


def test_resolved_profiles_are_remembered_per_type_and_list(shipped: ProfileValidator) -> None:
    p = _patient([US_CORE + "us-core-patient", "http://example.org/unknown"])
    first = shipped.validate(p)
    assert ("Patient", US_CORE + "us-core-patient", "http://example.org/unknown") in shipped._steps
    assert shipped.validate(copy.deepcopy(p)) == first
    assert any(i.code == "not-supported" for i in first) and any(i.code == "required" for i in first)
    # the same list on another type: other issues
    obs = {**p, "resourceType": "Observation"}
    assert any(i.code == "invalid" and i.expression == "Observation" for i in shipped.validate(obs))


def test_unhashable_declarations_are_resolved_each_time(shipped: ProfileValidator) -> None:
    p = _patient([{"not": "a url"}, US_CORE + "us-core-patient", ["x"]])
    size = len(shipped._steps)
    issues = shipped.validate(p, structural=False)
    assert len(shipped._steps) == size
    assert _issues(issues) == _issues(
        shipped.validate(_patient([US_CORE + "us-core-patient"]), structural=False)
    )


def test_the_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    v = ProfileValidator(shipped_packages())
    monkeypatch.setattr(validator_module, "_STEPS_LIMIT", 2)
    for n in range(5):
        v.validate(_patient([f"http://example.org/p{n}"]))
    assert len(v._steps) == 2
    assert [i.diagnostics for i in v.validate(_patient(["http://example.org/p4"]))] == [
        "profile http://example.org/p4 is not known to this server, so it was not checked"]  # fmt: skip


def test_a_profile_that_fails_to_compile_is_reported_and_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    v = ProfileValidator(shipped_packages())
    original: Callable[..., Any] = v._resolve
    calls: list[str] = []

    def failing_once(url: str) -> Any:
        calls.append(url)
        if len(calls) == 1:
            raise ValueError("broken")
        return original(url)

    monkeypatch.setattr(v, "_resolve", failing_once)
    p = _patient([US_CORE + "us-core-patient"])
    [issue] = [i for i in v.validate(p) if i.code == "exception"]
    assert issue.diagnostics == "profile validation failed: ValueError: broken"
    assert not [i for i in v.validate(p) if i.code == "exception"]
    assert calls == [US_CORE + "us-core-patient"] * 2


def test_unknown_profiles_claimed_by_clients_are_not_remembered() -> None:
    """meta.profile is client input: distinct unknown URLs (each reported as not checked) must not
    grow the validator's memory, while known profiles stay compiled once."""
    v = ProfileValidator(shipped_packages())
    known = US_CORE + "us-core-patient"
    before = len(v._profiles)
    for i in range(300):
        res = {"resourceType": "Patient", "gender": "male",
               "meta": {"profile": [f"http://example.org/unknown/{i}", f"http://example.org/other/{i}"]}}
        issues = v.validate(res, must_support=False)
        assert any(i.code == "not-supported" for i in issues)
    assert len(v._profiles) == before
    assert len(v._derived) <= validator_module._STEPS_LIMIT
    v.validate({"resourceType": "Patient", "meta": {"profile": [known]}}, must_support=False)
    assert known in v._profiles and len(v._profiles) > before
