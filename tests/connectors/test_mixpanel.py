"""Mixpanel connector against a tiny local HTTP server (mixpanel-utils speaks urllib, not requests)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from pydantic import SecretStr

from ltvsync.config.settings import MixpanelSettings
from ltvsync.connectors.base import Source
from ltvsync.connectors.mixpanel import MixpanelSource, parse_line
from ltvsync.core.errors import AuthError, TransientError
from ltvsync.core.records import CustomerRecord, EventKind, EventRecord, Page, PurchaseRecord
from ltvsync.core.retry import RetryPolicy

Reply = tuple[int, str]


class FakeMixpanel:
    """Serves scripted replies per path; records every request (path, query, headers)."""

    def __init__(self) -> None:
        self.replies: dict[str, list[Reply] | Callable[[dict[str, str]], Reply]] = {}
        self.requests: list[tuple[str, dict[str, str], dict[str, str]]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                fake.requests.append((parts.path, query, dict(self.headers)))
                script = fake.replies.get(parts.path)
                if callable(script):
                    status, body = script(query)
                elif script:
                    status, body = script.pop(0) if len(script) > 1 else script[0]
                else:
                    status, body = 404, '{"error": "no route"}'
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        ).start()

    def queries(self, path: str) -> list[dict[str, str]]:
        return [q for p, q, _ in self.requests if p == path]


EXPORT = "/api/2.0/export"
ENGAGE = "/api/2.0/engage"


@pytest.fixture
def fake() -> Iterator[FakeMixpanel]:
    server = FakeMixpanel()
    yield server
    server.server.shutdown()
    server.server.server_close()


def ts(day: date, hour: int = 12) -> int:
    return int(datetime(day.year, day.month, day.day, hour, tzinfo=UTC).timestamp())


def event(name: str, distinct: str, when: int, insert_id: str | None = None, **props: Any) -> dict[str, Any]:
    properties: dict[str, Any] = {"time": when, "distinct_id": distinct, **props}
    if insert_id is not None:
        properties["$insert_id"] = insert_id
    return {"event": name, "properties": properties}


def jsonl(*events: dict[str, Any]) -> str:
    return "\n".join(json.dumps(e) for e in events) + "\n"


def source(
    fake: FakeMixpanel, today: date, lag_days: int = 1, start: str = "2024-05-01", **kw: Any
) -> MixpanelSource:
    settings = MixpanelSettings(
        enabled=True,
        api_secret=SecretStr("mp-secret-xyz"),
        export_url=fake.url,
        api_url=fake.url + "/api",
        lag_days=lag_days,
        start_date=start,
    )
    now = datetime(today.year, today.month, today.day, 8, tzinfo=UTC)
    return MixpanelSource(settings, policy=RetryPolicy.no_wait(max_attempts=3), now=lambda: now, **kw)


def upsert(store: dict[tuple[str, str], Any], pages: list[Page]) -> None:
    for page in pages:
        for record in page.records:
            store[(type(record).__name__, record.source_id)] = record


def test_is_a_source(fake: FakeMixpanel) -> None:
    src = source(fake, date(2024, 5, 3))
    assert isinstance(src, Source)
    assert [s.name for s in src.streams()] == ["events", "profiles"]


def test_pages_per_day_with_cursor_capped_at_yesterday(fake: FakeMixpanel) -> None:
    d1, d2, d3 = date(2024, 5, 1), date(2024, 5, 2), date(2024, 5, 3)
    fake.replies[EXPORT] = [
        (200, jsonl(event("Login", "u1", ts(d2), "a"), event("Login", "u2", ts(d3), "b")))
    ]
    pages = list(source(fake, d3).read("events", None))
    assert [p.cursor for p in pages] == ["2024-05-01", "2024-05-02", "2024-05-02"]
    assert [[r.source_id for r in p.records] for p in pages] == [[], ["a"], ["b"]]
    (query,) = fake.queries(EXPORT)
    assert (query["from_date"], query["to_date"]) == (d1.isoformat(), d3.isoformat())
    assert set(json.loads(query["event"])) >= {"Purchase", "Login", "Referral"}
    assert pages[0].api_calls == 1 and sum(p.api_calls for p in pages) == 1


def test_late_event_loaded_once_across_two_reads(fake: FakeMixpanel) -> None:
    d1, d2, d3 = date(2024, 5, 1), date(2024, 5, 2), date(2024, 5, 3)
    on_time = event("Login", "u1", ts(d1), "on-time")
    late = event("Login", "u2", ts(d1, 23), "late")  # happened on d1, reached Mixpanel on d2
    fake.replies[EXPORT] = [(200, jsonl(on_time)), (200, jsonl(on_time, late))]
    store: dict[tuple[str, str], Any] = {}
    first = list(source(fake, d2, lag_days=1).read("events", None))
    upsert(store, first)
    cursor = first[-1].cursor
    assert cursor == "2024-05-01"
    second = list(source(fake, d3, lag_days=1).read("events", cursor))
    upsert(store, second)
    # start_date (2024-05-01) bounds the lag re-read from below.
    assert fake.queries(EXPORT)[1]["from_date"] == "2024-05-01"
    assert sorted(k[1] for k in store) == ["late", "on-time"]
    # Cursors never go backwards even though the lag window re-reads earlier days.
    assert all(p.cursor is not None and p.cursor >= cursor for p in second)


def test_lag_window_rereads_from_cursor_minus_lag(fake: FakeMixpanel) -> None:
    fake.replies[EXPORT] = [(200, "")]
    pages = list(source(fake, date(2024, 5, 20), lag_days=3).read("events", "2024-05-10"))
    assert fake.queries(EXPORT)[0]["from_date"] == "2024-05-07"
    cursors = [p.cursor for p in pages]
    assert cursors[:4] == ["2024-05-10"] * 4 and cursors[-2:] == ["2024-05-19", "2024-05-19"]


def test_long_ranges_are_split_into_month_windows(fake: FakeMixpanel) -> None:
    fake.replies[EXPORT] = [(200, "")]
    pages = list(source(fake, date(2024, 3, 10), start="2024-01-01").read("events", None))
    windows = [(q["from_date"], q["to_date"]) for q in fake.queries(EXPORT)]
    # 31-day windows: a two-year backfill fits Mixpanel's 60 export queries an hour.
    assert windows == [
        ("2024-01-01", "2024-01-31"),
        ("2024-02-01", "2024-03-02"),
        ("2024-03-03", "2024-03-10"),
    ]
    assert len(pages) == 70  # still one page (and cursor) per day


def test_insert_id_duplicates_and_missing_insert_id(fake: FakeMixpanel) -> None:
    d = date(2024, 5, 1)
    no_id = event("Login", "u9", ts(d))
    fake.replies[EXPORT] = [
        (200, jsonl(event("Login", "u1", ts(d), "dup"), event("Login", "u1", ts(d), "dup"), no_id))
    ]
    records = [r for p in source(fake, date(2024, 5, 2)).read("events", None) for r in p.records]
    ids = [r.source_id for r in records]
    assert ids.count("dup") == 1 and len(ids) == 2
    hashed = next(i for i in ids if i != "dup")
    # Stable: the same event re-exported gets the same key.
    fake.replies[EXPORT] = [(200, jsonl(no_id))]
    again = [r.source_id for p in source(fake, date(2024, 5, 2)).read("events", None) for r in p.records]
    assert again == [hashed]


def test_purchases_and_bad_amounts_quarantined(fake: FakeMixpanel) -> None:
    d = date(2024, 5, 1)
    t = ts(d)
    fake.replies[EXPORT] = [
        (
            200,
            jsonl(
                event("Purchase", "u1", t, "p-ok", amount="19.90", currency="eur"),
                event("Purchase", "u1", t, "p-neg", amount=-5, currency="USD"),
                event("Purchase", "u1", t, "p-nan", amount="abc", currency="USD"),
                event("Purchase", "u1", t, "p-none", currency="USD"),
                event("Purchase", "u1", t, "p-cur", amount=5, currency="XX"),
                event("Purchase", "u1", t, "p-unk", amount=5, currency="JPY"),
            )
            + "\n{not json\n",
        )
    ]
    src = source(fake, date(2024, 5, 2), currencies=frozenset({"USD", "EUR"}))
    pages = list(src.read("events", None))
    records = [r for p in pages for r in p.records]
    purchases = [r for r in records if isinstance(r, PurchaseRecord)]
    assert [(p.source_id, p.amount, p.currency, p.customer_source_id) for p in purchases] == [
        ("p-ok", Decimal("19.90"), "EUR", "u1")
    ]
    assert purchases[0].purchased_at == datetime(2024, 5, 1, 12, tzinfo=UTC)
    # Every purchase event is still an event; the bad purchases are rejections, not lost.
    assert sum(isinstance(r, EventRecord) for r in records) == 6
    rejections = [r for p in pages for r in p.rejections]
    assert len(rejections) == 6
    assert rejections[0].payload == "{not json" and "unreadable" in rejections[0].reason
    rejected_ids = [json.loads(r.payload)["properties"]["$insert_id"] for r in rejections[1:]]
    assert rejected_ids == ["p-neg", "p-nan", "p-none", "p-cur", "p-unk"]
    assert all(r.reason.startswith("bad purchase") for r in rejections[1:])


def test_referral_and_kinds(fake: FakeMixpanel) -> None:
    d = date(2024, 5, 1)
    fake.replies[EXPORT] = [
        (
            200,
            jsonl(
                event("Referral", "u1", ts(d), "r1", referred_email="friend@example.com"),
                event("Weird Thing", "u1", ts(d), "w1", tags=["a", "b"]),
            ),
        )
    ]
    referral, weird = [r for p in source(fake, date(2024, 5, 2)).read("events", None) for r in p.records]
    assert isinstance(referral, EventRecord) and referral.kind is EventKind.REFERRAL
    assert referral.referred == "friend@example.com" and referral.customer_source_id == "u1"
    assert isinstance(weird, EventRecord) and weird.kind is EventKind.CUSTOM
    assert weird.properties["tags"] == '["a", "b"]' and weird.referred is None


def test_429_none_is_transient_then_success(fake: FakeMixpanel) -> None:
    d = date(2024, 5, 1)
    fake.replies[EXPORT] = [(429, '{"error": "rate limit"}'), (200, jsonl(event("Login", "u1", ts(d), "x")))]
    src = source(fake, date(2024, 5, 2))
    pages = list(src.read("events", None))
    assert [r.source_id for p in pages for r in p.records] == ["x"]
    assert src.api_calls() == 2 and pages[0].api_calls == 2


def test_429_forever_raises_transient(fake: FakeMixpanel) -> None:
    fake.replies[EXPORT] = [(429, "{}")]
    with pytest.raises(TransientError):
        list(source(fake, date(2024, 5, 2)).read("events", None))
    assert len(fake.queries(EXPORT)) == 3


def test_401_is_auth_error_not_retried_and_secret_not_logged(
    fake: FakeMixpanel, caplog: pytest.LogCaptureFixture
) -> None:
    fake.replies[EXPORT] = [(401, '{"error": "Invalid API secret"}')]
    logging.getLogger("mixpanel_utils").setLevel(logging.DEBUG)
    try:
        with caplog.at_level(logging.DEBUG), pytest.raises(AuthError) as info:
            source(fake, date(2024, 5, 2)).check()
    finally:
        logging.getLogger("mixpanel_utils").setLevel(logging.WARNING)
    assert len(fake.queries(EXPORT)) == 1
    assert "mp-secret" not in str(info.value)
    assert "bXAtc2VjcmV0" not in caplog.text and "mp-secret" not in caplog.text  # base64 of "mp-secret"
    headers = fake.requests[0][2]
    assert headers["Authorization"].startswith("Basic ")


def test_unreachable_host_bare_baseexception_becomes_transient() -> None:
    settings = MixpanelSettings(enabled=True, api_secret=SecretStr("s"), export_url="http://127.0.0.1:9")
    src = MixpanelSource(settings, policy=RetryPolicy.no_wait(max_attempts=2))
    with pytest.raises(TransientError, match="request failed"):
        list(src.read("events", datetime.now(UTC).date().isoformat()))
    assert src.api_calls() == 2


def test_profiles_paged_sequentially(fake: FakeMixpanel) -> None:
    def engage(query: dict[str, str]) -> Reply:
        page = int(query.get("page", "0"))
        results = [
            {
                "$distinct_id": f"u{page * 2 + i}",
                "$properties": {"$email": f"u{page * 2 + i}@example.com", "$created": "2024-01-02T03:04:05"},
            }
            for i in range(2 if page < 1 else 1)
        ]
        if page == 0:
            results[1] = {"$properties": {"$email": "no-id@example.com"}}
        return 200, json.dumps(
            {"page": page, "page_size": 2, "session_id": "S1", "total": 3, "results": results}
        )

    fake.replies[ENGAGE] = engage
    pages = list(source(fake, date(2024, 5, 2)).read("profiles", None))
    assert [p.cursor is None for p in pages] == [True, False]
    queries = fake.queries(ENGAGE)
    assert "page" not in queries[0] and (queries[1]["page"], queries[1]["session_id"]) == ("1", "S1")
    assert json.loads(queries[0]["output_properties"]) == ["$email", "$name", "$created", "$last_seen"]
    customers = [r for p in pages for r in p.records]
    assert customers == [
        CustomerRecord(
            "mixpanel",
            "u0",
            "u0@example.com",
            None,
            datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
            datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        ),
        CustomerRecord(
            "mixpanel",
            "u2",
            "u2@example.com",
            None,
            datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
            datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        ),
    ]
    assert len(pages[0].rejections) == 1 and "no-id@example.com" in pages[0].rejections[0].payload


def test_residency_hosts_without_override() -> None:
    settings = MixpanelSettings(enabled=True, api_secret=SecretStr("s"), residency="eu")
    src = MixpanelSource(settings)
    assert src.client.raw_api == "https://data-eu.mixpanel.com/api"
    assert src.client.formatted_api == "https://eu.mixpanel.com/api"


@pytest.mark.parametrize(("with_total", "requests_made"), [(True, 2), (False, 3)])
def test_engage_stops_on_total_or_short_page(
    fake: FakeMixpanel, with_total: bool, requests_made: int
) -> None:
    def engage(query: dict[str, str]) -> Reply:
        page = int(query.get("page", "0"))
        results = [{"$distinct_id": f"p{page}-{i}", "$properties": {}} for i in range(2 if page < 2 else 0)]
        body: dict[str, Any] = {"page": page, "page_size": 2, "session_id": "S", "results": results}
        if with_total:
            body["total"] = 4
        return 200, json.dumps(body)

    fake.replies[ENGAGE] = engage
    pages = list(source(fake, date(2024, 5, 2)).read("profiles", None))
    assert len(fake.queries(ENGAGE)) == requests_made
    assert sorted(r.source_id for p in pages for r in p.records) == ["p0-0", "p0-1", "p1-0", "p1-1"]
    assert pages[-1].cursor == "2024-05-02T08:00:00+00:00"
    assert all(p.cursor is None for p in pages[:-1])


@pytest.mark.parametrize(
    "line",
    [
        '{"event": "Login", "properties": {"time": 1, "distinct_id": "u1", "$insert_id": "a"}}',
        '{"event":"x","properties":{"nested":{"a":[1,2.5,null,true]},"s":"caf\\u00e9 \\"q\\""}}',
        '{"event": "x", "properties": {}}  ',
        '{"a": 1} {"b": 2}',
        '{"a": NaN}',
        "[1, 2]",
        "{not json",
        "",
    ],
)
def test_parse_line_equals_json_loads_including_its_errors(line: str) -> None:
    try:
        expected: Any = json.loads(line)
    except ValueError as exc:
        with pytest.raises(ValueError) as caught:
            parse_line(line)
        assert str(caught.value) == str(exc)
    else:
        assert parse_line(line) == expected


def test_an_event_time_out_of_range_is_quarantined_not_a_crash(fake: FakeMixpanel) -> None:
    d = date(2024, 5, 1)
    good = event("Login", "u1", ts(d), "ok")
    absurd = event("Login", "u2", 10**20, "absurd")
    fake.replies[EXPORT] = [(200, jsonl(good, absurd))]
    pages = list(source(fake, date(2024, 5, 2)).read("events", None))
    records = [r.source_id for p in pages for r in p.records]
    rejected = [r for p in pages for r in p.rejections]
    assert records == ["ok"]
    assert len(rejected) == 1 and "absurd" in rejected[0].payload and rejected[0].reason
