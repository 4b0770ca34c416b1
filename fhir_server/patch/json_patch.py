"""RFC 6902 JSON Patch on a resource dict, addressed by RFC 6901 JSON Pointers.

Written here rather than taken from a library so that every failure names its operation and cause
and maps onto the server's statuses: 400 (``invalid``) when the patch document itself is malformed,
422 (``processing``) when a well-formed operation cannot be applied to this resource.  Patching
``id``, ``meta`` and ``resourceType`` is allowed here; the caller guards those.
"""

from __future__ import annotations

import re
from typing import Any

from fhir_server.errors import FhirError
from fhir_server.model import jsonio
from fhir_server.model.jsonio import clone, number_value
from fhir_server.patch.failure import PatchFailure, inapplicable, malformed

__all__ = ["apply_json_patch"]

_OPS = ("add", "remove", "replace", "move", "copy", "test")
# RFC 6901 section 4: an array index is "0" or digits without a leading zero, ASCII only.
_ARRAY_INDEX = re.compile(r"0|[1-9][0-9]*")
_BAD_ESCAPE = re.compile(r"~(?![01])")

Pointer = tuple[str, ...]


_Failure = PatchFailure
_malformed = malformed
_inapplicable = inapplicable


def apply_json_patch(resource: dict[str, Any], patch: Any) -> dict[str, Any]:
    """Apply ``patch`` (a parsed JSON Patch document) to a copy of ``resource`` and return the copy.

    All operations apply or none do: the first failure raises ``FhirError`` and the input is untouched.
    """
    if not isinstance(patch, list):
        raise FhirError(400, "A JSON Patch document must be a JSON array of operations", code="invalid")
    doc: Any = clone(resource)
    for position, operation in enumerate(patch):
        try:
            doc = _apply_operation(doc, operation)
        except _Failure as failure:
            raise FhirError(failure.status, f"{_label(position, operation)}: {failure.reason}",
                            code=failure.code) from None
        except (KeyError, IndexError, TypeError, ValueError, AttributeError, RecursionError) as exc:
            # A resource shaped in a way no check above foresaw must still give an OperationOutcome, not a 500.
            raise FhirError(422, f"{_label(position, operation)}: cannot be applied ({exc!r})",
                            code="processing") from None
    if not isinstance(doc, dict):
        raise FhirError(422, "JSON Patch: the patched document is not a JSON object", code="processing")
    return doc


def _label(position: int, operation: Any) -> str:
    if isinstance(operation, dict) and isinstance(operation.get("op"), str) and isinstance(operation.get("path"), str):
        return f"JSON Patch operation {position} ({operation['op']} {operation['path']!r})"
    return f"JSON Patch operation {position}"


def _apply_operation(doc: Any, operation: Any) -> Any:
    if not isinstance(operation, dict):
        raise _malformed("an operation must be a JSON object")
    if "op" not in operation:
        raise _malformed("the operation has no 'op' member")
    op = operation["op"]
    if op not in _OPS:
        raise _malformed(f"unknown op {op!r}; expected one of {', '.join(_OPS)}")
    path = _pointer_member(operation, "path")
    if op == "add":
        return _add(doc, path, _value_member(operation))
    if op == "remove":
        _remove(doc, path)
        return doc
    if op == "replace":
        return _replace(doc, path, _value_member(operation))
    if op == "test":
        _test(doc, path, _value_member(operation))
        return doc
    source = _pointer_member(operation, "from")
    if op == "move":
        return _move(doc, source, path)
    return _add(doc, path, clone(_get(doc, source)))  # copy


# --- the operation's members ---------------------------------------------------------------------


def _pointer_member(operation: dict[str, Any], member: str) -> Pointer:
    if member not in operation:
        raise _malformed(f"the operation has no '{member}' member")
    text = operation[member]
    if not isinstance(text, str):
        raise _malformed(f"'{member}' must be a JSON Pointer string, not {_show(text)}")
    return _parse_pointer(text)


def _value_member(operation: dict[str, Any]) -> Any:
    if "value" not in operation:
        raise _malformed(f"'{operation['op']}' needs a 'value' member")
    # A copy, so that the patch document and the result never share mutable parts.
    return clone(operation["value"])


def _parse_pointer(text: str) -> Pointer:
    """RFC 6901: "" is the whole document; otherwise "/"-separated tokens with ~1 for "/" and ~0 for "~"."""
    if text == "":
        return ()
    if not text.startswith("/"):
        raise _malformed(f"JSON Pointer {text!r} must be empty or start with '/'")
    if _BAD_ESCAPE.search(text):
        raise _malformed(f"JSON Pointer {text!r} has a '~' that is not followed by '0' or '1'")
    # ~1 before ~0, so that "~01" means the literal "~1" (RFC 6901 section 4).
    return tuple(t.replace("~1", "/").replace("~0", "~") for t in text[1:].split("/"))


