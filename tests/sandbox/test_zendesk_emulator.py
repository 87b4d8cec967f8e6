"""Zendesk emulator: cursor incremental exports followed with plain ``requests``, as a connector would."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from ltvsync.sandbox.http import Knobs
from ltvsync.sandbox.world import World, generate_world
from ltvsync.sandbox.zendesk import RATE_LIMIT_BODY, ZendeskEmulator

AS_OF = datetime(2025, 6, 1, tzinfo=UTC)
EMAIL, TOKEN = "sandbox@example.com", "sandbox-token"
TICKETS = "/api/v2/incremental/tickets/cursor.json"
USERS = "/api/v2/incremental/users/cursor.json"


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(scope="module")
def world() -> World:
    return generate_world(2500, seed=9, as_of=AS_OF)


@pytest.fixture
def clock() -> Clock:
    return Clock(AS_OF + timedelta(hours=1))


@pytest.fixture
def emulator(world: World, clock: Clock) -> Iterator[ZendeskEmulator]:
    emu = ZendeskEmulator(world.zendesk_users, world.zendesk_tickets, Knobs(rate_limits=False), clock=clock)
    emu.start()
    yield emu
    emu.stop()


def session() -> requests.Session:
    s = requests.Session()
    s.auth = (f"{EMAIL}/token", TOKEN)
    return s


def read_all(
    emu: ZendeskEmulator, path: str, key: str, **params: Any
) -> tuple[list[dict[str, Any]], str, int]:
    """Follow ``after_url`` until ``end_of_stream``; returns items, the last cursor and the page count."""
    s = session()
    response = s.get(emu.base_url + path, params=params, timeout=10)
    items: list[dict[str, Any]] = []
    pages = 0
    while True:
        response.raise_for_status()
        body = response.json()
        pages += 1
        items.extend(body[key])
        assert body["after_url"].startswith(emu.base_url + path + "?cursor=")
        if body["end_of_stream"]:
            return items, body["after_cursor"], pages
        response = s.get(body["after_url"], timeout=10)


def test_tickets_page_to_end_of_stream_once_each_in_timestamp_order(
    emulator: ZendeskEmulator, world: World
) -> None:
    tickets, _, pages = read_all(emulator, TICKETS, "tickets", start_time=0, per_page=300)
    assert len(world.zendesk_tickets) > 900
    assert sorted(t["id"] for t in tickets) == sorted(world.zendesk_tickets)
    stamps = [(t["generated_timestamp"], t["id"]) for t in tickets]
    assert stamps == sorted(stamps)
    assert pages == -(-len(tickets) // 300)
    assert tickets[0]["url"] == f"{emulator.base_url}/api/v2/tickets/{tickets[0]['id']}.json"


def test_start_time_is_an_inclusive_lower_bound(emulator: ZendeskEmulator, world: World) -> None:
    middle = sorted(t["generated_timestamp"] for t in world.zendesk_tickets.values())[
        len(world.zendesk_tickets) // 2
    ]
    tickets, _, _ = read_all(emulator, TICKETS, "tickets", start_time=middle)
    expected = {tid for tid, t in world.zendesk_tickets.items() if t["generated_timestamp"] >= middle}
    assert {t["id"] for t in tickets} == expected


def test_per_page_defaults_to_and_is_capped_at_1000(emulator: ZendeskEmulator) -> None:
    s = session()
    default = s.get(emulator.base_url + TICKETS, params={"start_time": 0}, timeout=10).json()
    capped = s.get(emulator.base_url + TICKETS, params={"start_time": 0, "per_page": 5000}, timeout=10).json()
    assert len(default["tickets"]) == len(capped["tickets"]) == 1000


def test_updated_ticket_reappears_after_the_last_minute_hold_back(
    emulator: ZendeskEmulator, world: World, clock: Clock
) -> None:
    _, cursor, _ = read_all(emulator, TICKETS, "tickets", start_time=0)
    ticket_id = min(world.zendesk_tickets)
    emulator.update_ticket(ticket_id, {"status": "solved"})
    s = session()
    held = s.get(emulator.base_url + TICKETS, params={"cursor": cursor}, timeout=10).json()
    assert held["tickets"] == [] and held["end_of_stream"] is True
    assert held["after_cursor"] == cursor  # nothing read: the checkpoint does not move
    clock.now += timedelta(seconds=61)
    later = s.get(emulator.base_url + TICKETS, params={"cursor": cursor}, timeout=10).json()
    assert [t["id"] for t in later["tickets"]] == [ticket_id]
    assert later["tickets"][0]["status"] == "solved"
    assert later["tickets"][0]["generated_timestamp"] == int((clock.now - timedelta(seconds=61)).timestamp())


def test_users_export_and_added_records(emulator: ZendeskEmulator, world: World, clock: Clock) -> None:
    users, cursor, _ = read_all(emulator, USERS, "users", start_time=0, per_page=250)
    assert sorted(u["id"] for u in users) == sorted(world.zendesk_users)
    new_user = emulator.add_user({"name": "New", "email": "new@example.com"})
    new_ticket = emulator.add_ticket({"requester_id": new_user, "subject": "Hi"})
    clock.now += timedelta(minutes=2)
    s = session()
    assert [u["id"] for u in s.get(emulator.base_url + USERS, params={"cursor": cursor}).json()["users"]] == [
        new_user
    ]
    shown = s.get(f"{emulator.base_url}/api/v2/tickets/{new_ticket}.json").json()["ticket"]
    assert shown["requester_id"] == new_user and shown["status"] == "new"


@pytest.mark.parametrize(
    ("params", "description"),
    [
        ({}, "start_time or cursor is required"),
        ({"start_time": "yesterday"}, "Unix timestamp"),
        ({"cursor": "!!not-a-cursor!!"}, "cursor is invalid"),
        ({"start_time": "0", "per_page": "0"}, "per_page"),
    ],
)
def test_bad_parameters_are_400(emulator: ZendeskEmulator, params: dict[str, str], description: str) -> None:
    response = session().get(emulator.base_url + TICKETS, params=params, timeout=10)
    assert response.status_code == 400
    assert description in response.json()["description"]


def test_start_time_within_the_last_minute_is_refused(emulator: ZendeskEmulator, clock: Clock) -> None:
    recent = int(clock.now.timestamp()) - 30
    response = session().get(emulator.base_url + TICKETS, params={"start_time": recent}, timeout=10)
    assert response.status_code == 400 and "Too recent start_time" in response.json()["description"]


def test_authentication(emulator: ZendeskEmulator) -> None:
    url = emulator.base_url + TICKETS
    for auth in ((f"{EMAIL}/token", "wrong"), (EMAIL, TOKEN), None):
        response = requests.get(url, params={"start_time": 0}, auth=auth, timeout=10)
        assert response.status_code == 401
        assert response.json() == {"error": "Couldn't authenticate you"}
    bearer = requests.get(
        url, params={"start_time": 0}, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    )
    assert bearer.status_code == 200


def test_eleventh_request_in_a_minute_is_429_with_retry_after(world: World) -> None:
    emu = ZendeskEmulator(world.zendesk_users, world.zendesk_tickets, Knobs(time_scale=0.02))
    emu.start()
    try:
        s = session()
        url = emu.base_url + TICKETS
        statuses = [
            s.get(url, params={"start_time": 0, "per_page": 1}, timeout=10).status_code for _ in range(10)
        ]
        assert statuses == [200] * 10
        limited = s.get(url, params={"start_time": 0}, timeout=10)
        assert limited.status_code == 429 and limited.text == RATE_LIMIT_BODY
        wait = float(limited.headers["Retry-After"])
        assert 0 < wait <= math.ceil(60 * 0.02)  # whole seconds once a wait reaches 1 s
        # Users share the incremental-export budget.
        assert s.get(emu.base_url + USERS, params={"start_time": 0}, timeout=10).status_code == 429
        time.sleep(wait + 0.05)
        assert s.get(url, params={"start_time": 0}, timeout=10).status_code == 200
    finally:
        emu.stop()


def test_admin_http_route_updates_a_ticket(emulator: ZendeskEmulator, world: World, clock: Clock) -> None:
    ticket_id = max(world.zendesk_tickets)
    response = requests.put(
        f"{emulator.base_url}/admin/tickets/{ticket_id}", json={"status": "closed"}, timeout=10
    )
    assert response.status_code == 200
    assert emulator.ticket(ticket_id)["status"] == "closed"
    assert emulator.ticket(ticket_id)["generated_timestamp"] == int(clock.now.timestamp())
    # The world's own record is untouched: the emulator replaces records instead of mutating them.
    assert world.zendesk_tickets[ticket_id]["generated_timestamp"] < AS_OF.timestamp()
    assert requests.put(f"{emulator.base_url}/admin/tickets/1", json={}, timeout=10).status_code == 404
