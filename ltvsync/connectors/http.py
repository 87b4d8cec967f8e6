"""The one shared HTTP helper: error classification, exception mapping, one retried GET, pacing.

* ``STATUS_TABLE`` classifies an HTTP status into whose fault it is (transient, auth, configuration,
  a single record) -- a table, as the Airbyte CDK does, not branching code spread over connectors.
* ``map_exceptions()`` translates ``requests`` exceptions into ``ltvsync.core.errors`` at exactly
  one boundary (httpx's ``map_exceptions`` idea); nothing above a connector sees ``requests``.
* ``get_json()`` wraps ONE request with the ``RetryPolicy`` (never a whole sync).
* ``Throttle`` is a token bucket with an injected clock and sleep, so tests measure pacing without
  sleeping (Airtable: 5 req/s per base; Zendesk incremental exports: 10 req/min).

Vendor docs relied on: RFC 9110 §10.2.3 (``Retry-After`` as delta-seconds or HTTP-date);
airtable.com/developers/web/api/rate-limits; developer.zendesk.com/api-reference/introduction/rate-limits.
Error messages carry the status, the URL path and a short body excerpt -- never headers, so
credentials (Basic/Bearer) cannot leak into logs.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import Enum
from typing import Any
from urllib.parse import urlsplit

import requests

from ltvsync.core.errors import AuthError, ConfigError, LtvsyncError, RecordError, TransientError
from ltvsync.core.retry import RetryPolicy

DEFAULT_TIMEOUT = 60.0
# Keep error messages short: a body excerpt helps diagnosis, a whole HTML error page does not.
MAX_BODY_EXCERPT = 300


class Fault(Enum):
    """Whose fault a failure is; decides retry (transient) vs fail fast vs quarantine one record."""

    TRANSIENT = "transient"
    AUTH = "auth"
    CONFIG = "config"
    RECORD = "record"


@dataclass(frozen=True)
class Rule:
    """One row of the classification table: the fault for reads and for record writes."""

    read: Fault
    write: Fault
    why: str


# Reads are built from configuration (object names, base ids, start times), so a 400/404/422 on a
# read means the configuration is wrong; on a record write, 400/422 blame that batch's records.
STATUS_TABLE: Mapping[int, Rule] = {
    400: Rule(Fault.CONFIG, Fault.RECORD, "bad request"),
    401: Rule(Fault.AUTH, Fault.AUTH, "credentials refused"),
    403: Rule(Fault.AUTH, Fault.AUTH, "not permitted (role or token scope)"),
    404: Rule(Fault.CONFIG, Fault.CONFIG, "configured resource not found"),
    408: Rule(Fault.TRANSIENT, Fault.TRANSIENT, "request timeout"),
    409: Rule(Fault.TRANSIENT, Fault.TRANSIENT, "conflict; retry"),
    413: Rule(Fault.CONFIG, Fault.RECORD, "payload too large"),
    422: Rule(Fault.CONFIG, Fault.RECORD, "validation failed"),
    429: Rule(Fault.TRANSIENT, Fault.TRANSIENT, "rate limited"),
}
# Any 5xx is the vendor's trouble; other 4xx default to configuration (reads) / record (writes).
SERVER_ERROR_RULE = Rule(Fault.TRANSIENT, Fault.TRANSIENT, "server error")
OTHER_CLIENT_ERROR_RULE = Rule(Fault.CONFIG, Fault.RECORD, "client error")

# Transport failures: the table for exceptions (checked in order; first isinstance match wins).
EXCEPTION_TABLE: tuple[tuple[type[BaseException], Fault], ...] = (
    (requests.exceptions.InvalidURL, Fault.CONFIG),
    (requests.exceptions.MissingSchema, Fault.CONFIG),
    (requests.exceptions.InvalidSchema, Fault.CONFIG),
    (requests.exceptions.SSLError, Fault.CONFIG),  # a wrong CA bundle is not fixed by retrying
    (requests.exceptions.Timeout, Fault.TRANSIENT),
    (requests.exceptions.ConnectionError, Fault.TRANSIENT),
    (requests.exceptions.RetryError, Fault.TRANSIENT),  # urllib3 gave up (pyairtable 429 retries)
    (requests.exceptions.ChunkedEncodingError, Fault.TRANSIENT),
    (requests.exceptions.ContentDecodingError, Fault.TRANSIENT),
    (requests.exceptions.RequestException, Fault.TRANSIENT),
)

_ERROR_TYPES: Mapping[Fault, type[LtvsyncError]] = {
    Fault.TRANSIENT: TransientError,
    Fault.AUTH: AuthError,
    Fault.CONFIG: ConfigError,
    Fault.RECORD: RecordError,
}


def rule_for(status: int) -> Rule:
    """The classification row for ``status``."""
    if status in STATUS_TABLE:
        return STATUS_TABLE[status]
    if status >= 500:
        return SERVER_ERROR_RULE
    return OTHER_CLIENT_ERROR_RULE


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date); None if absent/bad."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(float(text), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


def error_for_status(
    status: int,
    *,
    what: str,
    detail: str = "",
    retry_after: float | None = None,
    write: bool = False,
) -> LtvsyncError:
    """Build the classified error for an HTTP ``status`` (``write`` selects the record-write column)."""
    rule = rule_for(status)
    fault = rule.write if write else rule.read
    message = f"{what}: HTTP {status} ({rule.why})"
    if detail:
        message += f": {detail[:MAX_BODY_EXCERPT]}"
    if fault is Fault.TRANSIENT:
        return TransientError(message, retry_after=retry_after)
    return _ERROR_TYPES[fault](message)


def error_for_response(response: requests.Response, *, what: str, write: bool = False) -> LtvsyncError:
    """Classify a non-2xx ``requests`` response (body excerpt included, headers never)."""
    return error_for_status(
        response.status_code,
        what=what,
        detail=(response.text or "").strip(),
        retry_after=parse_retry_after(response.headers.get("Retry-After")),
        write=write,
    )


def describe_url(url: str) -> str:
    """Host and path only: query strings may carry cursors or tokens we do not want in logs."""
    parts = urlsplit(url)
    return f"{parts.netloc}{parts.path}"


@contextlib.contextmanager
def map_exceptions(what: str, *, write: bool = False) -> Iterator[None]:
    """Translate ``requests`` exceptions raised inside the block into ltvsync errors.

    ``HTTPError`` with a response is classified by status; transport errors by ``EXCEPTION_TABLE``.
    The original exception is chained (``from``) for debugging, but our message names no secret.
    """
    try:
        yield
    except requests.exceptions.HTTPError as exc:
        if exc.response is not None:
            raise error_for_response(exc.response, what=what, write=write) from exc
        raise TransientError(f"{what}: {type(exc).__name__}") from exc
    except requests.exceptions.RequestException as exc:
        for exc_type, fault in EXCEPTION_TABLE:
            if isinstance(exc, exc_type):
                error_type = _ERROR_TYPES[fault]
                raise error_type(f"{what}: {type(exc).__name__}") from exc
        raise  # pragma: no cover - RequestException is the table's last row


def get_json(
    session: requests.Session,
    url: str,
    params: Mapping[str, str | int] | None,
    policy: RetryPolicy,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    before_each: Callable[[], None] | None = None,
) -> Any:
    """GET ``url`` and decode JSON, retrying transient failures with ``policy``.

    ``before_each`` runs before every attempt (pacing, request counting), so retries are paced
    and counted too.  A 2xx whose body is not JSON is treated as transient (a proxy error page).
    """
    what = f"GET {describe_url(url)}"

    def attempt() -> Any:
        if before_each is not None:
            before_each()
        with map_exceptions(what):
            response = session.get(url, params=params, timeout=timeout)
        if not response.ok:
            raise error_for_response(response, what=what)
        try:
            return response.json()
        except ValueError as exc:
            raise TransientError(f"{what}: response is not JSON") from exc

    return policy.call(attempt, what=what)


class Throttle:
    """Token bucket: at most ``rate`` requests per second on average, bursts up to ``burst``.

    Clock and sleep are injected so tests can measure pacing without sleeping.  Thread-safe,
    because pyairtable or a paginator may call from several threads.
    """

    def __init__(
        self,
        rate: float,
        *,
        burst: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ConfigError(f"throttle rate must be positive, got {rate}")
        self.rate = rate
        self.burst = max(burst, 1.0)
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.burst
        self._last = clock()
        self._lock = threading.Lock()

    def acquire(self) -> None:
        """Take one token, sleeping until one is available."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            if self._tokens < 1.0:
                wait = (1.0 - self._tokens) / self.rate
                self._sleep(wait)
                self._last = self._clock()
                self._tokens = 0.0
            else:
                self._tokens -= 1.0
