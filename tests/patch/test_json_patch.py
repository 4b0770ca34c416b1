"""RFC 6902 JSON Patch: the RFC's Appendix A examples, RFC 6901 pointers, and each failure's status."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from fhir_server.errors import FhirError
from fhir_server.model import jsonio
from fhir_server.model.jsonio import JsonDecimal
from fhir_server.patch.json_patch import apply_json_patch


def J(text: str) -> Any:
    """Parse as the server does, so 1.50 arrives as a JsonDecimal."""
    return jsonio.loads(text)


def patched(doc: dict[str, Any], patch: Any) -> dict[str, Any]:
    """Apply, and check on the way that the input was left as it was."""
    before = copy.deepcopy(doc)
    result = apply_json_patch(doc, patch)
    assert doc == before
    assert result is not doc
    return result


def failure(doc: dict[str, Any], patch: Any, status: int, code: str) -> str:
    before = copy.deepcopy(doc)
    with pytest.raises(FhirError) as info:
        apply_json_patch(doc, patch)
    assert doc == before
    err = info.value
    assert (err.status, err.issues[0].code) == (status, code), err.issues
    return err.issues[0].diagnostics


# -- RFC 6902 Appendix A -------------------------------------------------------------------------

APPENDIX_A = [
    (  # A.1 Adding an Object Member
        '{"foo": "bar"}',
        '[{"op": "add", "path": "/baz", "value": "qux"}]',
        '{"baz": "qux", "foo": "bar"}',
    ),
    (  # A.2 Adding an Array Element
        '{"foo": ["bar", "baz"]}',
        '[{"op": "add", "path": "/foo/1", "value": "qux"}]',
        '{"foo": ["bar", "qux", "baz"]}',
    ),
    (  # A.3 Removing an Object Member
        '{"baz": "qux", "foo": "bar"}',
        '[{"op": "remove", "path": "/baz"}]',
        '{"foo": "bar"}',
    ),
    (  # A.4 Removing an Array Element
        '{"foo": ["bar", "qux", "baz"]}',
        '[{"op": "remove", "path": "/foo/1"}]',
        '{"foo": ["bar", "baz"]}',
    ),
    (  # A.5 Replacing a Value
        '{"baz": "qux", "foo": "bar"}',
        '[{"op": "replace", "path": "/baz", "value": "boo"}]',
        '{"baz": "boo", "foo": "bar"}',
    ),
    (  # A.6 Moving a Value
        '{"foo": {"bar": "baz", "waldo": "fred"}, "qux": {"corge": "grault"}}',
        '[{"op": "move", "from": "/foo/waldo", "path": "/qux/thud"}]',
        '{"foo": {"bar": "baz"}, "qux": {"corge": "grault", "thud": "fred"}}',
    ),
    (  # A.7 Moving an Array Element
        '{"foo": ["all", "grass", "cows", "eat"]}',
        '[{"op": "move", "from": "/foo/1", "path": "/foo/3"}]',
        '{"foo": ["all", "cows", "eat", "grass"]}',
    ),
    (  # A.8 Testing a Value: Success
        '{"baz": "qux", "foo": ["a", 2, "c"]}',
        '[{"op": "test", "path": "/baz", "value": "qux"}, {"op": "test", "path": "/foo/1", "value": 2}]',
        '{"baz": "qux", "foo": ["a", 2, "c"]}',
    ),
    (  # A.10 Adding a Nested Member Object
        '{"foo": "bar"}',
        '[{"op": "add", "path": "/child", "value": {"grandchild": {}}}]',
        '{"foo": "bar", "child": {"grandchild": {}}}',
    ),
    (  # A.11 Ignoring Unrecognized Elements
        '{"foo": "bar"}',
        '[{"op": "add", "path": "/baz", "value": "qux", "xyz": 123}]',
        '{"foo": "bar", "baz": "qux"}',
    ),
    (  # A.14 ~ Escape Ordering
        '{"/": 9, "~1": 10}',
        '[{"op": "test", "path": "/~01", "value": 10}]',
        '{"/": 9, "~1": 10}',
    ),
    (  # A.16 Adding an Array Value
        '{"foo": ["bar"]}',
        '[{"op": "add", "path": "/foo/-", "value": ["abc", "def"]}]',
        '{"foo": ["bar", ["abc", "def"]]}',
    ),
]


@pytest.mark.parametrize(("doc", "patch", "expected"), APPENDIX_A,
                         ids=["A.1", "A.2", "A.3", "A.4", "A.5", "A.6", "A.7", "A.8", "A.10", "A.11", "A.14", "A.16"])
def test_appendix_a_successes(doc: str, patch: str, expected: str) -> None:
    assert patched(J(doc), J(patch)) == J(expected)


def test_a9_testing_a_value_error() -> None:
    message = failure(J('{"baz": "qux"}'), J('[{"op": "test", "path": "/baz", "value": "bar"}]'), 422, "processing")
    assert message == 'JSON Patch operation 0 (test \'/baz\'): test failed: /baz is "qux", not "bar"'


def test_a12_adding_to_a_nonexistent_target() -> None:
    message = failure(J('{"foo": "bar"}'), J('[{"op": "add", "path": "/baz/bat", "value": "qux"}]'),
                      422, "processing")
    assert "/baz does not exist" in message


def test_a13_invalid_document_with_op_twice_is_refused() -> None:
    # The JSON parser keeps the last duplicate, so this arrives as a remove of a missing member: still refused.
    patch = J('[{"op": "add", "path": "/baz", "value": "qux", "op": "remove"}]')
    with pytest.raises(FhirError):
        apply_json_patch(J('{"foo": "bar"}'), patch)


def test_a15_comparing_strings_and_numbers() -> None:
    failure(J('{"/": 9, "~1": 10}'), J('[{"op": "test", "path": "/~01", "value": "10"}]'), 422, "processing")


# -- pointers ------------------------------------------------------------------------------------


def test_escaped_tokens_and_the_empty_key() -> None:
    doc = J('{"a/b": 1, "m~n": 2, "": 3}')
    patch = [
        {"op": "replace", "path": "/a~1b", "value": 10},
        {"op": "replace", "path": "/m~0n", "value": 20},
        {"op": "replace", "path": "/", "value": 30},
        {"op": "add", "path": "/~0~1", "value": 40},
    ]
    assert patched(doc, patch) == {"a/b": 10, "m~n": 20, "": 30, "~/": 40}


def test_empty_pointer_is_the_whole_document() -> None:
    doc = {"resourceType": "Patient", "id": "a"}
    assert patched(doc, [{"op": "replace", "path": "", "value": {"resourceType": "Patient", "id": "b"}}]) == {
        "resourceType": "Patient", "id": "b"}
    assert patched(doc, [{"op": "add", "path": "", "value": {"x": 1}}]) == {"x": 1}
    assert patched(doc, [{"op": "test", "path": "", "value": {"id": "a", "resourceType": "Patient"}}]) == doc


def test_numeric_object_member_names_are_not_indexes() -> None:
    assert patched({"a": {"01": 1}}, [{"op": "replace", "path": "/a/01", "value": 2}]) == {"a": {"01": 2}}


@pytest.mark.parametrize("pointer", ["a", "a/b", "/a~2", "/a~", "#/a"])
def test_malformed_pointers_are_400(pointer: str) -> None:
    message = failure({"a": 1}, [{"op": "remove", "path": pointer}], 400, "invalid")
    assert message.startswith("JSON Patch operation 0")


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/a/01", "'01' is not a valid array index"),
        ("/a/-1", "'-1' is not a valid array index"),
        ("/a/+1", "'+1' is not a valid array index"),
        ("/a/1.0", "'1.0' is not a valid array index"),
        ("/a/\u0661", "is not a valid array index"),  # ARABIC-INDIC DIGIT ONE is no ASCII digit
        ("/a/2", "index 2 is out of range (the array has 2 elements)"),
        ("/a/-", "'-' names the position after the last element"),
        ("/b", "/b does not exist"),
        ("/a/0/x", "/a/0 is a number, not an object or array"),
    ],
)
def test_array_index_rules_on_remove(path: str, reason: str) -> None:
    message = failure({"a": [1, 2]}, [{"op": "remove", "path": path}], 422, "processing")
    assert reason in message


# -- each operation's rules ----------------------------------------------------------------------


def test_add_replaces_an_existing_member_and_inserts_into_arrays() -> None:
    doc = {"a": 1, "b": [1, 2]}
    patch = [
        {"op": "add", "path": "/a", "value": 2},
        {"op": "add", "path": "/b/0", "value": 0},
        {"op": "add", "path": "/b/3", "value": 3},
        {"op": "add", "path": "/b/-", "value": 4},
    ]
    assert patched(doc, patch) == {"a": 2, "b": [0, 1, 2, 3, 4]}


def test_add_past_the_end_of_an_array_is_422() -> None:
    message = failure({"b": [1]}, [{"op": "add", "path": "/b/2", "value": 3}], 422, "processing")
    assert "index 2 is past the end of the array (1 elements)" in message


def test_add_into_a_scalar_is_422() -> None:
    message = failure({"a": "text"}, [{"op": "add", "path": "/a/b", "value": 3}], 422, "processing")
    assert "/a is a string, not an object or array" in message


def test_add_accepts_null_value() -> None:
    assert patched({}, [{"op": "add", "path": "/a", "value": None}]) == {"a": None}


@pytest.mark.parametrize("op", ["remove", "replace"])
def test_remove_and_replace_need_an_existing_target(op: str) -> None:
    message = failure({"a": 1}, [{"op": op, "path": "/b", "value": 1}], 422, "processing")
    assert message == f"JSON Patch operation 0 ({op} '/b'): /b does not exist"


def test_replace_array_element() -> None:
    assert patched({"a": [1, 2, 3]}, [{"op": "replace", "path": "/a/1", "value": {"x": 1}}]) == {"a": [1, {"x": 1}, 3]}


def test_remove_the_whole_document_is_422() -> None:
    failure({"a": 1}, [{"op": "remove", "path": ""}], 422, "processing")


def test_result_that_is_not_an_object_is_422() -> None:
    with pytest.raises(FhirError) as info:
        apply_json_patch({"a": 1}, [{"op": "replace", "path": "", "value": [1]}])
    assert info.value.status == 422


def test_move_onto_itself_is_a_no_op_but_needs_the_source() -> None:
    assert patched({"a": 1}, [{"op": "move", "from": "/a", "path": "/a"}]) == {"a": 1}
    failure({"a": 1}, [{"op": "move", "from": "/b", "path": "/b"}], 422, "processing")


def test_move_into_own_child_is_400() -> None:
    message = failure({"a": {"b": 1}}, [{"op": "move", "from": "/a", "path": "/a/b/c"}], 400, "invalid")
    assert "proper prefix" in message


def test_move_to_a_sibling_with_a_shared_name_prefix() -> None:
    # "/a" is a prefix of "/ab" as text, not as a pointer: allowed.
    assert patched({"a": 1}, [{"op": "move", "from": "/a", "path": "/ab"}]) == {"ab": 1}


def test_move_from_a_missing_location_is_422() -> None:
    failure({"a": 1}, [{"op": "move", "from": "/x", "path": "/y"}], 422, "processing")


def test_copy_copies_deeply() -> None:
    doc = {"a": {"b": [1]}}
    result = patched(doc, [{"op": "copy", "from": "/a", "path": "/c"}, {"op": "add", "path": "/c/b/-", "value": 2}])
    assert result == {"a": {"b": [1]}, "c": {"b": [1, 2]}}


def test_copy_into_own_child_is_allowed() -> None:
    assert patched({"a": {"b": 1}}, [{"op": "copy", "from": "/a", "path": "/a/c"}]) == {"a": {"b": 1, "c": {"b": 1}}}


def test_copy_from_missing_is_422() -> None:
    failure({"a": 1}, [{"op": "copy", "from": "/b", "path": "/c"}], 422, "processing")


# -- test: JSON equality -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("actual", "expected"),
    [
        ("1", "1.0"),
        ("1.50", "1.5"),
        ("100", "1e2"),
        ('{"a": [1, {"b": null}], "c": true}', '{"c": true, "a": [1.0, {"b": null}]}'),
        ('""', '""'),
    ],
)
def test_test_equal_values(actual: str, expected: str) -> None:
    doc = {"v": J(actual)}
    assert patched(doc, [{"op": "test", "path": "/v", "value": J(expected)}]) == doc


@pytest.mark.parametrize(
    ("actual", "expected"),
    [
        ("1", "true"),
        ("0", "false"),
        ("true", "1"),
        ("1.5", '"1.5"'),
        ('"1.5"', "1.5"),
        ("null", "false"),
        ("[1, 2]", "[2, 1]"),
        ("[1]", "[1, 1]"),
        ('{"a": 1}', '{"a": 1, "b": 2}'),
        ('{"a": 1}', '{"b": 1}'),
        ('"a"', '"A"'),
    ],
)
def test_test_unequal_values(actual: str, expected: str) -> None:
    failure({"v": J(actual)}, [{"op": "test", "path": "/v", "value": J(expected)}], 422, "processing")


def test_test_of_missing_location_is_422() -> None:
    failure({"a": 1}, [{"op": "test", "path": "/b", "value": 1}], 422, "processing")


# -- malformed documents --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patch", "reason"),
    [
        ({"op": "add", "path": "/a", "value": 1}, "must be a JSON array"),
        ("[]", "must be a JSON array"),
        (None, "must be a JSON array"),
        (["add"], "an operation must be a JSON object"),
        ([{"path": "/a"}], "has no 'op' member"),
        ([{"op": "delete", "path": "/a"}], "unknown op 'delete'"),
        ([{"op": 1, "path": "/a"}], "unknown op 1"),
        ([{"op": "remove"}], "has no 'path' member"),
        ([{"op": "remove", "path": 1}], "'path' must be a JSON Pointer string, not 1"),
        ([{"op": "add", "path": "/a"}], "'add' needs a 'value' member"),
        ([{"op": "replace", "path": "/a"}], "'replace' needs a 'value' member"),
        ([{"op": "test", "path": "/a"}], "'test' needs a 'value' member"),
        ([{"op": "move", "path": "/a"}], "has no 'from' member"),
        ([{"op": "copy", "path": "/a", "from": None}], "'from' must be a JSON Pointer string"),
    ],
)
def test_malformed_documents_are_400(patch: Any, reason: str) -> None:
    message = failure({"a": 1}, patch, 400, "invalid")
    assert reason in message


def test_messages_name_the_failing_operation() -> None:
    patch = [
        {"op": "add", "path": "/b", "value": 2},
        {"op": "test", "path": "/b", "value": 2},
        {"op": "remove", "path": "/zzz"},
    ]
    message = failure({"a": 1}, patch, 422, "processing")
    assert message == "JSON Patch operation 2 (remove '/zzz'): /zzz does not exist"


def test_a_failure_leaves_the_input_untouched() -> None:
    doc = {"a": [1, 2], "b": {"c": 1}}
    failure(doc, [{"op": "remove", "path": "/a/0"}, {"op": "add", "path": "/b/c", "value": 9},
                  {"op": "test", "path": "/a/0", "value": 1}], 422, "processing")
    assert doc == {"a": [1, 2], "b": {"c": 1}}


# -- copies and decimals ---------------------------------------------------------------------------


def test_result_shares_nothing_with_input_or_patch() -> None:
    doc = {"a": {"b": [1]}, "keep": {"x": [1]}}
    value = {"deep": [1]}
    patch = [{"op": "add", "path": "/n", "value": value}]
    result = patched(doc, patch)
    result["keep"]["x"].append(2)
    result["n"]["deep"].append(2)
    assert doc == {"a": {"b": [1]}, "keep": {"x": [1]}}
    assert value == {"deep": [1]}


def test_decimals_keep_their_text() -> None:
    doc = J('{"resourceType": "Observation", "valueQuantity": {"value": 1.50, "unit": "mg"}, "x": 2.000}')
    patch = J('[{"op": "replace", "path": "/valueQuantity/value", "value": 0.10},'
              ' {"op": "copy", "from": "/x", "path": "/y"}]')
    result = patched(doc, patch)
    assert isinstance(result["valueQuantity"]["value"], JsonDecimal)
    assert jsonio.dumps(result) == (b'{"resourceType":"Observation","valueQuantity":{"value":0.10,"unit":"mg"},'
                                    b'"x":2.000,"y":2.000}')


def test_fhir_resource_patch() -> None:
    doc = J('{"resourceType": "Patient", "id": "p1", "meta": {"versionId": "1"}, "active": true,'
            ' "name": [{"family": "Chalmers", "given": ["Peter", "James"]}]}')
    patch = J('[{"op": "test", "path": "/name/0/family", "value": "Chalmers"},'
              ' {"op": "replace", "path": "/active", "value": false},'
              ' {"op": "add", "path": "/name/0/given/-", "value": "Jim"},'
              ' {"op": "remove", "path": "/name/0/given/0"},'
              ' {"op": "add", "path": "/birthDate", "value": "1974-12-25"},'
              ' {"op": "remove", "path": "/meta"}]')
    assert patched(doc, patch) == J(
        '{"resourceType": "Patient", "id": "p1", "active": false,'
        ' "name": [{"family": "Chalmers", "given": ["James", "Jim"]}], "birthDate": "1974-12-25"}')


def test_empty_patch_returns_an_equal_copy() -> None:
    doc = {"resourceType": "Patient", "name": [{"family": "x"}]}
    result = patched(doc, [])
    assert result == doc
    assert result["name"] is not doc["name"]
