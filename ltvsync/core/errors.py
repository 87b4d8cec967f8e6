"""The error tree every layer above the connectors sees.

Connectors classify vendor and transport errors once, at their boundary, into these; nothing
above a connector catches ``requests`` or vendor exceptions.
"""

from __future__ import annotations


class LtvsyncError(Exception):
    """Base of every error ltvsync raises on purpose."""


class ConfigError(LtvsyncError):
    """The configuration is wrong; the message says what to fix.  Fails at start-up."""


class TransientError(LtvsyncError):
    """A retryable failure (429, 5xx, dropped connection).  ``retry_after`` in seconds if known."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BudgetExhaustedError(LtvsyncError):
    """The vendor's API budget is spent (Salesforce ``REQUEST_LIMIT_EXCEEDED``).

    The stream ends cleanly at its last committed cursor and resumes next cycle.
    """


class AuthError(ConfigError):
    """Credentials were refused (401/403 on auth)."""


class RecordError(LtvsyncError):
    """A single record is permanently bad; it is quarantined or reported, never retried blindly."""


class StoreError(LtvsyncError):
    """The store could not be opened, migrated or written."""


class LockHeldError(LtvsyncError):
    """Another process holds the single-cycle lock."""
