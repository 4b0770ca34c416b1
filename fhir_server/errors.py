"""The one exception type of the server: an HTTP status plus the OperationOutcome that explains it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class OutcomeIssue:
    severity: str  # fatal | error | warning | information
    code: str  # IssueType: invalid, structure, required, value, not-found, deleted, conflict, ...
    diagnostics: str
    expression: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"severity": self.severity, "code": self.code, "diagnostics": self.diagnostics}
        if self.expression:
            out["expression"] = list(self.expression)
        return out


def operation_outcome(issues: Iterable[OutcomeIssue]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [i.to_json() for i in issues]}


class FhirError(Exception):
    """Raised anywhere below the HTTP layer; the error handler renders it in the negotiated format."""

    def __init__(
        self,
        status: int,
        issues: Sequence[OutcomeIssue] | str,
        code: str = "processing",
        headers: dict[str, str] | None = None,
    ) -> None:
        if isinstance(issues, str):
            issues = [OutcomeIssue("error", code, issues)]
        super().__init__("; ".join(i.diagnostics for i in issues))
        self.status = status
        self.issues = list(issues)
        self.headers = headers or {}

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.issues)


def invalid(diagnostics: str, status: int = 400) -> FhirError:
    return FhirError(status, diagnostics, code="invalid")
