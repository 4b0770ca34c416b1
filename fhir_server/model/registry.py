"""Which resource types this server serves: the R4 4.0.1 types that have an fhir.resources R4B model.

R4B-only types (SubscriptionTopic, Citation, *Definition, ...) are not R4 and are refused; the
R4-only MedicinalProduct*, Substance* (some) and *EvidenceSynthesis types have no R4B model and
are refused too, and absent from the CapabilityStatement.
"""

from __future__ import annotations

from fhir_server.errors import FhirError
from fhir_server.model.facts import get_facts


def served_types() -> list[str]:
    return sorted(get_facts().resource_types)


def require_served_type(resource_type: str) -> None:
    facts = get_facts()
    if resource_type in facts.resource_types:
        return
    if resource_type in facts.r4_resource_types:
        raise FhirError(404, f"Resource type '{resource_type}' is not supported by this server", code="not-supported")
    raise FhirError(404, f"Unknown resource type '{resource_type}'", code="not-found")
