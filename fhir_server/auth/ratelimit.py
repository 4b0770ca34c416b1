"""A sliding-window rate limit for the token endpoint and the sign-in form.

The window lives in this process's memory: with N workers (or N nodes) a caller may get up to N
times the limit, and a restart forgets it.  That is deliberate: the limit is there to slow down
password and secret guessing and runaway clients, not to meter anyone, and keeping it out of the
database keeps a flood of requests from turning into a flood of writes.  Run one worker, or divide
the setting by the number of workers, when the exact figure matters.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

WINDOW_S = 60.0
_PRUNE_EVERY = 1024  # hits between sweeps of keys whose window has emptied
_MAX_KEYS = 100_000  # client ids come from the request, unauthenticated: memory must stay bounded


class RateLimiter:
    """At most ``limit`` requests per key in any ``window_s`` seconds; limit 0 disables the check."""

    def __init__(
        self,
        limit: int,
        window_s: float = WINDOW_S,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = _MAX_KEYS,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._max_keys = max_keys
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()
        self._since_prune = 0

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    def hit(self, *keys: str | None) -> int | None:
        """Count one request against every key (None keys are skipped).

        Returns None when every key was within its limit, else the whole seconds to wait before
        retrying (for Retry-After).  A refused request is not counted: a caller that waits as told
        gets through."""
        if not self.enabled:
            return None
        now = self._clock()
        horizon = now - self.window_s
        names = [k for k in keys if k is not None]
        with self._lock:
            self._maybe_prune(horizon)
            wait = 0.0
            for name in names:
                window = self._hits.get(name)
                if window is None:
                    continue
                while window and window[0] <= horizon:
                    window.popleft()
                if len(window) >= self.limit:
                    # The request that frees a slot is the oldest one still inside the window.
                    wait = max(wait, window[len(window) - self.limit] + self.window_s - now)
            if wait > 0:
                return max(1, math.ceil(wait))
            for name in names:
                self._hits.setdefault(name, deque()).append(now)
        return None

    def reset(self) -> None:
        with self._lock:
            self._hits.clear()

    def _maybe_prune(self, horizon: float) -> None:
        self._since_prune += 1
        if self._since_prune < _PRUNE_EVERY and len(self._hits) < self._max_keys:
            return
        self._since_prune = 0
        for name in [n for n, w in self._hits.items() if not w or w[-1] <= horizon]:
            del self._hits[name]
        # Still too many live keys (a flood of made-up client ids): forget the oldest ones.  They
        # lose their history, which only ever errs towards letting a request through.
        excess = len(self._hits) - self._max_keys
        for name in list(self._hits)[:max(0, excess)]:
            del self._hits[name]
