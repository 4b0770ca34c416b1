"""A fast FHIR R4 (4.0.1) facade server."""

__version__ = "0.1.0"
