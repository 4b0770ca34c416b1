"""FHIR Bulk Data Access (v2.0.0) $export: jobs in the database, run by any worker."""
