"""Constraints (ElementDefinition.constraint) compiled once per expression and context type.

Each expression goes to the fast compiler (``fhirpath_native``); what it refuses goes to the
reference engine (fhirpathpy).  A constraint holds when its expression evaluates to ``true``; false
or empty is a violation, as in the HL7 validator.  Constraints the structural validator already
checks natively are not compiled (``STRUCTURAL``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fhir_server.model.facts import Facts
from fhir_server.validation.fhirpath_native import NativeCompiler, Unsupported
from fhir_server.validation.fhirpath_reference import MemberOf, ReferenceEngine

# ele-1 and ext-1 never reach here (compact facts leave them out); dom-2..dom-5 (contained
# resources), txt-1/txt-2 (narrative XHTML, ``htmlChecks()``) and ref-1 (local references) are
# checked natively by fhir_server.model.validate.
STRUCTURAL = frozenset(("ele-1", "ext-1", "dom-2", "dom-3", "dom-4", "dom-5", "txt-1", "txt-2", "ref-1"))

# Published expressions that contradict their own text, evaluated in corrected form.  R4's vs-1
# ("if Observation.effective[x] is dateTime and has a value then that value shall be precise to
# the day"; US Core 3.1.1 copies it as us-core-1) is empty, so failed, on an effectivePeriod; the
# HL7 validator evaluates the form below (hapifhir/org.hl7.fhir.core#2439 quotes it), and the
# Inferno reference data, valid for it, has vital signs with effectivePeriod.
CORRECTED = {
    "($this as dateTime).toString().length() >= 8": "($this is dateTime) implies $this.toString().length() >= 8",
}


Test = Callable[[Any, Any], "bool | None"]


@dataclass(frozen=True, slots=True)
class Invariant:
    key: str
    severity: str  # "error" | "warning"
    expression: str
    native: bool
    # (value, root resource) -> True (holds), False (violated), None (could not be evaluated); a
    # native test raises Unsupported for a runtime case outside its subset: then ask ``fallback``
    test: Callable[[Any, Any], bool | None]
    fallback: Callable[[Any, Any], bool | None]


class InvariantCompiler:
    def __init__(self, facts: Facts, member_of: MemberOf) -> None:
        self._native = NativeCompiler(facts, member_of)
        self._reference = ReferenceEngine(member_of)
        self._cache: dict[tuple[str, str | None, str | None], tuple[bool, Test, Test]] = {}
        self._lock = threading.Lock()

    def compile(self, key: str, severity: str, expression: str, context_type: str | None,
                root_type: str | None) -> Invariant | None:  # fmt: skip
        """None when the structural validator covers the constraint or it has no expression."""
        if key in STRUCTURAL or not expression.strip():
            return None
        expression = CORRECTED.get(expression, expression)
        ck = (expression, context_type, root_type)
        with self._lock:
            found = self._cache.get(ck)
            if found is None:
                found = self._build(expression, context_type, root_type)
                self._cache[ck] = found
        native, test, fallback = found
        return Invariant(
            key, "warning" if severity == "warning" else "error", expression, native, test, fallback
        )

    def _build(
        self, expression: str, context_type: str | None, root_type: str | None
    ) -> tuple[bool, Test, Test]:
        reference = self._reference_test(expression, context_type)
        try:
            fast = self._native.compile_predicate(expression, context_type, root_type)
        except Unsupported:
            return False, reference, reference
        return True, fast, reference

    def _reference_test(self, expression: str, context_type: str | None) -> Callable[[Any, Any], bool | None]:
        # Parsed on first use: most invariants never fall back to the reference engine, and a
        # parse costs milliseconds.
        engine = self._reference
        compiled: list[Callable[[Any, str | None, Any], list[Any]] | None] = []

        def test(value: Any, root: Any) -> bool | None:
            if not compiled:
                try:
                    compiled.append(engine.compile(expression))
                except Exception:  # an expression neither engine can parse: report, never crash
                    compiled.append(None)
            evaluate = compiled[0]
            if evaluate is None:
                return None
            try:
                result = evaluate(value, context_type, root)
            except Exception:
                return None
            return len(result) == 1 and result[0] is True

        return test

    def reference_result(
        self, expression: str, context_type: str | None, value: Any, root: Any
    ) -> bool | None:
        """The reference engine's verdict, for tests that compare the two engines."""
        return self._reference_test(expression, context_type)(value, root)
