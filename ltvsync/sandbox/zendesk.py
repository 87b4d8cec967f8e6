"""Zendesk emulator: cursor-based incremental exports of tickets and users.

Vendor docs relied on (API-REFERENCE §4): ``GET /api/v2/incremental/{tickets,users}/cursor.json`` with
``start_time`` on the first call and ``cursor`` afterwards, ``per_page`` up to 1000, an absolute
``after_url`` pointing back at this server (zenpy follows it verbatim), ``end_of_stream``; items
changed in the last minute are held back and ``start_time`` must be at least a minute old; 10 requests
per minute on incremental endpoints answer 429 ``text/plain`` with ``Retry-After``; Basic auth
``{email}/token:{token}`` or ``Bearer {token}``, else 401 ``{"error":"Couldn't authenticate you"}``.
Every window is multiplied by ``Knobs.time_scale``.
"""

from __future__ import annotations

import base64
import binascii
import bisect
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from ltvsync.sandbox.http import Emulator, Knobs, Request, Response
from ltvsync.sandbox.ratelimit import SlidingWindow, retry_after_header

INCREMENTAL_PER_MINUTE = 10
MAX_PER_PAGE = 1000
RECENT_EXCLUSION_SECONDS = 60.0  # items changed this recently are not exported yet
RATE_LIMIT_BODY = "Number of allowed API requests per minute exceeded"
AUTH_ERROR = {"error": "Couldn't authenticate you"}

Key = tuple[int, int]  # (timestamp, id): the export order and the cursor position


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())


