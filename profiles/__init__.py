"""Compact profile facts shipped with the server (written by scripts/gen_profiles.py; no prose).

``hl7.fhir.r4.core-4.0.1.json`` (the R4 base definitions validation needs),
``hl7.fhir.us.core-3.1.1.json``, ``hl7.fhir.us.core-6.1.0.json`` and
``inferno.us-core-extras-6.1.0.json``; read by ``fhir_server.validation``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

SHIPPED = (
    "hl7.fhir.r4.core-4.0.1.json",
    "hl7.fhir.us.core-3.1.1.json",
    "hl7.fhir.us.core-6.1.0.json",
    "inferno.us-core-extras-6.1.0.json",
)


def shipped_paths() -> list[Path]:
    root = resources.files(__name__)
    return [Path(str(root.joinpath(name))) for name in SHIPPED]
