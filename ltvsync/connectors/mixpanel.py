"""Mixpanel pull connector: raw events (export API) and user profiles (engage API).

Uses mixpanel-utils 2.2.7 for transport, auth and residency hosts, but calls its ``request()``
method rather than ``query_export``/``query_engage`` because (API-REFERENCE §2.3-2.6):
* ``query_export`` crashes with ``AttributeError`` on any 4xx (``request()`` returns ``None``)
  and one malformed or blank JSONL line kills the whole export; we parse lines ourselves and
  quarantine a bad line instead.
* ``query_engage`` fetches all pages concurrently in one go, so one 429 loses every page; we page
  sequentially (Mixpanel's documented "page+1 while len(results) >= page_size"), one retry each.
The library's own instant, back-off-free retries are switched off (``max_retries=1``) so that the
one ``RetryPolicy`` owns retrying.  ``None`` from ``request()`` is classified by the HTTP status the
library logs (429 → transient, 401/403 → auth, ...); its bare ``BaseException`` → ``TransientError``.

Events are incremental by UTC day: the cursor is the last exported day (ISO date, capped at
yesterday because today is not complete).  Each read re-exports from ``cursor - lag_days``
(inclusive) so late events arrive; de-duplication is by ``$insert_id`` (the store upserts on
``(source, source_id)``), so a late or re-read event is loaded once.  Dates are UTC, which holds for
projects created after 2023-01-01 (older projects export in the project timezone).

Vendor docs: developer.mixpanel.com/reference/raw-event-export (JSONL, inclusive dates, not
deduplicated), developer.mixpanel.com/reference/engage-query, docs.mixpanel.com/reference/rate-limits.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from mixpanel_utils import MixpanelUtils

from ltvsync.config.settings import MixpanelSettings
from ltvsync.connectors.base import StreamSpec
from ltvsync.connectors.http import error_for_status
from ltvsync.core.errors import ConfigError, TransientError
from ltvsync.core.records import (
    CustomerRecord,
    EventKind,
    EventRecord,
    Page,
    PurchaseRecord,
    Record,
    Rejection,
)
from ltvsync.core.retry import RetryPolicy

SOURCE = "mixpanel"
# Days per export request: a two-year backfill takes 24 requests, inside the 60 queries/hour
# export limit (7-day windows needed 105 and stalled on 429s); memory stays bounded by a month.
EXPORT_WINDOW_DAYS = 31
ENGAGE_PAGE_SIZE = 1000  # Mixpanel's fixed engage page size
# Only these profile properties are fetched: smaller pages, no unrelated personal data.
PROFILE_PROPERTIES = ["$email", "$name", "$created", "$last_seen"]
MIXPANEL_TIMEOUT = 300
log = logging.getLogger(__name__)
_STATUS_PREFIX = "HTTP Error Code: "
_HEADERS_PREFIX = "Request Headers: "
EVENTS_STREAM = "events"
PROFILES_STREAM = "profiles"
# Event properties naming the person a referral event refers (first present wins).
REFERRED_PROPERTIES = ("referred_email", "referred_id")
CURRENCY_CODE_LENGTH = 3  # ISO 4217
Scalar = str | float | int | bool | None


# -- wire payload → records (pure) -------------------------------------------------------------


# The C scanner behind ``json.loads``, called directly for the usual one-object line (saves the
# wrapper's per-call checks on every exported event); anything else goes through ``json.loads``.
_ScanOnce = Callable[[str, int], tuple[Any, int]]
_scan_object: _ScanOnce = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def parse_line(line: str) -> Any:
    """``json.loads(line)``: same value, and the same error for a line that is not valid JSON."""
    if line[:1] == "{":
        try:
            value, end = _scan_object(line, 0)
        except (StopIteration, ValueError):
            pass  # json.loads below raises the error with its usual message
        else:
            if end == len(line):
                return value
    return json.loads(line)


def reject(stream: str, payload: object, reason: str) -> Rejection:
    text = payload if isinstance(payload, str) else json.dumps(payload, default=str, sort_keys=True)
    return Rejection(SOURCE, stream, text, reason)


def _properties(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    props = raw["properties"]
    if not isinstance(props, Mapping):
        raise TypeError("properties is not an object")
    return props


def _event_time(props: Mapping[str, Any]) -> datetime:
    value = props["time"]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"time is not a number: {value!r}")
    return datetime.fromtimestamp(value, UTC)


def event_day(raw: Mapping[str, Any]) -> date:
    """The UTC day an exported event happened on."""
    return _event_time(_properties(raw)).date()


def insert_id(name: str, distinct_id: str, props: Mapping[str, Any]) -> str:
    """``$insert_id``, or -- for events sent without one (old SDKs, server imports) -- a stable hash
    of event, distinct_id and time, so a re-export of the same event still maps to the same key."""
    given = props.get("$insert_id")
    if isinstance(given, str) and given:
        return given
    digest = hashlib.sha256(f"{name}\x1f{distinct_id}\x1f{props.get('time')}".encode()).hexdigest()
    return f"h-{digest[:32]}"


def _scalar(value: Any) -> Scalar:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return json.dumps(value, default=str, sort_keys=True)  # lists/objects kept, as JSON text


# Exact types that pass ``_scalar`` unchanged: checked with one set lookup per value, the
# conversion runs per exported event (hundreds of thousands per backfill).
_PLAIN_TYPES = frozenset({str, int, float, bool, type(None)})
_STR_TYPE = frozenset({str})


def _scalar_properties(props: Mapping[str, Any]) -> dict[str, Scalar]:
    """``{str(k): _scalar(v)}``, without a call per property in the usual all-scalar case."""
    # Set operations over ``map(type, ...)`` run in C: no Python frame per property.
    if _STR_TYPE.issuperset(map(type, props)) and _PLAIN_TYPES.issuperset(map(type, props.values())):
        return dict(props)
    return {str(k): _scalar(v) for k, v in props.items()}


def _referred(props: Mapping[str, Any]) -> str | None:
    for prop in REFERRED_PROPERTIES:
        value = props.get(prop)
        if value not in (None, ""):
            return str(value)
    return None


def convert_event(
    raw: Mapping[str, Any],
    settings: MixpanelSettings,
    *,
    currencies: frozenset[str] | None,
    default_currency: str | None,
) -> tuple[list[Record], list[Rejection]]:
    """One exported event → an EventRecord, plus a PurchaseRecord (or Rejection) for purchases."""
    return _convert_event(raw, None, settings, currencies, default_currency)


def _convert_event(
    raw: Mapping[str, Any],
    occurred_at: datetime | None,
    settings: MixpanelSettings,
    currencies: frozenset[str] | None,
    default_currency: str | None,
) -> tuple[list[Record], list[Rejection]]:
    """``convert_event`` given the event time when already parsed (the export parses it to file
    the event under its day), so each event's time is parsed once."""
    try:
        props = _properties(raw)
        name = raw["event"]
        distinct_id = props["distinct_id"]
        if not isinstance(name, str) or not name or distinct_id in (None, ""):
            raise ValueError("event name or distinct_id missing")
        if occurred_at is None:
            occurred_at = _event_time(props)
    except (KeyError, TypeError, ValueError, OverflowError, OSError) as exc:
        return [], [reject(EVENTS_STREAM, raw, f"bad event: {type(exc).__name__}: {exc}")]
    distinct = str(distinct_id)
    source_id = insert_id(name, distinct, props)
    kind_name = settings.events.get(name, EventKind.CUSTOM.value)
    kind = EventKind(kind_name) if kind_name in EventKind._value2member_map_ else EventKind.CUSTOM
    event = EventRecord(
        source=SOURCE,
        source_id=source_id,
        customer_source_id=distinct,
        kind=kind,
        name=name,
        occurred_at=occurred_at,
        properties=_scalar_properties(props),
        referred=_referred(props) if kind is EventKind.REFERRAL else None,
    )
    if kind is not EventKind.PURCHASE:
        return [event], []
    try:
        purchase = _purchase(props, settings, source_id, distinct, occurred_at, currencies, default_currency)
    except ValueError as exc:
        return [event], [reject(EVENTS_STREAM, raw, f"bad purchase: {exc}")]
    return [event, purchase], []


