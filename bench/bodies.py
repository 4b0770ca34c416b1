"""Request bodies that differ per request yet cost almost nothing to produce.

A body is a template split at a marker; request n joins the parts with a short token. The same
parts drive both load generators: the Python one calls the object, wrk's Lua script joins the parts
itself, so a create workload sends distinct bodies whichever generator runs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CountedBody:
    parts: tuple[bytes, ...]

    # Chosen so it can sit inside any JSON string without escaping and never occurs in real data.
    MARKER = "@@BENCH_N@@"

    @classmethod
    def from_template(cls, template: bytes) -> CountedBody:
        parts = tuple(template.split(cls.MARKER.encode("ascii")))
        if len(parts) < 2:
            raise ValueError(f"template has no {cls.MARKER} marker")
        return cls(parts)

    def __call__(self, n: int | str) -> bytes:
        return str(n).encode("ascii").join(self.parts)
