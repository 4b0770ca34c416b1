"""Progress display and end-of-run summary for ``fhir-server load``.

On a terminal one status line is redrawn in place about every second; elsewhere (a log file, CI)
a plain line is printed about every ten seconds, so logs stay short but show the load is alive:

    loaded 12345 resources (1520/s), 45% of input, ETA 0:01:10, 0 errors

The percentage and the ETA are in input bytes (see ``sources.total_bytes``), because resources
cannot be counted without parsing everything first.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TextIO

from fhir_server.load.sources import LoadError

# Long enough to smooth over the lumps that whole bundles make, short enough to follow a slowdown.
RATE_WINDOW_S = 5.0
# Plain output is for logs: one line per this many redraw intervals.
PLAIN_EVERY = 10


class Progress:
    """Counts what a load has done and reports it on ``stream`` (standard error by default).

    ``advance`` takes increments, not running totals, and is cheap enough to call per unit.
    """

    def __init__(
        self,
        total_bytes: int | None,
        stream: TextIO | None = None,
        *,
        interval_s: float = 1.0,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total_bytes = total_bytes if total_bytes else None
        # Looked up now rather than as a default argument, so a redirected sys.stderr is honoured.
        self.stream: TextIO = stream if stream is not None else sys.stderr
        self.tty = _isatty(self.stream) if tty is None else tty
        self.period = interval_s if self.tty else interval_s * PLAIN_EVERY
        self.clock = clock
        self.resources = 0
        self.bytes_done = 0
        self.errors = 0
        self.started = clock()
        self._last_draw = self.started
        self._drawn_width = 0  # of the terminal line, to blank out the tail of a longer one
        self._finished = False
        # (time, resources, bytes): the oldest sample is the baseline for the moving rates.
        self._samples: deque[tuple[float, int, int]] = deque([(self.started, 0, 0)])

    def advance(self, resources: int, bytes_done: int, errors: int = 0) -> None:
        """Record ``resources`` more loaded, ``bytes_done`` more input bytes read and ``errors``
        more errors; redraw if the interval has passed."""
        self.resources += resources
        self.bytes_done += bytes_done
        self.errors += errors
        now = self.clock()
        self._samples.append((now, self.resources, self.bytes_done))
        # Keep one sample at or before the window's start, so the window is always fully covered.
        while len(self._samples) > 2 and self._samples[1][0] <= now - RATE_WINDOW_S:
            self._samples.popleft()
        if now - self._last_draw >= self.period:
            self._last_draw = now
            self._emit(self._line(now, final=False), final=False)

    def finish(self) -> None:
        """Print the final state (with the average rate over the whole run) and end the line."""
        if self._finished:
            return
        self._finished = True
        self._emit(self._line(self.clock(), final=True), final=True)

    def _line(self, now: float, *, final: bool) -> str:
        if final:
            elapsed = now - self.started
            rate = self.resources / elapsed if elapsed > 0 else None
        else:
            rate = self._rate(now, 1)
        parts = [f"loaded {_plural(self.resources, 'resource')} ({'-' if rate is None else round(rate)}/s)"]
        if self.total_bytes is not None:
            percent = min(100, self.bytes_done * 100 // self.total_bytes)
            parts.append(f"{percent}% of input")
            if not final:
                byte_rate = self._rate(now, 2)
                remaining = max(self.total_bytes - self.bytes_done, 0)
                eta = remaining / byte_rate if byte_rate else None
                parts.append(f"ETA {'-:--:--' if eta is None else format_duration(eta)}")
        parts.append(_plural(self.errors, "error"))
        return ", ".join(parts)

    def _rate(self, now: float, field: int) -> float | None:
        base = self._samples[0]
        newest = self._samples[-1]
        seconds = now - base[0]
        return (newest[field] - base[field]) / seconds if seconds > 0 else None

    def _emit(self, line: str, *, final: bool) -> None:
        if self.tty:
            pad = " " * max(self._drawn_width - len(line), 0)
            self._drawn_width = len(line)
            self.stream.write(f"\r{line}{pad}" + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def summary(counts: dict[str, int], errors: Sequence[LoadError], seconds: float, *, max_errors: int = 50) -> str:
    """The end-of-run report: resources by type, the total and rate, then the errors (at most
    ``max_errors`` of them listed).  No trailing newline."""
    total = sum(counts.values())
    rate = f" ({round(total / seconds)}/s)" if seconds > 0 else ""
    lines = [f"loaded {_plural(total, 'resource')} in {format_duration(seconds)}{rate}"]
    rows = [*sorted(counts.items()), ("total", total)]
    name_width = max(len(name) for name, _ in rows)
    count_width = max(len(str(count)) for _, count in rows)
    lines += [f"  {name:<{name_width}}  {count:>{count_width}}" for name, count in rows]
    if not errors:
        lines.append("no errors")
        return "\n".join(lines)
    lines.append(f"{_plural(len(errors), 'error')}:")
    for error in errors[:max_errors]:
        where = error.source if error.entry is None else f"{error.source} [entry {error.entry}]"
        lines.append(f"  {where}: {error.message}")
    if len(errors) > max_errors:
        lines.append(f"  ... and {len(errors) - max_errors} more")
    return "\n".join(lines)


def format_duration(seconds: float) -> str:
    """``h:mm:ss``, rounded to the second."""
    whole = max(round(seconds), 0)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or already closed
        return False