def _purchase(
    props: Mapping[str, Any],
    settings: MixpanelSettings,
    source_id: str,
    distinct_id: str,
    at: datetime,
    currencies: frozenset[str] | None,
    default_currency: str | None,
) -> PurchaseRecord:
    value = props.get(settings.amount_property)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{settings.amount_property} is not a number: {value!r}")
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation as exc:
        raise ValueError(f"{settings.amount_property} is not a number: {value!r}") from exc
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"{settings.amount_property} must be a finite amount >= 0: {value!r}")
    currency = props.get(settings.currency_property) or default_currency
    code = currency.strip().upper() if isinstance(currency, str) else ""
    known = code.isalpha() and len(code) == CURRENCY_CODE_LENGTH
    if not known or (currencies is not None and code not in currencies):
        raise ValueError(f"unknown currency {currency!r}")
    email = props.get("$email")
    return PurchaseRecord(
        source=SOURCE,
        source_id=source_id,
        customer_source_id=distinct_id,
        customer_email=email if isinstance(email, str) and email else None,
        amount=amount,
        currency=code,
        purchased_at=at,
        updated_at=at,
    )


def _profile_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    # Mixpanel profile dates carry no offset; they are UTC.
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def convert_profile(raw: Mapping[str, Any], now: datetime) -> CustomerRecord:
    """One engage result → CustomerRecord (``$last_seen`` as the update time when present)."""
    distinct_id = raw["$distinct_id"]
    if distinct_id in (None, ""):
        raise ValueError("$distinct_id missing")
    props = raw.get("$properties") or {}
    if not isinstance(props, Mapping):
        raise TypeError("$properties is not an object")
    created = _profile_time(props.get("$created"))
    email, name = props.get("$email"), props.get("$name")
    return CustomerRecord(
        source=SOURCE,
        source_id=str(distinct_id),
        email=email if isinstance(email, str) and email else None,
        name=name if isinstance(name, str) and name else None,
        created_at=created,
        updated_at=_profile_time(props.get("$last_seen")) or created or now,
    )


