"""Zendesk pull connector: users and tickets from the cursor-based incremental export API.

Plain ``requests`` rather than zenpy (API-REFERENCE §4.5): zenpy redirects hosts through process-
global environment variables, blocks for ``Retry-After`` without a cap, and hides the checkpoint
cursor.  Here the first call sends ``start_time`` (from configuration -- never "now", which would
silently skip history), later calls follow the absolute ``after_url``; ``after_cursor`` is the
stream cursor after each page.  Pages arrive in update order, so mid-way checkpoints are safe.

Vendor docs: developer.zendesk.com/api-reference/ticketing/ticket-management/incremental_exports/
(cursor export, ``end_of_stream``, deleted tickets, ``include=metric_sets``),
developer.zendesk.com/api-reference/introduction/rate-limits (10 req/min on incremental exports,
``Retry-After`` on 429).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypedDict, cast

import requests
from requests.auth import HTTPBasicAuth

from ltvsync.config.settings import ZendeskSettings
from ltvsync.connectors.base import StreamSpec
from ltvsync.connectors.http import Throttle, describe_url, get_json
from ltvsync.core.errors import ConfigError, TransientError
from ltvsync.core.records import CustomerRecord, Deletion, Page, Record, Rejection, TicketRecord
from ltvsync.core.retry import RetryPolicy

SOURCE = "zendesk"
INCREMENTAL_PATH = "/api/v2/incremental/{stream}/cursor.json"
# Incremental export endpoints allow 10 requests per minute (30 with the High Volume add-on).
INCREMENTAL_REQUESTS_PER_MINUTE = 10.0
# Satisfaction scores that are an actual rating ("offered"/"unoffered" say nothing about quality).
RATED_SCORES = frozenset({"good", "bad"})


class _MetricSet(TypedDict, total=False):
    ticket_id: int
    solved_at: str | None
    reply_time_in_minutes: dict[str, float | None]


class _CursorEnvelope(TypedDict, total=False):
    after_url: str | None
    after_cursor: str | None
    end_of_stream: bool
    tickets: list[dict[str, Any]]
    users: list[dict[str, Any]]
    metric_sets: list[_MetricSet]


@dataclass(frozen=True)
class _Stream:
    spec: StreamSpec
    key: str  # the envelope key holding this stream's items


STREAMS: Mapping[str, _Stream] = {
    "users": _Stream(StreamSpec("users", "customer", cursor_field="after_cursor"), "users"),
    "tickets": _Stream(StreamSpec("tickets", "ticket", cursor_field="after_cursor"), "tickets"),
}


def parse_time(value: object) -> datetime:
    """Zendesk ISO-8601 ``...Z`` timestamp → aware UTC datetime; ValueError if unusable."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected an ISO-8601 timestamp, got {value!r}")
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"timestamp without timezone: {value!r}")
    return parsed.astimezone(UTC)


def _optional_time(value: object) -> datetime | None:
    return None if value in (None, "") else parse_time(value)


def _reject(stream: str, item: object, reason: str) -> Rejection:
    return Rejection(SOURCE, stream, json.dumps(item, default=str, sort_keys=True), reason)


def user_record(item: Mapping[str, Any]) -> Record:
    """A user → CustomerRecord; a deleted user (``active: false``) → Deletion of the customer."""
    source_id = str(item["id"])
    updated_at = parse_time(item["updated_at"])
    if item.get("active") is False:
        return Deletion(SOURCE, "customer", source_id, updated_at)
    return CustomerRecord(
        source=SOURCE,
        source_id=source_id,
        email=item.get("email") or None,
        name=item.get("name") or None,
        created_at=_optional_time(item.get("created_at")),
        updated_at=updated_at,
        attributes={"role": item.get("role")},
    )


def ticket_record(item: Mapping[str, Any], metric: Mapping[str, Any] | None) -> Record:
    """A ticket (+ its sideloaded metric set, if any) → TicketRecord; status "deleted" → Deletion."""
    source_id = str(item["id"])
    updated_at = parse_time(item["updated_at"])
    status = str(item["status"])
    if status == "deleted":
        return Deletion(SOURCE, "ticket", source_id, updated_at)
    metric = metric or item.get("metric_set") or {}
    reply = (metric.get("reply_time_in_minutes") or {}).get("calendar")
    rating = item.get("satisfaction_rating") or {}
    score = rating.get("score") if isinstance(rating, Mapping) else None
    requester = item.get("requester_id")
    return TicketRecord(
        source=SOURCE,
        source_id=source_id,
        customer_source_id=None if requester is None else str(requester),
        status=status,
        created_at=parse_time(item["created_at"]),
        updated_at=updated_at,
        solved_at=_optional_time(metric.get("solved_at") or item.get("solved_at")),
        first_reply_minutes=None if reply is None else float(reply),
        satisfaction=score if score in RATED_SCORES else None,
    )


def _stamp(record: Record) -> datetime:
    if isinstance(record, Deletion):
        return record.deleted_at
    if isinstance(record, CustomerRecord | TicketRecord):
        return record.updated_at
    raise TypeError(f"zendesk yields no {type(record).__name__}")


def latest_per_id(records: Sequence[Record]) -> list[Record]:
    """Keep one record per source_id: the latest ``updated_at`` (later position wins ties)."""
    latest: dict[str, tuple[datetime, Record]] = {}
    for record in records:
        stamp = _stamp(record)
        kept = latest.get(record.source_id)
        if kept is None or stamp >= kept[0]:
            latest[record.source_id] = (stamp, record)
    return [record for _, record in latest.values()]


