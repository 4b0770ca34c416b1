"""Load Synthea transaction Bundles into a database through the storage seam, for the search bench.

Each resource is validated and indexed exactly as the API does (same validator, same Indexer,
same Backend.update); a bundle is one transaction.  ``urn:uuid:`` references are rewritten to
``Type/id``.  The product's own bulk loader (a later issue) will supersede this helper.
"""

from __future__ import annotations

import json
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fhir_server.interactions.common import stamp
from fhir_server.model import jsonio
from fhir_server.model.validate import validate_resource
from fhir_server.storage.base import WriteRequest
from fhir_server.storage.sql.backend import SqlBackend

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "synthea"


def bundles(which: str) -> Iterator[bytes]:
    if which == "large":
        tgz = SHARED / "large-100-patients" / "synthea-r4-100-patients-bundles.tar.gz"
        with tarfile.open(tgz) as t:
            members = sorted((m for m in t.getmembers() if m.name.endswith(".json")),
                             key=lambda m: (not ("hospital" in m.name or "practitioner" in m.name), m.name))
            for m in members:
                f = t.extractfile(m)
                if f is not None:
                    yield f.read()
        return
    folder = SHARED / ("small-10-patients" if which == "small" else "inferno-reference")
    files = sorted(folder.glob("*.json"), key=lambda p: (not ("hospital" in p.name or "practitioner" in p.name), p.name))
    for path in files:
        yield path.read_bytes()


def _rewrite(node: Any, ids: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: _rewrite(v, ids) for k, v in node.items()}
    if isinstance(node, list):
        return [_rewrite(v, ids) for v in node]
    if isinstance(node, str) and node.startswith("urn:uuid:"):
        return ids.get(node, node)
    return node


def load(backend: SqlBackend, which: str) -> tuple[int, float, int]:
    """(resources loaded, seconds, invalid resources skipped)."""
    loaded = skipped = 0
    started = time.perf_counter()
    for raw in bundles(which):
        bundle = jsonio.loads(raw)
        if bundle.get("resourceType") != "Bundle":
            entries = [{"resource": bundle}]
        else:
            entries = bundle.get("entry", [])
        ids = {e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}"
               for e in entries if "fullUrl" in e and "resource" in e}
        with backend.transaction():
            for e in entries:
                res = _rewrite(e["resource"], ids)
                if any(i.severity == "error" for i in validate_resource(res)):
                    skipped += 1
                    continue
                backend.update(WriteRequest(res["resourceType"], res, id=res["id"]), stamp)
                loaded += 1
    backend.analyze()
    return loaded, time.perf_counter() - started, skipped


def sample_values(backend: SqlBackend) -> dict[str, str]:
    """Ids and codes present in the loaded data, for the search workloads."""
    from sqlalchemy import text

    with backend.engine.connect() as conn:
        patient = conn.execute(text(
            "SELECT r.target_id FROM idx_reference r WHERE r.res_type='Observation' AND r.param='patient' "
            "GROUP BY r.target_id ORDER BY count(*) DESC LIMIT 1")).scalar_one()
        code = conn.execute(text(
            "SELECT code FROM idx_token WHERE res_type='Observation' AND param='code' AND system='http://loinc.org' "
            "GROUP BY code ORDER BY count(*) DESC LIMIT 1")).scalar_one()
        family = conn.execute(text(
            "SELECT value_norm FROM idx_string WHERE res_type='Patient' AND param='family' LIMIT 1")).scalar_one()
    return {"patient": str(patient), "code": str(code), "family": str(family)}


if __name__ == "__main__":
    import sys

    b = SqlBackend(sys.argv[1])
    b.start()
    print(json.dumps(load(b, sys.argv[2] if len(sys.argv) > 2 else "small")))
