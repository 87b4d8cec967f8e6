"""The one boundary between ltvsync and Salesforce: session, login, error table, API budget.

Builds a ``simple_salesforce.Salesforce`` (1.12.10) from ``SalesforceSettings`` in one of three
auth modes (direct session id, username/password/security-token SOAP login, OAuth username-password
or client-credentials), runs every call through the injected ``RetryPolicy`` and translates every
``requests``/simple-salesforce exception into the ltvsync error tree with a *table*, so nothing
above the connector sees vendor exceptions.  It also counts requests and tracks the daily API
budget from the ``Sforce-Limit-Info: api-usage=N/M`` response header.

Vendor docs relied on: Salesforce REST API guide "Status Codes and Error Responses"
(errorcodes.htm: error bodies are ``[{"message", "errorCode"}]``; REQUEST_LIMIT_EXCEEDED is a 403),
"Sforce-Limit-Info" (headers_api_usage.htm), and simple-salesforce api.py/util.py/exceptions.py
(status → exception class mapping; ``session=`` is used for every call, including login).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from enum import Enum
from typing import Any, TypedDict, TypeVar

import requests
from simple_salesforce.api import Salesforce
from simple_salesforce.exceptions import (
    SalesforceAuthenticationFailed,
    SalesforceError,
    SalesforceOperationError,
)

from ltvsync.config.settings import SalesforceSettings
from ltvsync.core.errors import (
    AuthError,
    BudgetExhaustedError,
    ConfigError,
    LtvsyncError,
    RecordError,
    TransientError,
)
from ltvsync.core.retry import RetryPolicy

T = TypeVar("T")
log = logging.getLogger(__name__)

# Seconds to wait for one HTTP response; simple-salesforce sets no timeout of its own.
REQUEST_TIMEOUT_SECONDS = 120.0
_LIMIT_INFO_RE = re.compile(r"(?:^|[;,\s])api-usage=(\d+)/(\d+)")


class ErrorKind(Enum):
    """Whose fault an error is, which decides what the caller does with it."""

    TRANSIENT = "transient"  # retry with the policy; the next cycle is the outer retry
    AUTH = "auth"  # credentials refused: fail the run, tell the operator
    CONFIG = "config"  # our query/mapping is wrong: fail at start-up with a message
    BUDGET = "budget"  # daily API allocation spent: end the stream at its last cursor
    RECORD = "record"  # this one request/record is permanently bad
    REQUERY = "requery"  # the query cursor expired: run the query again from the last position


class QueryExpiredError(LtvsyncError):
    """A ``nextRecordsUrl`` expired (15 minutes idle, or evicted); the reader re-runs its query.

    Not a ``TransientError``: retrying the same locator can never succeed.
    """


# (HTTP status, Salesforce errorCode) → kind.  ``None`` as errorCode is the status's fallback;
# statuses not listed fall back by class (5xx transient, other 4xx config).
ERROR_TABLE: dict[tuple[int, str | None], ErrorKind] = {
    (401, "INVALID_SESSION_ID"): ErrorKind.AUTH,
    (401, None): ErrorKind.AUTH,
    (403, "REQUEST_LIMIT_EXCEEDED"): ErrorKind.BUDGET,
    (403, "API_DISABLED_FOR_ORG"): ErrorKind.AUTH,
    (403, None): ErrorKind.AUTH,
    (400, "INVALID_FIELD"): ErrorKind.CONFIG,
    (400, "MALFORMED_QUERY"): ErrorKind.CONFIG,
    (400, "INVALID_TYPE"): ErrorKind.CONFIG,
    (400, "INVALID_QUERY_FILTER_OPERATOR"): ErrorKind.CONFIG,
    # A query cursor (nextRecordsUrl) expired or was evicted: re-running the query fixes it.
    (400, "INVALID_QUERY_LOCATOR"): ErrorKind.REQUERY,
    (400, "QUERY_TIMEOUT"): ErrorKind.TRANSIENT,
    (400, "UNABLE_TO_LOCK_ROW"): ErrorKind.TRANSIENT,
    (400, None): ErrorKind.CONFIG,
    (404, None): ErrorKind.CONFIG,
    (408, None): ErrorKind.TRANSIENT,
    (409, None): ErrorKind.TRANSIENT,
    (429, None): ErrorKind.TRANSIENT,
}

_KIND_TO_ERROR: dict[ErrorKind, type[LtvsyncError]] = {
    ErrorKind.AUTH: AuthError,
    ErrorKind.CONFIG: ConfigError,
    ErrorKind.BUDGET: BudgetExhaustedError,
    ErrorKind.RECORD: RecordError,
    ErrorKind.REQUERY: QueryExpiredError,
}


def classify_status(status: int, error_code: str | None) -> ErrorKind:
    """Look the (status, errorCode) pair up in ``ERROR_TABLE``, falling back by status class."""
    kind = ERROR_TABLE.get((status, error_code)) or ERROR_TABLE.get((status, None))
    if kind is not None:
        return kind
    return ErrorKind.TRANSIENT if status >= 500 else ErrorKind.CONFIG


def _error_details(content: Any) -> tuple[str | None, str]:
    """(errorCode, message) from a Salesforce error body: a JSON list, a dict or plain text."""
    first = content[0] if isinstance(content, list) and content else content
    if isinstance(first, dict):
        code = first.get("errorCode") or first.get("error")
        message = first.get("message") or first.get("error_description") or ""
        return (str(code) if code else None), str(message)
    if isinstance(first, bytes):
        return None, first.decode("utf-8", "replace")[:300]
    return None, str(first)[:300]


def translate(exc: Exception, what: str, retry_after: float | None = None) -> LtvsyncError:
    """Map one vendor/transport exception to the ltvsync error tree (never includes credentials)."""
    if isinstance(exc, LtvsyncError):
        return exc
    if isinstance(exc, SalesforceAuthenticationFailed):
        return AuthError(f"Salesforce login refused ({exc.code}): {exc.auth_message}")
    if isinstance(exc, SalesforceError):
        code, message = _error_details(exc.content)
        kind = classify_status(exc.status, code)
        text = f"Salesforce {what}: HTTP {exc.status} {code or ''} {message}".strip()
        if kind is ErrorKind.TRANSIENT:
            return TransientError(text, retry_after=retry_after)
        return _KIND_TO_ERROR[kind](text)
    if isinstance(exc, requests.Timeout | requests.ConnectionError):
        # The exception text names host and port only; headers (the session id) never appear.
        return TransientError(f"Salesforce {what}: {type(exc).__name__}: {exc}")
    if isinstance(exc, SalesforceOperationError):
        # A Bulk job that reached Failed/Aborted: permanent for this batch, retrying makes more jobs.
        return RecordError(f"Salesforce {what}: {exc}")
    if isinstance(exc, requests.RequestException):
        return TransientError(f"Salesforce {what}: {type(exc).__name__}: {exc}")
    raise exc


class QueryPage(TypedDict, total=False):
    """One page of ``query``/``queryAll``/``query_more``: ``nextRecordsUrl`` iff not ``done``."""

    totalSize: int
    done: bool
    nextRecordsUrl: str
    records: list[dict[str, Any]]


@dataclass(frozen=True)
class ApiUsage:
    """The org's daily API allocation as last reported by ``Sforce-Limit-Info``."""

    used: int
    total: int

    @property
    def remaining(self) -> int:
        return max(self.total - self.used, 0)


