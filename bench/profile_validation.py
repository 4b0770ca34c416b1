"""Profile validation cost: the Inferno reference patients against their declared US Core profiles.

Reports, per CPU core (thread CPU time, so other processes on a shared machine do not count):

* ``profile.structural.rate``: resources/s of the structural R4 validation alone
  (``fhir_server.model.validate.validate_resource``);
* ``profile.us_core.rate``: resources/s of structural + US Core validation
  (``ProfileValidator.validate``), must-support reporting off, as an enforcing write path runs it;
* ``profile.us_core_ms.rate``: the same with must-support information issues, as ``$validate`` runs it;
* ``profile.structural.us`` / ``profile.us_core.us`` / ``profile.us_core_ms.us``: microseconds per
  resource; the last two as a ratio to the first (the goal: at most 2x);
* ``profile.us_core_pass.us``: the US Core pass alone (``structural=False``), as a ratio to the
  structural pass.  Run back to back on each resource the two passes cost more than their sum (the
  two validators' code and tables evict each other from the CPU caches): the difference is the
  price of running them one after the other, not of either.

Every resource is validated in bundle order (types interleaved, as a load or a transaction sees
them); the best of several passes counts, since a shared machine only ever adds time, and the
four measurements take their passes in turn, so that a passing load does not favour one.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.data import REPO_ROOT
from bench.micro import Report

INFERNO = REPO_ROOT.parent / "shared" / "data" / "synthea" / "inferno-reference"
PASSES = 7


def _resources() -> list[dict[str, Any]]:
    from fhir_server.model import jsonio

    out: list[dict[str, Any]] = []
    for path in sorted(Path(INFERNO).glob("uscore_bundle_patient*.json")):
        out += [e["resource"] for e in jsonio.loads(path.read_bytes())["entry"]]
    return out


def _best_passes(
    fns: list[Callable[[dict[str, Any]], object]], resources: list[dict[str, Any]]
) -> list[float]:
    """The best pass of each of ``fns``, their passes taken in turn: a load that comes and goes on
    a shared machine then weighs on all of them alike, not on whichever ran at the time."""
    best = [float("inf")] * len(fns)
    for _ in range(PASSES):
        for i, fn in enumerate(fns):
            started = time.thread_time()
            for r in resources:
                fn(r)
            best[i] = min(best[i], time.thread_time() - started)
    return best


def run(report: Report) -> None:
    if not INFERNO.is_dir():
        print("profile_validation: skipped, ../shared/data/synthea/inferno-reference is absent")
        return
    from fhir_server.model.validate import validate_resource
    from fhir_server.validation.validator import ProfileValidator, shipped_packages

    resources = _resources()
    started = time.perf_counter()
    validator = ProfileValidator(shipped_packages())
    report("profile.load_s", time.perf_counter() - started, "s")
    started = time.perf_counter()
    report("profile.warm_up_profiles", validator.warm_up(), "profiles")
    report("profile.warm_up_s", time.perf_counter() - started, "s")

    for r in resources:  # first use pays for lazy plans of referenced extensions and datatypes
        validator.validate(r)
    n = len(resources)
    gc.collect()
    gc.disable()  # the server freezes the GC after start; a collection here would be noise
    try:
        structural, us_core, us_core_ms, us_core_pass = _best_passes(
            [
                validate_resource,
                lambda r: validator.validate(r, must_support=False),
                lambda r: validator.validate(r, must_support=True),
                lambda r: validator.validate(r, structural=False, must_support=False),
            ],
            resources,
        )
    finally:
        gc.enable()
    report("profile.resources", n, "resources")
    report("profile.structural.rate", n / structural, "resources/s/core")
    report("profile.us_core.rate", n / us_core, "resources/s/core")
    report("profile.us_core_ms.rate", n / us_core_ms, "resources/s/core")
    report("profile.structural.us", structural / n * 1e6, "us")
    report("profile.us_core.us", us_core / n * 1e6, "us", ratio_to="profile.structural.us")
    report("profile.us_core_ms.us", us_core_ms / n * 1e6, "us", ratio_to="profile.structural.us")
    report("profile.us_core_pass.us", us_core_pass / n * 1e6, "us", ratio_to="profile.structural.us")