def _format(pointer: Pointer) -> str:
    return "".join("/" + t.replace("~", "~0").replace("/", "~1") for t in pointer)


# --- navigation ---------------------------------------------------------------------------------


def _get(doc: Any, pointer: Pointer) -> Any:
    node = doc
    for depth, token in enumerate(pointer):
        where = pointer[: depth + 1]
        if isinstance(node, dict):
            if token not in node:
                raise _inapplicable(f"{_format(where)} does not exist")
            node = node[token]
        elif isinstance(node, list):
            node = node[_existing_index(node, token, where)]
        else:
            raise _inapplicable(f"{_format(where)} does not exist: {_format(pointer[:depth]) or 'the document'} "
                                f"is a {_json_type(node)}, not an object or array")
    return node


def _container(doc: Any, pointer: Pointer) -> dict[str, Any] | list[Any]:
    """The object or array that holds the last token of ``pointer``."""
    parent = _get(doc, pointer[:-1])
    if not isinstance(parent, dict | list):
        raise _inapplicable(f"{_format(pointer[:-1])} is a {_json_type(parent)}, not an object or array")
    return parent


def _array_index(token: str, where: Pointer) -> int:
    if not _ARRAY_INDEX.fullmatch(token):
        raise _inapplicable(f"{_format(where)}: {token!r} is not a valid array index")
    return int(token)


def _existing_index(array: list[Any], token: str, where: Pointer) -> int:
    if token == "-":
        raise _inapplicable(f"{_format(where)}: '-' names the position after the last element, "
                            "which only 'add' may use")
    index = _array_index(token, where)
    if index >= len(array):
        raise _inapplicable(f"{_format(where)}: index {index} is out of range (the array has {len(array)} elements)")
    return index


# --- the operations -----------------------------------------------------------------------------


def _add(doc: Any, pointer: Pointer, value: Any) -> Any:
    if not pointer:
        return value
    parent = _container(doc, pointer)
    token = pointer[-1]
    if isinstance(parent, dict):
        parent[token] = value
        return doc
    index = len(parent) if token == "-" else _array_index(token, pointer)
    if index > len(parent):
        raise _inapplicable(f"{_format(pointer)}: index {index} is past the end of the array "
                            f"({len(parent)} elements)")
    parent.insert(index, value)
    return doc


def _remove(doc: Any, pointer: Pointer) -> Any:
    """Remove and return the value at ``pointer``."""
    if not pointer:
        raise _inapplicable("the whole document cannot be removed")
    parent = _container(doc, pointer)
    token = pointer[-1]
    if isinstance(parent, dict):
        if token not in parent:
            raise _inapplicable(f"{_format(pointer)} does not exist")
        return parent.pop(token)
    return parent.pop(_existing_index(parent, token, pointer))


def _replace(doc: Any, pointer: Pointer, value: Any) -> Any:
    if not pointer:
        return value
    parent = _container(doc, pointer)
    token = pointer[-1]
    if isinstance(parent, dict):
        if token not in parent:
            raise _inapplicable(f"{_format(pointer)} does not exist")
        parent[token] = value
    else:
        parent[_existing_index(parent, token, pointer)] = value
    return doc


def _move(doc: Any, source: Pointer, target: Pointer) -> Any:
    if len(source) < len(target) and target[: len(source)] == source:
        raise _malformed(f"'from' {_format(source)!r} is a proper prefix of 'path': "
                         "a value cannot be moved into one of its own children")
    if source == target:
        _get(doc, source)  # moving onto itself changes nothing, but the location must still exist
        return doc
    return _add(doc, target, _remove(doc, source))


def _test(doc: Any, pointer: Pointer, expected: Any) -> None:
    actual = _get(doc, pointer)
    if not _json_equal(actual, expected):
        raise _inapplicable(f"test failed: {_format(pointer) or 'the document'} is {_show(actual)}, "
                            f"not {_show(expected)}")


# --- JSON values --------------------------------------------------------------------------------




def _json_equal(a: Any, b: Any) -> bool:
    """RFC 6902 section 4.6 equality: numbers by value (1 == 1.0), never a number equal to a string."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    na, nb = number_value(a), number_value(b)
    if na is not None or nb is not None:
        return na is not None and nb is not None and na == nb
    if isinstance(a, str) and isinstance(b, str):
        return str.__eq__(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(v, b[k]) for k, v in a.items())
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    return a is None and b is None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if number_value(value) is not None:
        return "number"
    if isinstance(value, str):
        return "string"
    return "object" if isinstance(value, dict) else "array"


def _show(value: Any, limit: int = 80) -> str:
    try:
        text = jsonio.dumps(value).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
