"""Profile validation: StructureDefinition-driven checks for US Core and any configured package.

    from fhir_server.validation import default_validator, operation_outcome
    issues = default_validator().validate(resource)

See ``validator.ProfileValidator`` for the API and ``compile`` for what is checked.
"""

from fhir_server.validation.issues import ProfileIssue, has_errors, operation_outcome, to_outcome_issues
from fhir_server.validation.validator import ProfileValidator, default_validator

__all__ = [
    "ProfileIssue",
    "ProfileValidator",
    "default_validator",
    "has_errors",
    "operation_outcome",
    "to_outcome_issues",
]
