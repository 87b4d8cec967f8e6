"""The one retry policy: a frozen value wrapping tenacity.

Exponential backoff with full jitter, bounded attempts, honours ``Retry-After`` (as carried by
``TransientError.retry_after``), logs each retry.  It wraps one request or one batch write, never
a whole sync: the next scheduled cycle is the outer retry.  Tests inject ``RetryPolicy.no_wait()``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_base, wait_random_exponential

from ltvsync.core.errors import TransientError

T = TypeVar("T")
log = logging.getLogger(__name__)


class _WaitRetryAfter(wait_base):
    """Wait what the server asked for (capped), else fall back to jittered exponential backoff."""

    def __init__(self, fallback: wait_base, cap: float) -> None:
        self.fallback = fallback
        self.cap = cap

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, TransientError) and exc.retry_after is not None:
            return float(min(max(exc.retry_after, 0.0), self.cap))
        return float(self.fallback(retry_state))


@dataclass(frozen=True)
class RetryPolicy:
    """How to retry one request; a value so it can be configured, compared and injected."""

    max_attempts: int = 6
    initial_wait: float = 0.5
    max_wait: float = 30.0
    # The longest Retry-After we honour before giving up to the next cycle.
    max_retry_after: float = 60.0

    @classmethod
    def no_wait(cls, max_attempts: int = 6) -> RetryPolicy:
        """A policy that never sleeps: for tests and the sandbox."""
        return cls(max_attempts=max_attempts, initial_wait=0.0, max_wait=0.0, max_retry_after=0.0)

    def call(self, fn: Callable[[], T], *, what: str = "request") -> T:
        """Run ``fn``, retrying ``TransientError`` per this policy; re-raise the last one."""

        def _log(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            # A server that says when to come back (429 + Retry-After) is pacing us, not failing:
            # that is routine and logged at INFO; anything else is worth a WARNING.
            paced = isinstance(exc, TransientError) and exc.retry_after is not None
            level = logging.INFO if paced else logging.WARNING
            log.log(
                level, "retrying %s (attempt %d/%d): %s", what, state.attempt_number, self.max_attempts, exc
            )

        retrying = Retrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=_WaitRetryAfter(
                wait_random_exponential(multiplier=self.initial_wait, max=self.max_wait), self.max_retry_after
            ),
            retry=retry_if_exception_type(TransientError),
            before_sleep=_log,
            reraise=True,
        )
        return retrying(fn)