def encode_cursor(key: Key) -> str:
    return base64.urlsafe_b64encode(f"{key[0]}|{key[1]}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> Key:
    """Raises ValueError for anything this emulator did not issue."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        ts, _, item = raw.partition("|")
        return int(ts), int(item)
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ValueError("bad cursor") from exc


class _Stream:
    """One exported collection kept in export order, re-sorted lazily after admin changes."""

    def __init__(self, items: dict[int, dict[str, Any]], key: Callable[[dict[str, Any]], int]) -> None:
        self.items = items
        self.key = key
        self._order: list[Key] | None = None

    def invalidate(self) -> None:
        self._order = None

    def order(self) -> list[Key]:
        if self._order is None:
            self._order = sorted((self.key(item), item_id) for item_id, item in self.items.items())
        return self._order


class ZendeskEmulator(Emulator):
    name = "zendesk"

    def __init__(
        self,
        users: dict[int, dict[str, Any]],
        tickets: dict[int, dict[str, Any]],
        knobs: Knobs | None = None,
        *,
        email: str = "sandbox@example.com",
        token: str = "sandbox-token",
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        super().__init__(knobs)
        self.email = email
        self.token = token
        self.clock = clock or (lambda: datetime.now(UTC))
        # Records are shared with the world until changed: admin edits replace a record, never mutate it.
        self._tickets = _Stream(
            {int(k): v for k, v in tickets.items()}, lambda t: int(t["generated_timestamp"])
        )
        self._users = _Stream({int(k): v for k, v in users.items()}, lambda u: _epoch(u["updated_at"]))
        self.incremental_limit = SlidingWindow(INCREMENTAL_PER_MINUTE, 60.0)
        self.route(
            "GET", r"/api/v2/incremental/tickets/cursor\.json", "incremental_tickets", self._inc_tickets
        )
        self.route("GET", r"/api/v2/incremental/users/cursor\.json", "incremental_users", self._inc_users)
        self.route("GET", r"/api/v2/tickets/(?P<item_id>\d+)\.json", "ticket", self._show_ticket)
        self.route("GET", r"/api/v2/users/(?P<item_id>\d+)\.json", "user", self._show_user)
        self.route("PUT", r"/admin/tickets/(?P<item_id>\d+)", "admin_update_ticket", self._admin_update)

    # -- admin -----------------------------------------------------------------------------------
    def update_ticket(self, ticket_id: int, fields: dict[str, Any]) -> dict[str, Any]:
        """Change a ticket as an agent would: it re-enters the export with a new timestamp."""
        now = self.clock()
        with self._lock:
            ticket = {**self._tickets.items[int(ticket_id)], **fields}
            ticket["updated_at"] = _iso(now)
            ticket["generated_timestamp"] = int(now.timestamp())
            self._tickets.items[int(ticket_id)] = ticket
            self._tickets.invalidate()
            return dict(ticket)

    def add_ticket(self, fields: dict[str, Any]) -> int:
        now = self.clock()
        with self._lock:
            ticket_id = max(self._tickets.items, default=0) + 1
            ticket = {"id": ticket_id, "status": "new", "satisfaction_rating": None, **fields}
            ticket.update(
                id=ticket_id,
                created_at=fields.get("created_at", _iso(now)),
                updated_at=_iso(now),
                generated_timestamp=int(now.timestamp()),
            )
            self._tickets.items[ticket_id] = ticket
            self._tickets.invalidate()
            return ticket_id

    def add_user(self, fields: dict[str, Any]) -> int:
        now = self.clock()
        with self._lock:
            user_id = max(self._users.items, default=0) + 1
            user = {"id": user_id, "role": "end-user", "active": True, **fields}
            user.update(id=user_id, created_at=fields.get("created_at", _iso(now)), updated_at=_iso(now))
            self._users.items[user_id] = user
            self._users.invalidate()
            return user_id

    def ticket(self, ticket_id: int) -> dict[str, Any]:
        with self._lock:
            return dict(self._tickets.items[int(ticket_id)])

    def _admin_update(self, req: Request, item_id: str) -> Response:
        if int(item_id) not in self._tickets.items:
            return Response.json({"error": "RecordNotFound", "description": "Not found"}, 404)
        return Response.json({"ticket": self.update_ticket(int(item_id), req.json() or {})})

    # -- auth and errors -------------------------------------------------------------------------
    def _authorized(self, req: Request) -> bool:
        header = req.header("authorization") or ""
        if header.startswith("Bearer "):
            return header[7:] == self.token
        if not header.startswith("Basic "):
            return False
        try:
            decoded = base64.b64decode(header[6:]).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return decoded == f"{self.email}/token:{self.token}"

    def not_found(self, req: Request) -> Response:
        return Response.json({"error": "InvalidEndpoint", "description": "Not found"}, 404)

    @staticmethod
    def _invalid(description: str) -> Response:
        return Response.json({"error": "InvalidValue", "description": description}, 400)

    # -- reads -----------------------------------------------------------------------------------
    def _show(self, req: Request, stream: _Stream, item_id: str, key: str, path: str) -> Response:
        if not self._authorized(req):
            return Response.json(AUTH_ERROR, 401)
        with self._lock:
            item = stream.items.get(int(item_id))
            if item is None:
                return Response.json({"error": "RecordNotFound", "description": "Not found"}, 404)
            return Response.json({key: self._render(item, path)})

    def _show_ticket(self, req: Request, item_id: str) -> Response:
        return self._show(req, self._tickets, item_id, "ticket", "tickets")

    def _show_user(self, req: Request, item_id: str) -> Response:
        return self._show(req, self._users, item_id, "user", "users")

    def _render(self, item: dict[str, Any], path: str) -> dict[str, Any]:
        return {**item, "url": f"{self.base_url}/api/v2/{path}/{item['id']}.json"}

    def _inc_tickets(self, req: Request) -> Response:
        return self._incremental(req, self._tickets, "tickets")

    def _inc_users(self, req: Request) -> Response:
        return self._incremental(req, self._users, "users")

    def _incremental(self, req: Request, stream: _Stream, key: str) -> Response:
        if not self._authorized(req):
            return Response.json(AUTH_ERROR, 401)
        scale = self.knobs.time_scale
        if self.knobs.rate_limits:
            wait = self.incremental_limit.acquire(scale)
            if wait is not None:
                resp = Response.text(RATE_LIMIT_BODY, 429)
                resp.headers["Retry-After"] = retry_after_header(wait)
                return resp
        cutoff = int(self.clock().timestamp() - RECENT_EXCLUSION_SECONDS * scale)
        position = self._start_position(req, cutoff)
        if isinstance(position, Response):
            return position
        per_page = self._per_page(req)
        if isinstance(per_page, Response):
            return per_page
        exclude_deleted = req.arg("exclude_deleted") == "true"
        with self._lock:
            order = stream.order()
            lo = bisect.bisect_right(order, position)
            hi = bisect.bisect_right(order, (cutoff, 2**62))
            keys: list[Key] = []
            items: list[dict[str, Any]] = []
            i = lo
            while i < hi and len(keys) < per_page:
                item = stream.items[order[i][1]]
                keys.append(order[i])
                if not (exclude_deleted and item.get("status") == "deleted"):
                    items.append(self._render(item, key))
                i += 1
            end_of_stream = i >= hi
        last = keys[-1] if keys else position
        after_cursor = encode_cursor(last)
        query = {"cursor": after_cursor}
        if req.arg("per_page"):
            query["per_page"] = str(per_page)
        if exclude_deleted:
            query["exclude_deleted"] = "true"
        payload = {
            key: items,
            "after_url": f"{self.base_url}{req.path}?{urlencode(query)}",
            "after_cursor": after_cursor,
            "before_url": None,
            "before_cursor": None,
            "end_of_stream": end_of_stream,
        }
        remaining = self.incremental_limit.remaining(scale)
        headers = {
            "X-Rate-Limit": str(INCREMENTAL_PER_MINUTE),
            "X-Rate-Limit-Remaining": str(max(remaining, 0)),
        }
        return Response.json(payload, 200, headers)

    def _start_position(self, req: Request, cutoff: int) -> Key | Response:
        cursor = req.arg("cursor")
        if cursor:
            try:
                return decode_cursor(cursor)
            except ValueError:
                return self._invalid("cursor is invalid")
        start = req.arg("start_time")
        if start is None:
            return self._invalid("start_time or cursor is required")
        try:
            start_time = int(start)
        except ValueError:
            return self._invalid("start_time must be a Unix timestamp in seconds")
        if start_time > cutoff:
            return self._invalid("Too recent start_time. Use a start_time older than 1 minute")
        # Inclusive lower bound: everything with timestamp >= start_time comes after (start_time, -1).
        return (start_time, -1)

    def _per_page(self, req: Request) -> int | Response:
        raw = req.arg("per_page")
        if raw is None:
            return MAX_PER_PAGE
        try:
            value = int(raw)
        except ValueError:
            return self._invalid("per_page must be an integer")
        if value < 1:
            return self._invalid("per_page must be at least 1")
        return min(value, MAX_PER_PAGE)
