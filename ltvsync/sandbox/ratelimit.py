"""Sliding-window request limits for the emulators (Mixpanel export/query, Zendesk incremental).

Windows are measured on the monotonic clock, not the world clock: rate limits are about wall time
between requests.  ``Knobs.time_scale`` shrinks every window so tests can hit and leave a limit in
well under a second.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable


class SlidingWindow:
    """At most ``limit`` requests in any ``window`` seconds (times ``scale``)."""

    def __init__(self, limit: int, window: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self._hits: deque[float] = deque()
        self._lock = threading.Lock()
        self._monotonic = monotonic

    def acquire(self, scale: float = 1.0) -> float | None:
        """Record a request and return None, or refuse it and return seconds until a slot frees."""
        span = self.window * scale
        now = self._monotonic()
        with self._lock:
            while self._hits and self._hits[0] <= now - span:
                self._hits.popleft()
            if len(self._hits) >= self.limit:
                return max(self._hits[0] + span - now, 0.0)
            self._hits.append(now)
            return None

    def remaining(self, scale: float = 1.0) -> int:
        span = self.window * scale
        now = self._monotonic()
        with self._lock:
            return self.limit - sum(1 for t in self._hits if t > now - span)

    def reset(self) -> None:
        with self._lock:
            self._hits.clear()


def retry_after_header(seconds: float) -> str:
    """``Retry-After`` value: whole seconds as vendors send them, decimals only below one second.

    Sub-second values appear only when tests shrink windows with ``time_scale``; rounding them up to 1
    would make every rate-limit test sleep a full second.
    """
    if seconds >= 1.0:
        return str(int(seconds + 0.999))
    return f"{max(seconds, 0.001):.3f}"
