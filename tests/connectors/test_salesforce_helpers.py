"""Shared builders for the Salesforce connector tests, plus unit tests of SOQL/filter/cursor helpers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from pydantic import SecretStr

from ltvsync.config.settings import SalesforceSettings
from ltvsync.connectors.salesforce_client import (
    ErrorKind,
    build_session,
    classify_status,
    parse_limit_info,
)
from ltvsync.connectors.salesforce_soql import Keyset, parse_filter, select_soql
from ltvsync.core.errors import ConfigError

HOST = "https://sf.example.test"
BASE = f"{HOST}/services/data/v59.0"
SESSION_SECRET = "00Dxx!SECRET-SESSION-TOKEN"
T0 = datetime(2024, 5, 20, 20, 49, 32, tzinfo=UTC)

CONTACT_TYPES = {
    "Id": "id",
    "SystemModstamp": "datetime",
    "IsDeleted": "boolean",
    "Email": "email",
    "FirstName": "string",
    "LastName": "string",
    "CreatedDate": "datetime",
    "AccountId": "reference",
    "LTV__c": "currency",
    "LTV_Predicted__c": "currency",
    "P_Alive__c": "double",
    "LTV_Tags__c": "textarea",
    "LTV_Updated__c": "datetime",
}
OPPORTUNITY_TYPES = {
    "Id": "id",
    "SystemModstamp": "datetime",
    "IsDeleted": "boolean",
    "Amount": "currency",
    "CloseDate": "date",
    "ContactId": "reference",
    "IsWon": "boolean",
    "CurrencyIsoCode": "picklist",
}
CONTACT_FIELDS = (
    "Id, SystemModstamp, IsDeleted, Email, FirstName, LastName, CreatedDate, AccountId, "
    "LTV__c, LTV_Predicted__c, P_Alive__c, LTV_Tags__c, LTV_Updated__c"
)


def make_settings(**overrides: Any) -> SalesforceSettings:
    values: dict[str, Any] = {
        "enabled": True,
        "instance_url": HOST,
        "session_id": SecretStr(SESSION_SECRET),
        "bulk_backfill_threshold": 0,
    }
    values.update(overrides)
    return SalesforceSettings(**values)


def describe(name: str, types: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "fields": [{"name": n, "type": t, "updateable": n.endswith("__c")} for n, t in types.items()],
    }


def sf_id(n: int, prefix: str = "003") -> str:
    """An 18-character id whose string order follows ``n``."""
    return f"{prefix}{n:012d}AAA"


def stamp(dt: datetime) -> str:
    """Salesforce's wire format: ``2024-05-20T20:49:32.000+0000``."""
    return dt.strftime("%Y-%m-%dT%H:%M:%S.000+0000")


def contact_row(n: int, at: datetime = T0, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "attributes": {"type": "Contact", "url": f"/services/data/v59.0/sobjects/Contact/{sf_id(n)}"},
        "Id": sf_id(n),
        "SystemModstamp": stamp(at),
        "IsDeleted": False,
        "Email": f"c{n}@example.com",
        "FirstName": "Ada",
        "LastName": f"Lovelace{n}",
        "CreatedDate": stamp(at - timedelta(days=30)),
        "AccountId": sf_id(n, "001"),
        "LTV__c": None,
    }
    row.update(extra)
    return row


def page(rows: list[dict[str, Any]], next_url: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"totalSize": len(rows), "done": next_url is None, "records": rows}
    if next_url:
        body["nextRecordsUrl"] = next_url
    return body


# -- unit tests of the helpers --------------------------------------------------------------------


def test_filter_parses_conjunctions_and_evaluates_rows() -> None:
    clauses = parse_filter("IsWon = true AND StageName != 'Closed \\'Lost\\'' AND Amount >= 10")
    assert [c.field for c in clauses] == ["IsWon", "StageName", "Amount"]
    assert clauses[1].value == "Closed 'Lost'"
    row = {"IsWon": True, "StageName": "Won", "Amount": 12}
    assert all(c.matches(row) for c in clauses)
    assert not all(c.matches({**row, "IsWon": False}) for c in clauses)
    assert not all(c.matches({**row, "Amount": None}) for c in clauses)


@pytest.mark.parametrize(
    "text",
    [
        "IsWon = true OR Id != null",
        "IsWon = true; DELETE",
        "Name = 'x' ) OR (1",
        "IsWon == true",
        "Foo.Bar = 1",
    ],
)
def test_filter_refuses_anything_but_simple_conditions(text: str) -> None:
    with pytest.raises(ConfigError, match="Salesforce filter"):
        parse_filter(text)


def test_select_soql_uses_inclusive_bound_and_rejects_odd_names() -> None:
    soql = select_soql("Contact", ["Id", "Email"], T0)
    assert soql == (
        "SELECT Id, Email FROM Contact WHERE SystemModstamp >= 2024-05-20T20:49:32+00:00 "
        "ORDER BY SystemModstamp, Id"
    )
    with pytest.raises(ConfigError):
        select_soql("Contact", ["Id, (SELECT Id FROM Cases)"], None)


def test_keyset_round_trips_and_orders_by_time_then_id() -> None:
    a, b = Keyset(T0, sf_id(2)), Keyset(T0, sf_id(10))
    assert Keyset.decode(a.encode()) == a
    assert a < b < Keyset(T0 + timedelta(milliseconds=1), sf_id(1))
    assert Keyset.decode(None) is None
    with pytest.raises(ConfigError, match="cursor"):
        Keyset.decode("yesterday")


def test_error_table_classifies_by_status_and_code() -> None:
    assert classify_status(403, "REQUEST_LIMIT_EXCEEDED") is ErrorKind.BUDGET
    assert classify_status(403, "INSUFFICIENT_ACCESS") is ErrorKind.AUTH
    assert classify_status(401, "INVALID_SESSION_ID") is ErrorKind.AUTH
    assert classify_status(400, "INVALID_FIELD") is ErrorKind.CONFIG
    assert classify_status(400, "INVALID_QUERY_LOCATOR") is ErrorKind.REQUERY
    assert classify_status(503, None) is ErrorKind.TRANSIENT
    assert classify_status(429, None) is ErrorKind.TRANSIENT


def test_limit_info_header_parsing() -> None:
    usage = parse_limit_info("api-usage=25/5000; per-app-api-usage=17/250(appName=x)")
    assert usage is not None and (usage.used, usage.total, usage.remaining) == (25, 5000, 4975)
    assert parse_limit_info("per-app-api-usage=17/250(appName=x)") is None


def test_session_trusts_only_the_configured_ca() -> None:
    session = build_session(make_settings(ca_bundle="/tmp/sandbox-ca.pem"))
    assert session.trust_env is False and session.verify == "/tmp/sandbox-ca.pem"
    plain = build_session(make_settings())
    assert plain.trust_env is True and plain.verify is True
    assert isinstance(plain, requests.Session)