def parse_limit_info(header: str) -> ApiUsage | None:
    """``api-usage=18/5000; per-app-api-usage=...`` → ``ApiUsage(18, 5000)``; None if absent."""
    match = _LIMIT_INFO_RE.search(header)
    return ApiUsage(int(match.group(1)), int(match.group(2))) if match else None


def build_session(settings: SalesforceSettings) -> requests.Session:
    """A session for this org; with ``ca_bundle`` it trusts only that CA.

    ``trust_env = False`` because REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE would otherwise override
    ``verify`` (requests' merge_environment_settings).  Only when a bundle is configured (the
    sandbox), so production sessions keep honouring proxy variables.
    """
    session = requests.Session()
    if settings.ca_bundle:
        session.trust_env = False
        session.verify = settings.ca_bundle
    return session


def _secret(value: Any) -> str | None:
    return value.get_secret_value() if value is not None else None


class SalesforceClient:
    """A lazily-logged-in Salesforce handle with retries, error translation and budget tracking."""

    def __init__(
        self,
        settings: SalesforceSettings,
        *,
        session: requests.Session | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.session = session if session is not None else build_session(settings)
        self.retry = retry if retry is not None else RetryPolicy()
        self.requests_made = 0
        self.usage: ApiUsage | None = None
        self._retry_after: float | None = None
        self._sf: Salesforce | None = None
        self.session.hooks["response"].append(self._on_response)

    # -- bookkeeping ---------------------------------------------------------------------------
    def _on_response(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        """Count every request (REST, login and Bulk 2.0 alike) and read budget/Retry-After."""
        self.requests_made += 1
        usage = parse_limit_info(response.headers.get("Sforce-Limit-Info", ""))
        if usage is not None:
            self.usage = usage
        retry_after = response.headers.get("Retry-After")
        try:
            self._retry_after = float(retry_after) if retry_after else None
        except ValueError:
            self._retry_after = None

    def check_budget(self, reserve: float) -> None:
        """Raise ``BudgetExhaustedError`` once less than ``reserve`` of the daily budget is left."""
        usage = self.usage
        if usage is not None and usage.total > 0 and usage.remaining < reserve * usage.total:
            raise BudgetExhaustedError(
                f"Salesforce API budget: {usage.remaining}/{usage.total} requests left, "
                f"below the {reserve:.0%} kept for pushing"
            )

    # -- construction --------------------------------------------------------------------------
    def _login_kwargs(self) -> dict[str, Any]:
        s = self.settings
        if s.session_id is not None:
            if not s.instance_url:
                raise ConfigError("salesforce.instance_url is required with salesforce.session_id")
            return {"instance_url": s.instance_url, "session_id": _secret(s.session_id)}
        if s.username and s.password is not None and s.security_token is not None:
            return {
                "username": s.username,
                "password": _secret(s.password),
                "security_token": _secret(s.security_token),
                "domain": s.domain,
            }
        if s.username and s.password is not None and s.consumer_key and s.consumer_secret is not None:
            return {
                "username": s.username,
                "password": _secret(s.password),
                "consumer_key": s.consumer_key,
                "consumer_secret": _secret(s.consumer_secret),
                "domain": s.domain,
            }
        if s.consumer_key and s.consumer_secret is not None:
            if s.domain in ("login", "test"):
                raise ConfigError(
                    "salesforce.domain must be your My Domain (e.g. 'acme.my') for client-credentials login"
                )
            return {
                "consumer_key": s.consumer_key,
                "consumer_secret": _secret(s.consumer_secret),
                "domain": s.domain,
            }
        raise ConfigError(
            "salesforce: set session_id + instance_url, or username + password + security_token, "
            "or consumer_key + consumer_secret (+ username + password)"
        )

    @property
    def sf(self) -> Salesforce:
        """The simple-salesforce handle, logging in on first use (a login is a request too)."""
        if self._sf is None:
            kwargs = self._login_kwargs()

            def _build() -> Salesforce:
                return Salesforce(
                    version=self.settings.api_version,
                    session=self.session,
                    # Exact amounts: Decimal, never binary floats, for currency values.
                    parse_float=Decimal,
                    **kwargs,
                )

            self._sf = self.call(_build, what="login")
        return self._sf

    # -- calls ---------------------------------------------------------------------------------
    def call(self, fn: Callable[[], T], *, what: str) -> T:
        """Run one request under the retry policy; vendor exceptions leave as ltvsync errors."""

        def _once() -> T:
            self._retry_after = None
            try:
                return fn()
            except Exception as exc:  # translated by the table; a non-vendor error re-raises as is
                raise translate(exc, what, self._retry_after) from None

        return self.retry.call(_once, what=f"salesforce {what}")

    def query_page(self, soql: str, *, include_deleted: bool = False) -> QueryPage:
        """First page of a SOQL query (``queryAll`` when ``include_deleted``)."""
        sf = self.sf
        result: QueryPage = self.call(
            lambda: sf.query(soql, include_deleted=include_deleted, timeout=REQUEST_TIMEOUT_SECONDS),
            what="query",
        )
        return result

    def query_next(self, next_records_url: str) -> QueryPage:
        """The page behind a ``nextRecordsUrl`` (a path on the instance)."""
        sf = self.sf
        result: QueryPage = self.call(
            lambda: sf.query_more(next_records_url, identifier_is_url=True, timeout=REQUEST_TIMEOUT_SECONDS),
            what="query_more",
        )
        return result

    def describe(self, object_name: str) -> dict[str, dict[str, Any]]:
        """Field name → describe entry for ``object_name``; an unknown object is a ConfigError."""
        sf = self.sf
        try:
            result = self.call(lambda: sf.restful(f"sobjects/{object_name}/describe"), what="describe")
        except AuthError:
            raise
        except ConfigError as exc:
            raise ConfigError(f"Salesforce object {object_name!r} cannot be described: {exc}") from None
        fields = result.get("fields", []) if isinstance(result, dict) else []
        return {str(f["name"]): dict(f) for f in fields if isinstance(f, dict) and "name" in f}

    def restful(self, path: str, *, method: str, what: str, **kwargs: Any) -> Any:
        """A raw REST call on the versioned base URL (composite/sobjects has no helper)."""
        sf = self.sf
        return self.call(
            lambda: sf.restful(path, method=method, timeout=REQUEST_TIMEOUT_SECONDS, **kwargs), what=what
        )
