"""Mixpanel emulator: raw event export (JSONL) and engage profile queries, as mixpanel-utils 2.2.7 uses them.

Vendor docs relied on (API-REFERENCE §2): ``GET /api/2.0/export`` with inclusive UTC ``from_date`` /
``to_date``, optional JSON-list ``event`` filter and ``limit``, JSONL body gzipped only on request;
``GET /api/2.0/engage`` (and the documented ``POST /api/query/engage`` form) with ``session_id``,
``page``, ``page_size`` and ``total`` on every page so mixpanel-utils' concurrent paginator works;
auth is HTTP Basic with the project secret as user name (or service account ``user:secret``).
Rate limits: export 3/s and 60/hour; query API 60 new queries/hour and 5 concurrent, all scaled by
``Knobs.time_scale`` and switchable off with ``Knobs.rate_limits``.
"""

from __future__ import annotations

import base64
import bisect
import gzip
import io
import itertools
import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

from ltvsync.sandbox.http import Emulator, Knobs, Request, Response
from ltvsync.sandbox.ratelimit import SlidingWindow, retry_after_header

EXPORT_PER_SECOND = 3
EXPORT_PER_HOUR = 60
QUERY_PER_HOUR = 60
QUERY_MAX_CONCURRENT = 5
ENGAGE_PAGE_SIZE = 1000  # Mixpanel's fixed engage page size; smaller sizes allowed for tests
EXPORT_MAX_LIMIT = 100_000
GZIP_MIN_BYTES = 1400  # Mixpanel compresses only bodies larger than this
MAX_SESSIONS = 200


def _event_time(event: dict[str, Any]) -> int:
    return int(event["properties"]["time"])


