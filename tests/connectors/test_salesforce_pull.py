"""Salesforce source against `responses`: paging, the shared-timestamp boundary, deletes, rejections,
describe-based config errors, retries, budget and error translation."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import requests
import responses
from responses import matchers
from responses.registries import OrderedRegistry

from ltvsync.connectors.base import Source
from ltvsync.connectors.salesforce import SalesforceSource
from ltvsync.connectors.salesforce_soql import Keyset
from ltvsync.core.errors import AuthError, BudgetExhaustedError, ConfigError, TransientError
from ltvsync.core.records import CustomerRecord, Deletion, Page, PurchaseRecord
from ltvsync.core.retry import RetryPolicy

from .test_salesforce_helpers import (
    BASE,
    CONTACT_FIELDS,
    CONTACT_TYPES,
    OPPORTUNITY_TYPES,
    SESSION_SECRET,
    T0,
    contact_row,
    describe,
    make_settings,
    page,
    sf_id,
    stamp,
)

QUERY_ALL = f"{BASE}/queryAll/"
QUERY = f"{BASE}/query/"
FULL_SOQL = f"SELECT {CONTACT_FIELDS} FROM Contact ORDER BY SystemModstamp, Id"
OPP_SOQL = (
    "SELECT Id, SystemModstamp, IsDeleted, Amount, CloseDate, ContactId, CurrencyIsoCode, IsWon "
    "FROM Opportunity ORDER BY SystemModstamp, Id"
)


def since_soql(at: datetime) -> str:
    iso = at.replace(microsecond=0).isoformat()
    return f"SELECT {CONTACT_FIELDS} FROM Contact WHERE SystemModstamp >= {iso} ORDER BY SystemModstamp, Id"


def q(soql: str) -> list[Any]:
    return [matchers.query_param_matcher({"q": soql})]


def source(**overrides: Any) -> SalesforceSource:
    return SalesforceSource(
        make_settings(**overrides),
        base_currency="USD",
        known_currencies=frozenset({"USD", "EUR", "GBP"}),
        retry=RetryPolicy.no_wait(max_attempts=3),
        bulk_poll_seconds=0,
    )


def add_contact_describe(rsps: responses.RequestsMock, types: dict[str, str] = CONTACT_TYPES) -> None:
    rsps.get(f"{BASE}/sobjects/Contact/describe", json=describe("Contact", types))


def next_url(token: str) -> str:
    return f"/services/data/v59.0/query/01gRO0000016PIAYA2-{token}"


def test_satisfies_the_source_protocol() -> None:
    src = source()
    assert isinstance(src, Source)
    assert [s.name for s in src.streams()] == ["contacts", "opportunities"]
    assert all(s.is_sorted and s.cursor_field == "SystemModstamp" for s in src.streams())


@responses.activate(assert_all_requests_are_fired=True)
def test_pages_follow_next_records_url_with_a_cursor_per_page() -> None:
    add_contact_describe(responses.mock)
    first = [contact_row(i, T0 + timedelta(seconds=i)) for i in range(1, 4)]
    second = [contact_row(i, T0 + timedelta(seconds=i)) for i in range(4, 6)]
    responses.get(QUERY_ALL, json=page(first, next_url("3")), match=q(FULL_SOQL))
    responses.get(f"https://sf.example.test{next_url('3')}", json=page(second))

    pages = list(source().read("contacts", None))

    assert [len(p.records) for p in pages] == [3, 2]
    assert pages[0].cursor == Keyset(T0 + timedelta(seconds=3), sf_id(3)).encode()
    assert pages[1].cursor == Keyset(T0 + timedelta(seconds=5), sf_id(5)).encode()
    contact = pages[0].records[0]
    assert isinstance(contact, CustomerRecord)
    assert contact.source_id == sf_id(1) and contact.email == "c1@example.com"
    assert contact.name == "Ada Lovelace1"
    assert contact.created_at == T0 + timedelta(seconds=1) - timedelta(days=30)
    assert contact.updated_at.tzinfo is not None
    # Push fields under their API names: the core reads them back to detect human edits.
    assert contact.attributes == {"AccountId": sf_id(1, "001"), "LTV__c": None}
    # describe + query + query_more
    assert [p.api_calls for p in pages] == [2, 1]


def _shared_stamp_mocks(
    rsps: responses.RequestsMock, soql: str, rows: list[dict[str, Any]], tag: str
) -> None:
    """Salesforce pages of 2,000: the query answers the first, nextRecordsUrl the rest."""
    chunks = [rows[i : i + 2000] for i in range(0, len(rows), 2000)]
    for i, chunk in enumerate(chunks):
        more = next_url(f"{tag}-{i + 1}") if i + 1 < len(chunks) else None
        if i == 0:
            rsps.get(QUERY_ALL, json=page(chunk, more), match=q(soql))
        else:
            rsps.get(f"https://sf.example.test{next_url(f'{tag}-{i}')}", json=page(chunk, more))


@responses.activate(assert_all_requests_are_fired=True)
def test_three_thousand_rows_sharing_one_modstamp_across_pages_none_lost_none_twice() -> None:
    add_contact_describe(responses.mock)
    rows = [contact_row(i, T0) for i in range(1, 3001)]
    later = [contact_row(i, T0 + timedelta(seconds=1)) for i in range(3001, 3003)]
    _shared_stamp_mocks(responses.mock, FULL_SOQL, rows, "full")

    src = source()
    full = list(src.read("contacts", None))
    assert [len(p.records) for p in full] == [2000, 1000]
    assert len({r.source_id for p in full for r in p.records}) == 3000
    page1 = full[0]  # suppose the run died after committing page 1 only

    # Resume from page 1's cursor: inclusive >= re-reads the shared timestamp, the Id tie-breaker
    # drops what was committed, and the rows at a later timestamp follow.
    _shared_stamp_mocks(responses.mock, since_soql(T0), [*rows, *later], "resume")
    resumed = list(src.read("contacts", page1.cursor))

    seen = [r.source_id for p in (page1, *resumed) for r in p.records]
    assert len(seen) == len(set(seen)) == 3002
    assert set(seen) == {sf_id(i) for i in range(1, 3003)}
    cursors = [Keyset.decode(p.cursor) for p in (page1, *resumed)]
    assert all(a is not None and b is not None and a <= b for a, b in itertools.pairwise(cursors))
    assert cursors[-1] == Keyset(T0 + timedelta(seconds=1), sf_id(3002))


@responses.activate(assert_all_requests_are_fired=True)
def test_cursor_never_goes_backwards_even_when_rows_arrive_out_of_order() -> None:
    add_contact_describe(responses.mock)
    start = Keyset(T0, sf_id(5))
    rows = [
        contact_row(4, T0),  # at the boundary, already read: dropped
        contact_row(5, T0),  # the cursor row itself: dropped
        contact_row(9, T0 + timedelta(seconds=9)),
        contact_row(7, T0 + timedelta(seconds=7)),  # out of order: kept, cursor stays at 9
    ]
    responses.get(QUERY_ALL, json=page(rows), match=q(since_soql(T0)))

    (only,) = list(source().read("contacts", start.encode()))

    assert [r.source_id for r in only.records] == [sf_id(9), sf_id(7)]
    assert only.cursor == Keyset(T0 + timedelta(seconds=9), sf_id(9)).encode()


@responses.activate(assert_all_requests_are_fired=True)
def test_expired_query_locator_reruns_the_query_from_the_last_page() -> None:
    add_contact_describe(responses.mock)
    first = [contact_row(1, T0), contact_row(2, T0)]
    responses.get(QUERY_ALL, json=page(first, next_url("old")), match=q(FULL_SOQL))
    responses.get(
        f"https://sf.example.test{next_url('old')}",
        status=400,
        json=[{"errorCode": "INVALID_QUERY_LOCATOR", "message": "invalid query locator"}],
    )
    # Re-run from page one's cursor: the shared-timestamp rows come again and are dropped.
    again = [contact_row(1, T0), contact_row(2, T0), contact_row(3, T0 + timedelta(seconds=1))]
    responses.get(QUERY_ALL, json=page(again), match=q(since_soql(T0)))

    pages = list(source().read("contacts", None))

    assert [[r.source_id for r in p.records] for p in pages] == [[sf_id(1), sf_id(2)], [sf_id(3)]]
    locator_calls = [c for c in responses.calls if "PIAYA2-old" in str(c.request.url)]
    assert len(locator_calls) == 1  # an expired locator is not retried in place


@responses.activate(assert_all_requests_are_fired=True)
def test_empty_result_keeps_the_cursor() -> None:
    add_contact_describe(responses.mock)
    cursor = Keyset(T0, sf_id(1)).encode()
    responses.get(QUERY_ALL, json=page([]), match=q(since_soql(T0)))
    (only,) = list(source().read("contacts", cursor))
    assert only.records == [] and only.cursor == cursor


@responses.activate(assert_all_requests_are_fired=True)
def test_deleted_rows_become_deletions() -> None:
    add_contact_describe(responses.mock)
    rows = [contact_row(1), contact_row(2, T0 + timedelta(seconds=1), IsDeleted=True)]
    responses.get(QUERY_ALL, json=page(rows), match=q(FULL_SOQL))

    (only,) = list(source().read("contacts", None))

    assert isinstance(only.records[0], CustomerRecord)
    assert only.records[1] == Deletion("salesforce", "customer", sf_id(2), T0 + timedelta(seconds=1))


def opp(n: int, **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "attributes": {"type": "Opportunity"},
        "Id": sf_id(n, "006"),
        "SystemModstamp": stamp(T0 + timedelta(seconds=n)),
        "IsDeleted": False,
        "Amount": Decimal("1200.50"),
        "CloseDate": "2024-05-20",
        "ContactId": sf_id(n),
        "CurrencyIsoCode": "EUR",
        "IsWon": True,
    }
    row.update(fields)
    return row


def _opp_body(rows: list[dict[str, Any]]) -> str:
    # Decimals written as JSON numbers, as Salesforce sends them.
    import json

    return json.dumps(page(rows), default=lambda d: float(d) if isinstance(d, Decimal) else str(d))


@responses.activate(assert_all_requests_are_fired=True)
def test_opportunities_load_good_rows_and_reject_bad_ones_verbatim() -> None:
    responses.get(f"{BASE}/sobjects/Opportunity/describe", json=describe("Opportunity", OPPORTUNITY_TYPES))
    rows = [
        opp(1),
        opp(2, Id=None),
        opp(3, CloseDate="20/05/2024"),
        opp(4, Amount=-5),
        opp(5, Amount="lots"),
        opp(6, CurrencyIsoCode="XYZ"),
        opp(7, IsWon=False),  # no longer won: leaves the store as a deletion
        opp(8, Amount=99.99, CurrencyIsoCode="gbp"),
    ]
    responses.get(QUERY_ALL, body=_opp_body(rows), content_type="application/json", match=q(OPP_SOQL))

    (only,) = list(source(currency_field="CurrencyIsoCode").read("opportunities", None))

    purchases = [r for r in only.records if isinstance(r, PurchaseRecord)]
    assert [(p.source_id, p.amount, p.currency) for p in purchases] == [
        (sf_id(1, "006"), Decimal("1200.5"), "EUR"),
        (sf_id(8, "006"), Decimal("99.99"), "GBP"),
    ]
    assert purchases[0].purchased_at == datetime(2024, 5, 20, tzinfo=UTC)
    assert purchases[0].customer_source_id == sf_id(1)
    assert [r for r in only.records if isinstance(r, Deletion)] == [
        Deletion("salesforce", "purchase", sf_id(7, "006"), T0 + timedelta(seconds=7))
    ]
    reasons = [r.reason for r in only.rejections]
    assert reasons == [
        "missing Id",
        "missing or unparseable CloseDate '20/05/2024'",
        "negative Amount -5",
        "non-numeric Amount 'lots'",
        "unknown currency 'XYZ'",
    ]
    assert all(r.stream == "opportunities" and r.source == "salesforce" for r in only.rejections)
    assert '"Amount": "lots"' in only.rejections[3].payload
    # The cursor passes the rejected rows too, so they are not re-read forever.
    assert only.cursor == Keyset(T0 + timedelta(seconds=8), sf_id(8, "006")).encode()


@responses.activate(assert_all_requests_are_fired=True)
def test_base_currency_when_no_currency_field() -> None:
    types = {k: v for k, v in OPPORTUNITY_TYPES.items() if k != "CurrencyIsoCode"}
    responses.get(f"{BASE}/sobjects/Opportunity/describe", json=describe("Opportunity", types))
    soql = OPP_SOQL.replace(" CurrencyIsoCode,", "")
    responses.get(QUERY_ALL, body=_opp_body([opp(1)]), content_type="application/json", match=q(soql))
    (only,) = list(source().read("opportunities", None))
    assert [r.currency for r in only.records if isinstance(r, PurchaseRecord)] == ["USD"]


@responses.activate(assert_all_requests_are_fired=True)
def test_check_names_the_object_and_missing_field() -> None:
    types = {k: v for k, v in CONTACT_TYPES.items() if k != "Email"}
    add_contact_describe(responses.mock, types)
    with pytest.raises(ConfigError, match=r"Contact has no field\(s\) Email"):
        source().check()


@responses.activate(assert_all_requests_are_fired=True)
def test_check_validates_filter_fields_against_describe() -> None:
    add_contact_describe(responses.mock)
    types = {k: v for k, v in OPPORTUNITY_TYPES.items() if k != "IsWon"}
    responses.get(f"{BASE}/sobjects/Opportunity/describe", json=describe("Opportunity", types))
    with pytest.raises(ConfigError, match=r"Opportunity has no field\(s\) IsWon"):
        source().check()


@responses.activate(assert_all_requests_are_fired=True)
def test_unknown_object_is_a_config_error() -> None:
    responses.get(
        f"{BASE}/sobjects/Kontakt/describe",
        status=404,
        json=[{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}],
    )
    with pytest.raises(ConfigError, match="Kontakt"):
        source(contact_object="Kontakt").check()


@responses.activate(registry=OrderedRegistry, assert_all_requests_are_fired=True)
def test_503_then_200_is_retried() -> None:
    add_contact_describe(responses.mock)
    responses.get(QUERY_ALL, status=503, json=[{"errorCode": "SERVER_UNAVAILABLE", "message": "busy"}])
    responses.get(QUERY_ALL, json=page([contact_row(1)]), match=q(FULL_SOQL))
    (only,) = list(source().read("contacts", None))
    assert [r.source_id for r in only.records] == [sf_id(1)]
    assert only.api_calls == 3


@responses.activate(assert_all_requests_are_fired=True)
def test_connection_errors_exhaust_retries_as_transient() -> None:
    add_contact_describe(responses.mock)
    responses.get(QUERY_ALL, body=requests.ConnectionError("connection reset"))
    with pytest.raises(TransientError, match="ConnectionError"):
        list(source().read("contacts", None))
    assert len([c for c in responses.calls if "queryAll" in str(c.request.url)]) == 3


@responses.activate(assert_all_requests_are_fired=True)
def test_request_limit_exceeded_is_budget_exhausted_not_retried() -> None:
    add_contact_describe(responses.mock)
    responses.get(
        QUERY_ALL,
        status=403,
        json=[{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}],
    )
    with pytest.raises(BudgetExhaustedError, match="REQUEST_LIMIT_EXCEEDED"):
        list(source().read("contacts", None))
    assert len(responses.calls) == 2


@responses.activate(assert_all_requests_are_fired=True)
def test_pull_stops_before_eating_the_push_reserve() -> None:
    add_contact_describe(responses.mock)
    low = {"Sforce-Limit-Info": "api-usage=4100/5000"}  # 900 left < 20% of 5000
    responses.get(QUERY_ALL, json=page([contact_row(1)], next_url("1")), headers=low)
    src = source()
    pages: Iterator[Page] = src.read("contacts", None)
    first = next(pages)
    assert first.cursor is not None
    with pytest.raises(BudgetExhaustedError, match="900/5000"):
        next(pages)
    assert src.client.usage is not None and src.client.usage.remaining == 900


@responses.activate(assert_all_requests_are_fired=True)
def test_expired_session_is_an_auth_error_without_the_secret() -> None:
    responses.get(
        f"{BASE}/sobjects/Contact/describe",
        status=401,
        json=[{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}],
    )
    with pytest.raises(AuthError) as caught:
        source().check()
    assert "INVALID_SESSION_ID" in str(caught.value)
    assert SESSION_SECRET not in str(caught.value)
    assert caught.value.__cause__ is None  # the vendor exception (with its request) is not chained


@responses.activate(assert_all_requests_are_fired=True)
def test_invalid_field_from_the_server_is_a_config_error() -> None:
    add_contact_describe(responses.mock)
    responses.get(
        QUERY_ALL,
        status=400,
        json=[{"message": "No such column 'LTV__c' on entity 'Contact'", "errorCode": "INVALID_FIELD"}],
    )
    with pytest.raises(ConfigError, match="INVALID_FIELD"):
        list(source().read("contacts", None))


def test_unknown_stream_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no stream"):
        list(source().read("leads", None))


@responses.activate(assert_all_requests_are_fired=True)
def test_big_first_load_goes_through_a_bulk_query_job() -> None:
    add_contact_describe(responses.mock)
    count = {"totalSize": 60001, "done": True, "records": []}
    responses.get(QUERY, json=count, match=q("SELECT COUNT() FROM Contact"))
    bulk_soql = FULL_SOQL.replace(" ORDER BY SystemModstamp, Id", "")
    responses.post(
        f"{BASE}/jobs/query",
        json={"id": "750Q0000001", "state": "UploadComplete"},
        match=[matchers.json_params_matcher({"operation": "query", "query": bulk_soql}, strict_match=False)],
    )
    responses.get(f"{BASE}/jobs/query/750Q0000001", json={"id": "750Q0000001", "state": "JobComplete"})
    header = "Id,SystemModstamp,IsDeleted,Email,FirstName,LastName,CreatedDate,AccountId,LTV__c\n"
    csv_body = (
        header
        + f"{sf_id(2)},2024-05-20T20:49:35.000Z,false,b@example.com,Bo,,2024-01-01T00:00:00.000Z,,12.50\n"
        + f"{sf_id(1)},2024-05-20T20:49:33.000Z,false,,Al,Smith,,{sf_id(1, '001')},\n"
    )
    responses.get(
        f"{BASE}/jobs/query/750Q0000001/results",
        body=csv_body,
        headers={"Sforce-NumberOfRecords": "2", "Sforce-Locator": "null"},
        content_type="text/csv",
    )

    pages = list(source(bulk_backfill_threshold=50_000).read("contacts", None))

    assert [p.cursor for p in pages[:-1]] == [None]  # unsorted: no mid-way checkpoint
    assert (
        pages[-1].records == ()
        and pages[-1].cursor == Keyset(datetime(2024, 5, 20, 20, 49, 35, tzinfo=UTC), sf_id(2)).encode()
    )
    by_id = {r.source_id: r for r in pages[0].records if isinstance(r, CustomerRecord)}
    assert by_id[sf_id(2)].attributes == {"AccountId": None, "LTV__c": 12.5}
    assert by_id[sf_id(1)].email is None and by_id[sf_id(1)].name == "Al Smith"
    assert sum(p.api_calls for p in pages) == len(responses.calls)
