"""A parsed search, independent of any storage: what the planner of each backend compiles."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class DateRange:
    """A date search value: prefix plus the implicit range [lo, hi) of its precision, in epoch ms."""

    prefix: str  # eq ne gt lt ge le sa eb ap
    lo: int
    hi: int


@dataclass(frozen=True, slots=True)
class Condition:
    """One search parameter occurrence. Occurrences are AND-ed; the values of one are OR-ed."""

    name: str
    type: str  # token | date | string | reference | number | quantity | uri | composite | special
    values: tuple[Any, ...]
    modifier: str | None = None


@dataclass(slots=True)
class SearchQuery:
    resource_types: tuple[str, ...]  # one type for a type search; several or all for a system search
    conditions: tuple[Condition, ...] = ()
    count: int = 20
    cursor: str | None = None
    total: str = "accurate"  # accurate | none | estimate
    summary_count: bool = False
    # The parameters that were understood, canonicalised, for the self/next links.
    link_params: list[tuple[str, str]] = field(default_factory=list)
    # Parameters that were ignored under lenient handling (reported in an outcome entry).
    ignored: list[str] = field(default_factory=list)