class ZendeskSource:
    """Source for Zendesk users and tickets (incremental, resumable by ``after_cursor``)."""

    name = SOURCE

    def __init__(
        self,
        settings: ZendeskSettings,
        *,
        session: requests.Session | None = None,
        policy: RetryPolicy | None = None,
        include_metric_sets: bool = True,
        throttle: Throttle | None = None,
    ) -> None:
        """``throttle``: pass ``pacing_throttle()`` to stay under 10 req/min client-side (off by
        default: 429s are honoured through ``Retry-After`` anyway, and the sandbox need not wait)."""
        self.settings = settings
        self.policy = policy or RetryPolicy()
        self.include_metric_sets = include_metric_sets
        self.throttle = throttle
        self.base_url = self._base_url(settings)
        self.session = session or requests.Session()
        self._authenticate(self.session, settings)
        self._calls = 0

    @staticmethod
    def _base_url(settings: ZendeskSettings) -> str:
        if settings.base_url:
            return settings.base_url.rstrip("/")
        if settings.subdomain:
            return f"https://{settings.subdomain}.zendesk.com"
        raise ConfigError("zendesk: set zendesk.subdomain (or zendesk.base_url)")

    @staticmethod
    def _authenticate(session: requests.Session, settings: ZendeskSettings) -> None:
        if settings.oauth_token is not None:
            session.headers["Authorization"] = f"Bearer {settings.oauth_token.get_secret_value()}"
            return
        if settings.email and settings.api_token is not None:
            session.auth = HTTPBasicAuth(f"{settings.email}/token", settings.api_token.get_secret_value())
            return
        raise ConfigError("zendesk: set zendesk.email and zendesk.api_token, or zendesk.oauth_token")

    def streams(self) -> Sequence[StreamSpec]:
        return [stream.spec for stream in STREAMS.values()]

    def api_calls(self) -> int:
        """Requests made so far, retries included."""
        return self._calls

    def _before_each(self) -> None:
        self._calls += 1
        if self.throttle is not None:
            self.throttle.acquire()

    def _first_params(self, stream: str, cursor: str | None) -> dict[str, str | int]:
        params: dict[str, str | int] = {"per_page": self.settings.per_page}
        if cursor:
            params["cursor"] = cursor
        else:
            params["start_time"] = self.settings.start_time
        if stream == "tickets" and self.include_metric_sets:
            params["include"] = "metric_sets"
        return params

    def check(self) -> None:
        """One-item ticket export from the configured start: proves credentials and admin role."""
        url = self.base_url + INCREMENTAL_PATH.format(stream="tickets")
        params: dict[str, str | int] = {"start_time": self.settings.start_time, "per_page": 1}
        get_json(self.session, url, params, self.policy, before_each=self._before_each)

    def read(self, stream: str, cursor: str | None) -> Iterator[Page]:
        """Yield one page per export response; each page's cursor is that response's after_cursor."""
        if stream not in STREAMS:
            raise ConfigError(f"zendesk: unknown stream {stream!r}; known: {', '.join(STREAMS)}")
        url: str = self.base_url + INCREMENTAL_PATH.format(stream=stream)
        params: dict[str, str | int] | None = self._first_params(stream, cursor)
        while True:
            calls_before = self._calls
            body = self._get(url, params)
            records, rejections = self._convert(stream, body)
            next_cursor = body.get("after_cursor") or cursor
            yield Page(records, next_cursor, rejections, api_calls=self._calls - calls_before)
            after_url = body.get("after_url")
            if body.get("end_of_stream", True) or not body.get("after_cursor") or next_cursor == cursor:
                return
            cursor = next_cursor
            url, params = self._next_request(stream, after_url, cursor)

    def _get(self, url: str, params: dict[str, str | int] | None) -> _CursorEnvelope:
        body = get_json(self.session, url, params, self.policy, before_each=self._before_each)
        if not isinstance(body, dict):
            raise TransientError(f"zendesk: unexpected response shape from {describe_url(url)}")
        return cast(_CursorEnvelope, body)

    def _next_request(
        self, stream: str, after_url: str | None, cursor: str | None
    ) -> tuple[str, dict[str, str | int] | None]:
        # Follow after_url verbatim only if it points back at our host: otherwise our credentials
        # would travel to whatever host a response names.  Else rebuild it from the cursor.
        if after_url and after_url.startswith(self.base_url + "/"):
            return after_url, None
        return self.base_url + INCREMENTAL_PATH.format(stream=stream), self._first_params(stream, cursor)

    def _convert(self, stream: str, body: _CursorEnvelope) -> tuple[list[Record], list[Rejection]]:
        items: list[Any] = cast(dict[str, Any], body).get(STREAMS[stream].key) or []
        metrics: dict[str, Mapping[str, Any]] = {
            str(m.get("ticket_id")): m for m in body.get("metric_sets") or [] if isinstance(m, Mapping)
        }
        records: list[Record] = []
        rejections: list[Rejection] = []

        def convert(item: Mapping[str, Any]) -> Record:
            if stream == "users":
                return user_record(item)
            return ticket_record(item, metrics.get(str(item.get("id"))))

        for item in items:
            try:
                if not isinstance(item, Mapping):
                    raise TypeError("not a JSON object")
                records.append(convert(item))
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                rejections.append(_reject(stream, item, f"{type(exc).__name__}: {exc}"))
        return latest_per_id(records), rejections


def pacing_throttle(requests_per_minute: float = INCREMENTAL_REQUESTS_PER_MINUTE) -> Throttle:
    """A throttle that keeps incremental exports under Zendesk's per-minute limit."""
    return Throttle(requests_per_minute / 60.0)
