"""The contract for in-process micro workloads, and a timer for them.

A micro workload is a module in bench/ listed in `runner.MICRO_PLUGINS` that defines
`run(report: Report) -> None` and calls `report(name, value, unit, ratio_to=None)` once per number.
`ratio_to` names another metric reported in the same run (by any plugin, in any order) or gives a
reference number; the runner prints value / reference next to the value. Keep each plugin bounded
(well under 10 s): `per_call_us` spends a fixed time budget per measurement.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Protocol


class Report(Protocol):
    def __call__(self, name: str, value: float, unit: str, ratio_to: str | float | None = None) -> None: ...


def per_call_us(fn: Callable[[], object], budget_s: float = 0.3, repeats: int = 5) -> float:
    """Median microseconds per call of `fn` over `repeats` timed batches filling about `budget_s`.

    The median of batches, not the mean, because a shared machine adds one-sided noise.
    """
    started = time.perf_counter()
    fn()  # first call pays for lazy imports and caches; not what a steady server pays
    one = max(time.perf_counter() - started, 1e-7)
    number = max(1, int(budget_s / repeats / one))
    batches = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(number):
            fn()
        batches.append((time.perf_counter() - started) / number)
    return statistics.median(batches) * 1e6
