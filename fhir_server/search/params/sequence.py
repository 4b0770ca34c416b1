"""MolecularSequence's coordinate composites (``chromosome-variant-coordinate=1$lt345$gt123``).

R4 defines their values as 1-based and says a search finds the same nucleotides in resources of
either ``coordinateSystem``.  A 0-based resource counts from 0 with an inclusive start and an
exclusive end: its start is the 1-based start minus one, and its end equals the 1-based
(inclusive) end.  So the index stores a 0-based start plus one, and every end as it is.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

_BASE = "http://hl7.org/fhir/SearchParameter/MolecularSequence-"
# The composites whose second component is a start coordinate (the third is the end).
COORDINATE_COMPOSITES = frozenset(
    _BASE + name
    for name in (
        "chromosome-variant-coordinate",
        "chromosome-window-coordinate",
        "referenceseqid-variant-coordinate",
        "referenceseqid-window-coordinate",
    )
)
_ONE = Decimal(1)
_ZERO = Decimal(0)


def start_shift(resource: Any) -> Decimal | None:
    """What to add to a start coordinate of ``resource`` to make it 1-based; None when its
    coordinateSystem is neither 0 nor 1 (then its coordinates mean nothing definite)."""
    system = resource.get("coordinateSystem") if type(resource) is dict else None
    if type(system) is not int:  # bool is an int subclass, and not a coordinate system
        return None
    return _ONE if system == 0 else _ZERO if system == 1 else None
