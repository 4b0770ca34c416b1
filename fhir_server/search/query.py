"""A parsed search, independent of any storage: what the planner of each backend compiles.

Conditions form a small tree: a parameter test, a chain (a reference parameter whose targets
must satisfy an inner condition), or a reverse chain (`_has`: resources referenced by others that
satisfy an inner condition).  Occurrences are AND-ed; the values of one occurrence are OR-ed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

# Bounds for open date ranges (Period without start or end), in epoch milliseconds.
MIN_MS = -(2**62)
MAX_MS = 2**62


@dataclass(frozen=True, slots=True)
class DateRange:
    """A date search value: prefix plus the implicit range [lo, hi) of its precision, in epoch ms."""

    prefix: str  # eq ne gt lt ge le sa eb ap
    lo: int
    hi: int


@dataclass(frozen=True, slots=True)
class NumberValue:
    """A number (or the number of a quantity) with its prefix and implicit precision range [lo, hi)."""

    prefix: str
    value: Decimal
    lo: Decimal
    hi: Decimal


@dataclass(frozen=True, slots=True)
class QuantityValue:
    number: NumberValue
    system: str | None  # None: any system
    code: str | None  # None: any unit; matched against Quantity.code or Quantity.unit


@dataclass(frozen=True, slots=True)
class TokenValue:
    system: str | None  # with any_system False: None means "no system" (the |code form)
    code: str | None  # None: any code in the system (the system| form)
    any_system: bool = False


@dataclass(frozen=True, slots=True)
class ReferenceValue:
    target_type: str | None
    target_id: str | None
    url: str | None = None  # an absolute URL that is not on this server, or a canonical


@dataclass(frozen=True, slots=True)
class CompositeValue:
    first: TokenValue | ReferenceValue
    second: Any  # TokenValue | QuantityValue | DateRange | NumberValue | str
    third: NumberValue | DateRange | None = None  # three-component composites (MolecularSequence)


@dataclass(frozen=True, slots=True)
class NearValue:
    """A Location ``near`` value: a WGS84 position in degrees and a distance in km."""

    lat: float
    lon: float
    km: float


@dataclass(frozen=True, slots=True)
class Condition:
    """One test of a search parameter on the resources of ``resource_type``.

    ``kind`` is the parameter type (token, string, date, number, quantity, reference, uri,
    composite), ``near`` for Location's special parameter, or ``id`` / ``lastUpdated`` for the
    columns of the resource table.  ``modifier``
    is the effective modifier (missing, not, text, exact, contains, of-type, identifier, above,
    below); ``values`` are OR-ed (for ``missing`` a single bool)."""

    resource_type: str
    code: str
    kind: str
    values: tuple[Any, ...]
    modifier: str | None = None
    second_kind: str | None = None  # composite: the type of the second component
    third_kind: str | None = None  # composite of three components: the type of the third


@dataclass(frozen=True, slots=True)
class Chain:
    """``ref:Type.param=value``: the reference ``code`` of ``resource_type`` points at a resource of
    one of ``target_types`` that satisfies ``inner``."""

    resource_type: str
    code: str
    target_types: tuple[str, ...]
    inner: Any  # Condition | Chain | Has, on the target types


@dataclass(frozen=True, slots=True)
class Has:
    """``_has:Source:ref:param=value``: some ``source_type`` resource whose reference ``code`` points at
    the searched resource satisfies ``inner``."""

    resource_type: str  # the searched type
    source_type: str
    code: str
    inner: Any


@dataclass(frozen=True, slots=True)
class SortKey:
    code: str
    kind: str  # id | lastUpdated | string | token | date | number | quantity | uri | reference
    descending: bool


@dataclass(frozen=True, slots=True)
class Include:
    source_type: str
    code: str  # "*" for every reference parameter
    target_type: str | None
    iterate: bool
    reverse: bool


@dataclass(slots=True)
class SearchQuery:
    resource_types: tuple[str, ...]  # one type for a type search; several or all for a system search
    conditions: tuple[Any, ...] = ()  # Condition | Chain | Has, AND-ed
    count: int = 20
    cursor: str | None = None
    total: str = "accurate"  # accurate | none | estimate
    summary: str | None = None  # true | text | data | count | false
    elements: tuple[str, ...] = ()
    sort: tuple[SortKey, ...] = ()
    includes: tuple[Include, ...] = ()
    # The parameters that were understood, canonicalised, for the self/next links.
    link_params: list[tuple[str, str]] = field(default_factory=list)
    # Parameters that were ignored under lenient handling (reported in an outcome entry).
    ignored: list[str] = field(default_factory=list)

    @property
    def summary_count(self) -> bool:
        return self.summary == "count"


@dataclass(frozen=True, slots=True)
class AnyOf:
    """An OR over conditions on different parameters (compartment membership)."""

    conditions: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class InCompartment:
    """Membership in the compartment of ``owner_type/owner_id`` ($everything): a reference to the
    owner through one of the compartment's (type, parameter) pairs, or the owner itself."""

    owner_type: str
    owner_id: str
    params: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class TypeIn:
    """The resource is of one of ``types`` (a branch of an AnyOf that differs by type)."""

    types: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AllOf:
    """An AND of conditions inside one branch of an AnyOf (an access-policy scope: compartment
    membership and granular category restrictions together)."""

    conditions: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class InCompartments:
    """Membership in the compartment of any of ``owner_ids`` (bulk export of a Group), or of any
    ``owner_type`` resource at all when ``owner_ids`` is None (bulk export of all patients)."""

    owner_type: str
    owner_ids: tuple[str, ...] | None
    params: tuple[tuple[str, str], ...]
