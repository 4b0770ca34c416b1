"""Patch engines: RFC 6902 JSON Patch and FHIR R4 FHIRPath Patch, as pure functions on resource dicts."""