def dedupe_by_source_id(records: Sequence[Record]) -> list[Record]:
    """One record per (type, source_id), the last one seen: exports are not de-duplicated."""
    kept: dict[tuple[str, str], Record] = {}
    for record in records:
        kept[(type(record).__name__, record.source_id)] = record
    return list(kept.values())


class _StatusCapture(logging.Filter):
    """While attached: remembers the HTTP status mixpanel-utils logs before returning ``None``
    (per thread), and routes its records to our logger at debug, minus its header dump."""

    def __init__(self) -> None:
        super().__init__()
        self.local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(_STATUS_PREFIX):
            with contextlib.suppress(ValueError):
                self.local.status = int(message[len(_STATUS_PREFIX) :])
        # The library logs request headers (Basic credentials) at debug level: never let them out.
        # Its ERROR lines for a 429 we are about to retry mislead operators (and bypass our log
        # format through its own stderr handler): keep them, at debug, in our logger instead.
        if not message.startswith(_HEADERS_PREFIX):
            log.debug("mixpanel-utils %s: %s", record.levelname, message)
        return False

    def reset(self) -> None:
        self.local.status = None

    @property
    def status(self) -> int | None:
        return getattr(self.local, "status", None)


def _api_root(url: str) -> str:
    """Accept ``http://host:port`` or ``http://host:port/api``; the library wants the latter."""
    url = url.rstrip("/")
    return url if url.endswith("/api") else f"{url}/api"


