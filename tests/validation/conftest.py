"""Validators shared by the tests: the shipped compact profiles, and the official packages."""

from __future__ import annotations

import pytest

from fhir_server.validation.packages import load_package
from fhir_server.validation.validator import ProfileValidator, shipped_packages
from tests.validation.data import PACKAGES


@pytest.fixture(scope="session")
def shipped() -> ProfileValidator:
    """The compact facts committed in profiles/ (what default_validator() loads without FHIR_PACKAGES)."""
    v = ProfileValidator(shipped_packages())
    v.warm_up()
    return v


def official_packages() -> list:
    """The R4 base from profiles/, then the official packages as published: US Core 3.1.1 and 6.1.0
    (.tgz), the R4 vital-signs profiles and Inferno's extras (folders)."""
    r4 = [p for p in shipped_packages() if p.name == "hl7.fhir.r4.core"]
    return r4 + [
        load_package(PACKAGES / "hl7.fhir.r4.core-4.0.1"),
        load_package(PACKAGES / "hl7.fhir.us.core-3.1.1.tgz"),
        load_package(PACKAGES / "hl7.fhir.us.core-6.1.0.tgz"),
        load_package(PACKAGES / "inferno-igs-extras" / "us_core_610"),
    ]


@pytest.fixture(scope="session")
def official() -> ProfileValidator:
    return ProfileValidator(official_packages())