class MixpanelError(Exception):
    """A request the emulator rejects with a Mixpanel-style error body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class MixpanelEmulator(Emulator):
    name = "mixpanel"

    def __init__(
        self,
        events: list[dict[str, Any]],
        profiles: list[dict[str, Any]],
        knobs: Knobs | None = None,
        *,
        api_secret: str = "sandbox-secret",
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        super().__init__(knobs)
        self.api_secret = api_secret
        self.clock = clock or (lambda: datetime.now(UTC))
        self._events = sorted(events, key=_event_time)
        self._times = [_event_time(e) for e in self._events]
        self._profiles = list(profiles)
        self._sessions: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        self._session_ids = itertools.count(1)
        self._in_flight = 0
        self._flight_lock = threading.Lock()
        self.export_per_second = SlidingWindow(EXPORT_PER_SECOND, 1.0)
        self.export_per_hour = SlidingWindow(EXPORT_PER_HOUR, 3600.0)
        self.query_per_hour = SlidingWindow(QUERY_PER_HOUR, 3600.0)
        self.route("GET", r"/api/2\.0/export/?", "export", self._export)
        for method, path in (("GET", r"/api/2\.0/engage/?"), ("POST", r"/api/2\.0/engage/?")):
            self.route(method, path, "engage", self._engage)
        self.route("POST", r"/api/query/engage/?", "engage", self._engage)
        self.route("POST", r"/admin/events", "admin_events", self._admin_events)

    # -- admin -----------------------------------------------------------------------------------
    def add_events(self, events: list[dict[str, Any]]) -> None:
        """Append events (late arrivals included: they land in their own day, like real ingestion)."""
        with self._lock:
            for ev in events:
                pos = bisect.bisect_right(self._times, _event_time(ev))
                self._times.insert(pos, _event_time(ev))
                self._events.insert(pos, ev)

    def add_profiles(self, profiles: list[dict[str, Any]]) -> None:
        with self._lock:
            self._profiles.extend(profiles)

    @property
    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._events)

    def _admin_events(self, req: Request) -> Response:
        payload = req.json()
        if not isinstance(payload, list):
            return Response.json({"error": "expected a JSON list of events"}, 400)
        self.add_events(payload)
        return Response.json({"status": "ok", "added": len(payload)})

    # -- helpers ---------------------------------------------------------------------------------
    def _authorized(self, req: Request) -> bool:
        header = req.header("authorization") or ""
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        # Project-secret auth sends "secret:"; service accounts send "username:secret".
        return (user == self.api_secret and password == "") or (bool(user) and password == self.api_secret)

    def _error(self, req: Request, status: int, message: str, retry_after: float | None = None) -> Response:
        headers = {"Retry-After": retry_after_header(retry_after)} if retry_after is not None else None
        return Response.json({"request": req.path, "error": message, "status": "error"}, status, headers)

    def _limited(self, req: Request, *windows: SlidingWindow) -> Response | None:
        if not self.knobs.rate_limits:
            return None
        for window in windows:
            wait = window.acquire(self.knobs.time_scale)
            if wait is not None:
                message = f"Query rate limit exceeded: {window.limit} per {window.window:g}s (sandbox)"
                return self._error(req, 429, message, wait)
        return None

    # -- export ----------------------------------------------------------------------------------
    def _export(self, req: Request) -> Response:
        if not self._authorized(req):
            return self._error(req, 401, "Unauthorized, invalid project secret")
        limited = self._limited(req, self.export_per_second, self.export_per_hour)
        if limited is not None:
            return limited
        try:
            selected = self._select_events(req)
        except MixpanelError as exc:
            return self._error(req, exc.status, str(exc))
        in_ms = req.arg("time_in_ms") == "true"
        # Encoded line by line into one buffer: a full 100k-customer export is ~100 MB, and a list of
        # line strings plus their join would hold it three times over.
        buffer = io.BytesIO()
        for ev in selected:
            if in_ms:
                ev = {"event": ev["event"], "properties": dict(ev["properties"])}
                ev["properties"]["time"] = int(ev["properties"]["time"]) * 1000
            buffer.write(json.dumps(ev, separators=(",", ":")).encode())
            buffer.write(b"\n")
        body = buffer.getvalue()
        headers: dict[str, str] = {}
        if "gzip" in (req.header("accept-encoding") or "").lower() and len(body) > GZIP_MIN_BYTES:
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        return Response(200, body, headers, "text/plain; charset=utf-8")

    def _select_events(self, req: Request) -> list[dict[str, Any]]:
        start = _parse_date(req.arg("from_date"), "from_date")
        end = _parse_date(req.arg("to_date"), "to_date")
        if end < start:
            raise MixpanelError(400, "to_date must be on or after from_date")
        if req.arg("where"):
            raise MixpanelError(400, "the sandbox does not evaluate 'where' expressions")
        names: set[str] | None = None
        if req.arg("event"):
            try:
                raw = json.loads(req.arg("event") or "")
            except json.JSONDecodeError as exc:
                raise MixpanelError(400, "event must be a JSON list of event names") from exc
            if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
                raise MixpanelError(400, "event must be a JSON list of event names")
            names = set(raw)
        limit = _parse_limit(req.arg("limit"))
        lo_ts = _day_start(start)
        hi_ts = _day_start(end + timedelta(days=1))
        with self._lock:
            lo = bisect.bisect_left(self._times, lo_ts)
            hi = bisect.bisect_left(self._times, hi_ts)
            window = self._events[lo:hi]
        if names is not None:
            window = [e for e in window if e["event"] in names]
        return window[:limit] if limit is not None else window

    # -- engage ----------------------------------------------------------------------------------
    def _engage(self, req: Request) -> Response:
        if not self._authorized(req):
            return self._error(req, 401, "Unauthorized, invalid project secret")
        params = {k: v[-1] for k, v in req.query.items()}
        if req.method == "POST" and req.body:
            form = parse_qs(req.body.decode("utf-8"), keep_blank_values=True)
            params.update({k: v[-1] for k, v in form.items()})
        with self._flight_lock:
            if self.knobs.rate_limits and self._in_flight >= QUERY_MAX_CONCURRENT:
                return self._error(
                    req, 429, "Too many concurrent queries (sandbox: 5)", 1.0 * self.knobs.time_scale
                )
            self._in_flight += 1
        try:
            return self._engage_page(req, params)
        except MixpanelError as exc:
            return self._error(req, exc.status, str(exc))
        finally:
            with self._flight_lock:
                self._in_flight -= 1

    def _engage_page(self, req: Request, params: dict[str, str]) -> Response:
        if params.get("where") or params.get("behaviors") or params.get("filter_by_cohort"):
            raise MixpanelError(400, "the sandbox does not evaluate where/behaviors/cohort filters")
        page = _parse_int(params.get("page", "0"), "page", 0)
        page_size = min(
            _parse_int(params.get("page_size", str(ENGAGE_PAGE_SIZE)), "page_size", 1), ENGAGE_PAGE_SIZE
        )
        session_id = params.get("session_id")
        if session_id:
            with self._lock:
                snapshot = self._sessions.get(session_id)
            if snapshot is None:
                raise MixpanelError(400, "unknown or expired session_id")
        else:
            # A new query counts against the hourly limit; pages of an open session do not, otherwise
            # paging 100,000 profiles (100 pages) could never finish within one hour's budget.
            limited = self._limited(req, self.query_per_hour)
            if limited is not None:
                return limited
            snapshot = self._snapshot(params)
            session_id = f"{next(self._session_ids)}-SANDBOX"
            with self._lock:
                self._sessions[session_id] = snapshot
                while len(self._sessions) > MAX_SESSIONS:
                    self._sessions.popitem(last=False)
        results = snapshot[page * page_size : (page + 1) * page_size]
        wanted = _json_list(params.get("output_properties"), "output_properties")
        if wanted is not None:
            results = [
                {
                    "$distinct_id": p["$distinct_id"],
                    "$properties": {k: v for k, v in p["$properties"].items() if k in wanted},
                }
                for p in results
            ]
        payload = {
            "page": page,
            "page_size": page_size,
            "session_id": session_id,
            "status": "ok",
            "total": len(snapshot),
            "results": results,
        }
        return Response.json(payload)

    def _snapshot(self, params: dict[str, str]) -> list[dict[str, Any]]:
        ids = _json_list(params.get("distinct_ids"), "distinct_ids")
        if params.get("distinct_id"):
            ids = [params["distinct_id"]]
        with self._lock:
            profiles = list(self._profiles)
        if ids is not None:
            keep = set(ids)
            profiles = [p for p in profiles if p["$distinct_id"] in keep]
        return profiles


def _parse_date(value: str | None, name: str) -> date:
    if not value:
        raise MixpanelError(400, f"{name} is a required parameter")
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise MixpanelError(400, f"{name} must be YYYY-MM-DD") from exc


def _parse_int(value: str, name: str, minimum: int) -> int:
    try:
        number = int(value)
    except ValueError as exc:
        raise MixpanelError(400, f"{name} must be an integer") from exc
    if number < minimum:
        raise MixpanelError(400, f"{name} must be >= {minimum}")
    return number


def _parse_limit(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    limit = _parse_int(value, "limit", 1)
    if limit > EXPORT_MAX_LIMIT:
        raise MixpanelError(400, f"limit must be <= {EXPORT_MAX_LIMIT}")
    return limit


def _json_list(value: str | None, name: str) -> list[str] | None:
    if not value:
        return None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise MixpanelError(400, f"{name} must be a JSON list") from exc
    if not isinstance(parsed, list):
        raise MixpanelError(400, f"{name} must be a JSON list")
    return [str(x) for x in parsed]


def _day_start(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())