class MixpanelSource:
    """Source for Mixpanel ``events`` (day-window incremental) and ``profiles`` (full refresh)."""

    name = SOURCE

    def __init__(
        self,
        settings: MixpanelSettings,
        *,
        client: MixpanelUtils | None = None,
        policy: RetryPolicy | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        currencies: frozenset[str] | None = None,
        default_currency: str | None = None,
    ) -> None:
        """``currencies``: accepted currency codes (e.g. the LTV fx table's keys); ``None`` accepts any
        three-letter code.  ``default_currency`` applies to purchases without a currency property."""
        self.settings = settings
        self.policy = policy or RetryPolicy()
        self.now = now
        self.currencies = currencies
        self.default_currency = default_currency
        self.start_date = self._parse_day(settings.start_date, "mixpanel.start_date")
        if client is None:
            if settings.api_secret is None:
                raise ConfigError("mixpanel: set mixpanel.api_secret (LTVSYNC_MIXPANEL__API_SECRET)")
            client = MixpanelUtils(
                settings.api_secret.get_secret_value(),
                project_id=settings.project_id,
                timeout=MIXPANEL_TIMEOUT,
                max_retries=1,
                residency=settings.residency,
            )
        if settings.export_url:
            client.raw_api = _api_root(settings.export_url)
        if settings.api_url:
            client.formatted_api = _api_root(settings.api_url)
        self.client = client
        self._status = _StatusCapture()
        self._calls = 0

    @staticmethod
    def _parse_day(value: str, where: str) -> date:
        try:
            return date.fromisoformat(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: expected YYYY-MM-DD, got {value!r}") from exc

    def streams(self) -> Sequence[StreamSpec]:
        return [
            StreamSpec(EVENTS_STREAM, "event", cursor_field="time", is_sorted=True),
            StreamSpec(PROFILES_STREAM, "customer", primary_key="source_id", is_sorted=False),
        ]

    def api_calls(self) -> int:
        return self._calls

    def check(self) -> None:
        """Validate the event mapping, then export one event of yesterday (proves the secret)."""
        kinds = {kind.value for kind in EventKind}
        bad = {name: kind for name, kind in self.settings.events.items() if kind not in kinds}
        if bad:
            raise ConfigError(f"mixpanel.events: unknown kind(s) {bad}; known: {', '.join(sorted(kinds))}")
        day = (self.now().date() - timedelta(days=1)).isoformat()
        self._request(self.client.raw_api, "export", {"from_date": day, "to_date": day, "limit": 1})

    # -- transport -----------------------------------------------------------------------------

    def _request(self, base: str, endpoint: str, params: dict[str, Any]) -> str:
        """One library request, classified and retried per policy."""
        what = f"mixpanel {endpoint}"

        def attempt() -> str:
            self._calls += 1
            self._status.reset()
            logger = MixpanelUtils.LOGGER
            logger.addFilter(self._status)
            try:
                body = self.client.request(base, [endpoint], dict(params))
            except (KeyboardInterrupt, SystemExit, GeneratorExit):
                raise
            except BaseException as exc:  # mixpanel-utils raises a bare BaseException when giving up
                raise TransientError(f"{what}: request failed ({type(exc).__name__})") from exc
            finally:
                logger.removeFilter(self._status)
            if body is None:
                # 4xx: the library logged the status and returned None; 429 is the common case.
                status = self._status.status
                if status is None:
                    raise TransientError(f"{what}: no response (rate limited?)")
                raise error_for_status(status, what=what)
            return str(body)

        return self.policy.call(attempt, what=what)

    # -- read ----------------------------------------------------------------------------------

    def read(self, stream: str, cursor: str | None) -> Iterator[Page]:
        if stream == EVENTS_STREAM:
            return self._read_events(cursor)
        if stream == PROFILES_STREAM:
            return self._read_profiles()
        raise ConfigError(f"mixpanel: unknown stream {stream!r}; known: {EVENTS_STREAM}, {PROFILES_STREAM}")

    def export_range(self, cursor: str | None) -> tuple[date, date]:
        """Inclusive UTC day range one read exports: (cursor - lag) or start_date, to today."""
        today = self.now().astimezone(UTC).date()
        if cursor:
            first = self._parse_day(cursor, "mixpanel events cursor") - timedelta(days=self.settings.lag_days)
            first = max(first, self.start_date)
        else:
            first = self.start_date
        return first, today

    def _read_events(self, cursor: str | None) -> Iterator[Page]:
        first, last = self.export_range(cursor)
        yesterday = last - timedelta(days=1)
        floor = self._parse_day(cursor, "mixpanel events cursor") if cursor else first
        day = first
        while day <= last:
            window_end = min(day + timedelta(days=EXPORT_WINDOW_DAYS - 1), last)
            calls_before = self._calls
            by_day, stray = self._export_window(day, window_end)
            for offset in range((window_end - day).days + 1):
                current = day + timedelta(days=offset)
                records, rejections = by_day.get(current, ([], []))
                if offset == 0:
                    rejections = [*stray, *rejections]
                # Today is still filling up: never let the cursor claim it (re-read next time);
                # and the lag re-read must not move the cursor backwards.
                page_cursor = max(min(current, yesterday), floor).isoformat()
                calls = self._calls - calls_before if offset == 0 else 0
                yield Page(dedupe_by_source_id(records), page_cursor, rejections, api_calls=calls)
            day = window_end + timedelta(days=1)

    def _export_window(
        self, first: date, last: date
    ) -> tuple[dict[date, tuple[list[Record], list[Rejection]]], list[Rejection]]:
        params: dict[str, Any] = {"from_date": first.isoformat(), "to_date": last.isoformat()}
        if self.settings.events:
            params["event"] = sorted(self.settings.events)  # JSON-encoded by the library
        body = self._request(self.client.raw_api, "export", params)
        by_day: dict[date, tuple[list[Record], list[Rejection]]] = {}
        stray: list[Rejection] = []
        settings, currencies, default_currency = self.settings, self.currencies, self.default_currency
        for line in body.splitlines():
            if not line.strip():
                continue
            try:
                raw = parse_line(line)
                occurred_at = _event_time(_properties(raw))
                when = occurred_at.date()
            except (ValueError, TypeError, KeyError, AttributeError, OverflowError, OSError) as exc:
                # OverflowError/OSError: a time beyond the platform's range (e.g. 1e20) is bad input
                # like any other, not a reason to fail the whole stream.
                stray.append(reject(EVENTS_STREAM, line, f"unreadable event: {type(exc).__name__}: {exc}"))
                continue
            # Events outside the window (project timezone skew) are filed under its nearest day.
            bucket = by_day.setdefault(min(max(when, first), last), ([], []))
            records, rejections = _convert_event(raw, occurred_at, settings, currencies, default_currency)
            bucket[0].extend(records)
            bucket[1].extend(rejections)
        return by_day, stray

    def _read_profiles(self) -> Iterator[Page]:
        # Engage has no change feed: a full refresh, not sorted by any cursor, so only the last
        # page carries a cursor (the refresh instant, for the status page).
        params: dict[str, Any] = {"output_properties": PROFILE_PROPERTIES}
        page_number = 0
        while True:
            calls_before = self._calls
            body = self._engage_page(params)
            results = body.get("results") or []
            records: list[Record] = []
            rejections: list[Rejection] = []
            for raw in results:
                try:
                    records.append(convert_profile(raw, self.now()))
                except (ValueError, TypeError, KeyError, AttributeError) as exc:
                    rejections.append(reject(PROFILES_STREAM, raw, f"{type(exc).__name__}: {exc}"))
            page_size = int(body.get("page_size") or ENGAGE_PAGE_SIZE)
            total = body.get("total")
            if isinstance(total, int) and not isinstance(total, bool):
                # With a total we know the last page, saving the empty request after a full one.
                done = not results or (page_number + 1) * page_size >= total
            else:
                done = len(results) < page_size
            done = done or not body.get("session_id")
            cursor = self.now().isoformat() if done else None
            yield Page(dedupe_by_source_id(records), cursor, rejections, api_calls=self._calls - calls_before)
            if done:
                return
            page_number += 1
            params = {**params, "session_id": body["session_id"], "page": page_number}

    def _engage_page(self, params: Mapping[str, Any]) -> Mapping[str, Any]:
        text = self._request(self.client.formatted_api, "engage", dict(params))
        try:
            body = json.loads(text)
        except ValueError as exc:
            raise TransientError("mixpanel engage: response is not JSON") from exc
        if not isinstance(body, dict) or not isinstance(body.get("results", []), list):
            raise TransientError("mixpanel engage: unexpected response shape")
        return body
