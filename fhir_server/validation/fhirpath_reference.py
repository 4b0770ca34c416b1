"""The reference FHIRPath engine: fhirpathpy, typed by its R4 model, with the FHIR functions it lacks.

fhirpathpy (beda.software) is a complete FHIRPath N1 implementation in Python with the R4 type
model (choice types, ``is``/``as``/``ofType``, dates and quantities).  It is the engine of record
for invariants: expressions the fast compiler (``fhirpath_native``) does not take are evaluated
here, and the tests hold the fast compiler to this engine's verdicts on the whole test corpus.

fhirpathpy 2.2 has no ``hasValue()``, ``memberOf()``, ``resolve()`` or ``htmlChecks()``; they are
added through its user invocation table: ``hasValue`` per the FHIR spec, ``memberOf`` against the
loaded terminology, ``resolve`` to contained resources only (an invariant cannot read the server)
and ``htmlChecks`` as true (the structural validator checks narratives).  Its module-level state
(``constants.reset()`` for ``now()``) is shared between threads; no invariant here uses ``now()``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from fhirpathpy import apply_parsed_path
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models
from fhirpathpy.parser import parse

# (value set canonical, system or None for a bare code, code) -> member, not, or unknown (None)
MemberOf = Callable[[str, "str | None", str], "bool | None"]
Evaluator = Callable[[Any, "str | None", Any], list[Any]]

_MODEL = models["r4"]
_current = threading.local()


def _has_value(inputs: list[Any]) -> list[bool]:
    return [len(inputs) == 1 and inputs[0] is not None and not isinstance(inputs[0], dict | list)]


def _resolve(inputs: list[Any]) -> list[Any]:
    root = getattr(_current, "root", None)
    contained = root.get("contained") if isinstance(root, dict) else None
    out: list[Any] = []
    for ref in inputs:
        target = ref.get("reference") if isinstance(ref, dict) else ref
        if isinstance(target, str) and target.startswith("#") and isinstance(contained, list):
            out.extend(
                ResourceNode.create_node(c, c.get("resourceType"))
                for c in contained
                if isinstance(c, dict) and c.get("id") == target[1:]
            )
    return out


def member_of_items(member_of: MemberOf, items: list[Any], url: str) -> list[bool]:
    """memberOf() over FHIR values: a code, a Coding or a CodeableConcept (any of its codings)."""
    if len(items) != 1:
        return []
    item = items[0]
    if isinstance(item, str):
        verdict = member_of(url, None, item)
        return [] if verdict is None else [verdict]
    if not isinstance(item, dict):
        return []
    codings = item.get("coding") if "coding" in item else [item]
    unknown = False
    for c in codings if isinstance(codings, list) else ():
        if isinstance(c, dict) and isinstance(c.get("code"), str):
            verdict = member_of(url, c.get("system"), c["code"])
            if verdict:
                return [True]
            unknown = unknown or verdict is None
    return [] if unknown else [False]


class ReferenceEngine:
    def __init__(self, member_of: MemberOf) -> None:
        self._table = {
            "hasValue": {"fn": _has_value, "arity": {0: []}},
            "resolve": {"fn": _resolve, "arity": {0: []}},
            "htmlChecks": {"fn": lambda inputs: [True], "arity": {0: []}},
            "memberOf": {
                "fn": lambda inputs, url: member_of_items(member_of, inputs, url),
                "arity": {1: ["String"]},
            },
        }

    def compile(self, expression: str) -> Evaluator:
        """Parse once; the evaluator takes (value, type path such as "Observation.component" or
        "Period", root resource) and returns the result collection.  Raises on parse errors."""
        parsed = parse(expression)
        options = {"userInvocationTable": self._table}

        def evaluate(value: Any, type_path: str | None, root: Any) -> list[Any]:
            node = ResourceNode.create_node(value, type_path) if type_path else value
            _current.root = root
            try:
                result = apply_parsed_path(
                    node, parsed, {"resource": root, "rootResource": root}, _MODEL, options
                )
            finally:
                _current.root = None
            return result if isinstance(result, list) else [result]

        return evaluate
