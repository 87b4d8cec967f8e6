"""Zendesk connector against `responses`: cursor export, resume, dedupe, deletes, 429, auth."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
import responses
from pydantic import SecretStr
from responses import matchers
from responses.registries import OrderedRegistry

from ltvsync.config.settings import ZendeskSettings
from ltvsync.connectors.base import Source
from ltvsync.connectors.http import Throttle
from ltvsync.connectors.zendesk import ZendeskSource
from ltvsync.core.errors import AuthError, ConfigError, TransientError
from ltvsync.core.records import CustomerRecord, Deletion, TicketRecord
from ltvsync.core.retry import RetryPolicy

BASE = "http://127.0.0.1:9999"
TICKETS = f"{BASE}/api/v2/incremental/tickets/cursor.json"
USERS = f"{BASE}/api/v2/incremental/users/cursor.json"
START = 1_700_000_000


def settings(**overrides: Any) -> ZendeskSettings:
    values: dict[str, Any] = {
        "enabled": True,
        "base_url": BASE,
        "email": "ops@example.com",
        "api_token": SecretStr("tok-secret-123"),
        "start_time": START,
        "per_page": 100,
    }
    values.update(overrides)
    return ZendeskSettings(**values)


def source(**overrides: Any) -> ZendeskSource:
    return ZendeskSource(settings(**overrides), policy=RetryPolicy.no_wait(max_attempts=3))


def ticket(tid: int, updated: str, status: str = "open", **extra: Any) -> dict[str, Any]:
    return {
        "id": tid,
        "requester_id": 500 + tid,
        "status": status,
        "created_at": "2024-01-01T00:00:00Z",
        "updated_at": updated,
        **extra,
    }


def envelope(items: list[Any], cursor: str, end: bool, key: str = "tickets") -> dict[str, Any]:
    return {
        key: items,
        "after_cursor": cursor,
        "after_url": f"{BASE}/api/v2/incremental/{key}/cursor.json?cursor={cursor}",
        "end_of_stream": end,
    }


def test_implements_source_protocol() -> None:
    src = source()
    assert isinstance(src, Source)
    assert [s.name for s in src.streams()] == ["users", "tickets"]


@responses.activate(assert_all_requests_are_fired=True)
def test_first_call_uses_configured_start_time_then_follows_after_url() -> None:
    responses.get(
        TICKETS,
        match=[
            matchers.query_param_matcher(
                {"start_time": str(START), "per_page": "100", "include": "metric_sets"}, strict_match=True
            )
        ],
        json=envelope([ticket(1, "2024-02-01T00:00:00Z")], "c1", end=False),
    )
    responses.get(
        TICKETS,
        match=[matchers.query_param_matcher({"cursor": "c1"}, strict_match=True)],
        json=envelope([ticket(2, "2024-02-02T00:00:00Z")], "c2", end=True),
    )
    pages = list(source().read("tickets", None))
    assert [p.cursor for p in pages] == ["c1", "c2"]
    assert [r.source_id for p in pages for r in p.records] == ["1", "2"]
    # start_time comes from configuration, never from the clock.
    first = responses.calls[0].request
    assert f"start_time={START}" in (first.url or "")


@responses.activate(assert_all_requests_are_fired=True)
def test_resume_from_cursor_sends_no_start_time() -> None:
    responses.get(
        USERS,
        match=[matchers.query_param_matcher({"cursor": "saved", "per_page": "100"}, strict_match=True)],
        json=envelope(
            [
                {
                    "id": 7,
                    "email": "a@example.com",
                    "name": "Ann",
                    "created_at": "2023-05-01T10:00:00Z",
                    "updated_at": "2024-05-01T10:00:00Z",
                },
                {"id": 8, "active": False, "updated_at": "2024-05-02T10:00:00Z"},
            ],
            "next",
            end=True,
            key="users",
        ),
    )
    (page,) = list(source().read("users", "saved"))
    assert page.cursor == "next"
    user, deleted = page.records
    assert user == CustomerRecord(
        source="zendesk",
        source_id="7",
        email="a@example.com",
        name="Ann",
        created_at=datetime(2023, 5, 1, 10, tzinfo=UTC),
        updated_at=datetime(2024, 5, 1, 10, tzinfo=UTC),
        attributes={"role": None},
    )
    assert deleted == Deletion("zendesk", "customer", "8", datetime(2024, 5, 2, 10, tzinfo=UTC))


@responses.activate(assert_all_requests_are_fired=True)
@pytest.mark.parametrize("latest_first", [True, False])
def test_same_ticket_twice_in_page_keeps_latest_and_maps_metrics(latest_first: bool) -> None:
    versions = [
        ticket(1, "2024-03-02T00:00:00Z", status="solved", satisfaction_rating={"score": "good"}),
        ticket(1, "2024-03-01T00:00:00Z", status="open"),
    ]
    body = envelope(
        [
            *(versions if latest_first else versions[::-1]),
            ticket(2, "2024-03-01T00:00:00Z", status="deleted"),
            ticket(3, "2024-03-03T00:00:00Z", satisfaction_rating={"score": "offered"}),
        ],
        "c",
        end=True,
    )
    body["metric_sets"] = [
        {"ticket_id": 1, "solved_at": "2024-03-02T00:00:00Z", "reply_time_in_minutes": {"calendar": 42}},
    ]
    responses.get(TICKETS, json=body)
    (page,) = list(source().read("tickets", None))
    by_id = {r.source_id: r for r in page.records}
    assert len(page.records) == 3
    one = by_id["1"]
    assert isinstance(one, TicketRecord)
    assert one.status == "solved"  # the later update wins wherever it sits in the page
    assert one.first_reply_minutes == 42.0
    assert one.solved_at == datetime(2024, 3, 2, tzinfo=UTC)
    assert one.satisfaction == "good"
    assert one.customer_source_id == "501"
    assert by_id["2"] == Deletion("zendesk", "ticket", "2", datetime(2024, 3, 1, tzinfo=UTC))
    three = by_id["3"]
    assert (
        isinstance(three, TicketRecord) and three.satisfaction is None and three.first_reply_minutes is None
    )


@responses.activate(assert_all_requests_are_fired=True)
def test_bad_items_are_rejected_not_lost_or_fatal() -> None:
    responses.get(
        TICKETS,
        json=envelope(
            [ticket(1, "not-a-date"), {"id": 2}, "junk", ticket(3, "2024-01-01T00:00:00Z")], "c", True
        ),
    )
    (page,) = list(source().read("tickets", None))
    assert [r.source_id for r in page.records] == ["3"]
    assert len(page.rejections) == 3
    assert all(r.source == "zendesk" and r.stream == "tickets" for r in page.rejections)
    assert '"not-a-date"' in page.rejections[0].payload


@responses.activate(registry=OrderedRegistry, assert_all_requests_are_fired=True)
def test_429_honours_retry_after_then_succeeds() -> None:
    responses.get(
        TICKETS,
        status=429,
        body="Number of allowed API requests per minute exceeded",
        headers={"Retry-After": "7"},
    )
    responses.get(TICKETS, json=envelope([ticket(1, "2024-01-01T00:00:00Z")], "c", True))
    src = source()
    (page,) = list(src.read("tickets", None))
    assert page.api_calls == 2 and src.api_calls() == 2
    assert page.cursor == "c"


@responses.activate(registry=OrderedRegistry, assert_all_requests_are_fired=True)
def test_429_forever_raises_transient_with_retry_after() -> None:
    for _ in range(3):
        responses.get(TICKETS, status=429, headers={"Retry-After": "7"})
    with pytest.raises(TransientError) as info:
        list(source().read("tickets", None))
    assert info.value.retry_after == 7.0


@responses.activate(assert_all_requests_are_fired=True)
def test_cursor_survives_failure_mid_stream() -> None:
    responses.get(
        TICKETS,
        match=[matchers.query_param_matcher({"start_time": str(START)}, strict_match=False)],
        json=envelope([ticket(1, "2024-01-01T00:00:00Z")], "c1", end=False),
    )
    responses.get(TICKETS, match=[matchers.query_param_matcher({"cursor": "c1"})], status=503)
    pages = []
    with pytest.raises(TransientError):
        for p in source().read("tickets", None):
            pages.append(p)
    # The first page (and its cursor) was handed over before the failure: resume from "c1".
    assert [p.cursor for p in pages] == ["c1"]


@responses.activate(assert_all_requests_are_fired=True)
def test_basic_auth_and_no_secret_in_errors() -> None:
    expected = base64.b64encode(b"ops@example.com/token:tok-secret-123").decode()
    responses.get(
        TICKETS,
        match=[matchers.header_matcher({"Authorization": f"Basic {expected}"})],
        status=401,
        json={"error": "Couldn't authenticate you"},
    )
    with pytest.raises(AuthError) as info:
        source().check()
    assert "tok-secret-123" not in str(info.value)
    assert expected not in str(info.value)


@responses.activate(assert_all_requests_are_fired=True)
def test_oauth_bearer() -> None:
    responses.get(
        TICKETS,
        match=[matchers.header_matcher({"Authorization": "Bearer oa-1"})],
        json=envelope([], "c", True),
    )
    source(oauth_token=SecretStr("oa-1"), api_token=None).check()


@responses.activate(assert_all_requests_are_fired=True)
def test_foreign_after_url_is_not_followed_with_credentials() -> None:
    body = envelope([], "c1", end=False)
    body["after_url"] = "https://evil.example.com/steal?cursor=c1"
    responses.get(
        TICKETS,
        match=[matchers.query_param_matcher({"start_time": str(START)}, strict_match=False)],
        json=body,
    )
    responses.get(
        TICKETS,
        match=[matchers.query_param_matcher({"cursor": "c1"}, strict_match=False)],
        json=envelope([], "c2", end=True),
    )
    pages = list(source().read("tickets", None))
    assert [p.cursor for p in pages] == ["c1", "c2"]


def test_missing_configuration_is_config_error() -> None:
    with pytest.raises(ConfigError, match="subdomain"):
        ZendeskSource(settings(base_url=None, subdomain=""))
    with pytest.raises(ConfigError, match="api_token"):
        ZendeskSource(settings(api_token=None))
    with pytest.raises(ConfigError, match="unknown stream"):
        list(source().read("orgs", None))


def test_subdomain_builds_official_host() -> None:
    assert ZendeskSource(settings(base_url=None, subdomain="acme")).base_url == "https://acme.zendesk.com"


def test_pacing_throttle_spaces_requests() -> None:
    now = [0.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    throttle = Throttle(10 / 60, clock=lambda: now[0], sleep=sleep)
    session = requests.Session()
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        rsps.get(USERS, json=envelope([], "c1", end=False, key="users"))
        rsps.get(USERS, json=envelope([], "c2", end=False, key="users"))
        rsps.get(USERS, json=envelope([], "c3", end=True, key="users"))
        src = ZendeskSource(settings(), session=session, policy=RetryPolicy.no_wait(), throttle=throttle)
        assert len(list(src.read("users", None))) == 3
    # 3 requests at 10/min: the first is free, the next two wait 6 s each.
    assert sleeps == pytest.approx([6.0, 6.0])
