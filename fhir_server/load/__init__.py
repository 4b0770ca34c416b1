"""Bulk loading of FHIR files: ``sources`` turns paths into units of work, ``progress`` reports on them."""
