"""Profile validation issues, and their OperationOutcome forms."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fhir_server.errors import OutcomeIssue
from fhir_server.model.validate import path_expression

# (parent, segment, index): index -1 when the element does not repeat; joined into a FHIRPath
# expression only when an issue is reported, so a clean walk builds no strings.
Path = tuple[Any, str, int]

SEVERITY_ORDER = {"fatal": 0, "error": 1, "warning": 2, "information": 3}


def expression(path: Path | None) -> str:
    # The structural validator walks with the same path shape.
    return path_expression(path)


class ProfileIssue:
    """One problem found against a profile: one OperationOutcome.issue."""

    __slots__ = ("severity", "code", "diagnostics", "_expression", "_path", "profile", "element", "key")

    def __init__(self, severity: str, code: str, diagnostics: str, expression: str, profile: str = "",
                 element: str = "", key: str = "", path: Path | None = None) -> None:  # fmt: skip
        self.severity = severity  # fatal | error | warning | information
        self.code = code  # IssueType: structure, required, value, invariant, code-invalid, ...
        self.diagnostics = diagnostics
        # FHIRPath of the element, e.g. Patient.identifier[0].system; from ``path`` on first use
        self._expression: str | None = expression if path is None else None
        self._path = path
        self.profile = profile  # canonical|version of the profile that states the rule
        self.element = element  # ElementDefinition.id of the rule, e.g. Patient.extension:race
        self.key = key  # constraint key for invariants (us-core-6), else ""

    @property
    def expression(self) -> str:
        if self._expression is None:
            self._expression = expression(self._path)
        return self._expression

    def __repr__(self) -> str:
        return (
            f"ProfileIssue({self.severity!r}, {self.code!r}, {self.expression!r}, {self.diagnostics!r}, "
            f"profile={self.profile!r}, element={self.element!r})"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ProfileIssue) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple[str, ...]:
        return (
            self.severity,
            self.code,
            self.diagnostics,
            self.expression,
            self.profile,
            self.element,
            self.key,
        )

    @property
    def is_error(self) -> bool:
        return self.severity in ("error", "fatal")

    def full_diagnostics(self) -> str:
        where = ", ".join(
            x
            for x in (self.profile and f"profile {self.profile}", self.element and f"element {self.element}")
            if x
        )
        return f"{self.diagnostics} ({where})" if where else self.diagnostics

    def to_outcome_issue(self) -> OutcomeIssue:
        return OutcomeIssue(
            self.severity, self.code, self.full_diagnostics(), (self.expression,) if self.expression else ()
        )

    def to_json(self) -> dict[str, Any]:
        """An OperationOutcome.issue with the profile and element id also in ``details.text``."""
        out: dict[str, Any] = {"severity": self.severity, "code": self.code}
        details = ", ".join(x for x in (self.profile, self.element) if x)
        if details:
            out["details"] = {"text": details}
        out["diagnostics"] = self.full_diagnostics()
        if self.expression:
            out["expression"] = [self.expression]
        return out


def to_outcome_issues(issues: Iterable[ProfileIssue]) -> list[OutcomeIssue]:
    return [i.to_outcome_issue() for i in issues]


def operation_outcome(issues: Iterable[ProfileIssue]) -> dict[str, Any]:
    """An OperationOutcome resource; "All OK" as an information issue when there is nothing to say."""
    items = [i.to_json() for i in sorted(issues, key=lambda i: SEVERITY_ORDER.get(i.severity, 9))]
    if not items:
        items = [{"severity": "information", "code": "informational", "diagnostics": "All OK"}]
    return {"resourceType": "OperationOutcome", "issue": items}


def has_errors(issues: Iterable[ProfileIssue]) -> bool:
    return any(i.is_error for i in issues)
