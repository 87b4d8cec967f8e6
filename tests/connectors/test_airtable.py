"""Airtable destination against `responses`: batching, bodies, throttle, per-record results, schema."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import responses
from pydantic import SecretStr
from responses import matchers
from responses.registries import OrderedRegistry

from ltvsync.config.settings import AirtableSettings
from ltvsync.connectors.airtable import AIRTABLE_MAX_BATCH, AirtableDestination
from ltvsync.connectors.base import Destination, PushItem
from ltvsync.connectors.http import Throttle
from ltvsync.core.errors import AuthError, ConfigError, TransientError
from ltvsync.core.retry import RetryPolicy

ENDPOINT = "http://127.0.0.1:9998"
BASE_ID = "appTEST"
TABLE_URL = f"{ENDPOINT}/v0/{BASE_ID}/Customers"
SCHEMA_URL = f"{ENDPOINT}/v0/meta/bases/{BASE_ID}/tables"


class FakeClock:
    """Monotonic clock whose sleep advances time instantly; records each request instant."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def settings(**overrides: Any) -> AirtableSettings:
    values: dict[str, Any] = {
        "enabled": True,
        "api_key": SecretStr("pat-secret"),
        "base_id": BASE_ID,
        "endpoint_url": ENDPOINT,
    }
    values.update(overrides)
    return AirtableSettings(**values)


def destination(clock: FakeClock | None = None, **overrides: Any) -> AirtableDestination:
    clock = clock or FakeClock()
    s = settings(**overrides)
    throttle = Throttle(s.requests_per_second, clock=clock, sleep=clock.sleep)
    return AirtableDestination(s, policy=RetryPolicy.no_wait(max_attempts=2), throttle=throttle)


def item(n: int, **values: Any) -> PushItem:
    return PushItem(customer_id=n, target_id=f"c{n}@example.com", values={"ltv": float(n), **values})


def upsert_reply(request: Any) -> tuple[int, dict[str, str], str]:
    body = json.loads(request.body)
    records = [
        {"id": f"rec{i}", "createdTime": "2024-01-01T00:00:00.000Z", "fields": r["fields"]}
        for i, r in enumerate(body["records"])
    ]
    reply = {"records": records, "createdRecords": ["rec0"], "updatedRecords": [r["id"] for r in records[1:]]}
    return 200, {}, json.dumps(reply)


def test_is_a_destination() -> None:
    assert isinstance(destination(), Destination)


def test_plan_splits_25_into_10_10_5_and_validates_names() -> None:
    dest = destination()
    batches = dest.plan([item(i) for i in range(25)])
    assert [len(b) for b in batches] == [10, 10, 5]
    assert [i.customer_id for b in batches for i in b] == list(range(25))
    with pytest.raises(ConfigError, match="bogus"):
        dest.plan([item(1), PushItem(2, "x@example.com", {"bogus": 1})])


@responses.activate(assert_all_requests_are_fired=True)
def test_25_records_make_3_requests_with_upsert_body() -> None:
    rsp = responses.add_callback(responses.PATCH, TABLE_URL, callback=upsert_reply)
    dest = destination()
    results = [r for batch in dest.plan([item(i) for i in range(25)]) for r in dest.write(batch)]
    assert rsp.call_count == 3
    assert dest.api_calls() == 3
    assert [r.customer_id for r in results] == list(range(25)) and all(r.ok for r in results)
    assert results[0].message == "created rec0" and results[1].message == "updated rec1"
    first = json.loads(responses.calls[0].request.body or b"")
    assert first["performUpsert"] == {"fieldsToMergeOn": ["Email"]}
    assert first["typecast"] is True
    assert len(first["records"]) == 10
    assert first["records"][3] == {"fields": {"LTV": 3.0, "Email": "c3@example.com"}}
    assert responses.calls[0].request.headers["Authorization"] == "Bearer pat-secret"


@responses.activate(assert_all_requests_are_fired=True)
def test_tags_sent_as_list_for_multiple_selects() -> None:
    responses.patch(
        TABLE_URL,
        match=[
            matchers.json_params_matcher(
                {
                    "records": [{"fields": {"Tags": ["vip", "churn risk"], "Email": "c1@example.com"}}],
                    "typecast": True,
                    "returnFieldsByFieldId": False,
                    "performUpsert": {"fieldsToMergeOn": ["Email"]},
                },
                strict_match=True,
            )
        ],
        json={
            "records": [{"id": "rec1", "createdTime": "2024-01-01T00:00:00.000Z", "fields": {}}],
            "createdRecords": [],
            "updatedRecords": ["rec1"],
        },
    )
    (result,) = destination().write([PushItem(1, "c1@example.com", {"tags": "vip, churn risk,"})])
    assert result.ok


def test_batch_of_11_is_never_sent() -> None:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        dest = destination()
        with pytest.raises(ValueError, match="exceeds 10"):
            dest.write([item(i) for i in range(AIRTABLE_MAX_BATCH + 1)])
        assert len(rsps.calls) == 0 and dest.api_calls() == 0


@responses.activate(assert_all_requests_are_fired=True)
def test_missing_key_is_reported_and_not_sent() -> None:
    responses.add_callback(responses.PATCH, TABLE_URL, callback=upsert_reply)
    results = destination().write([item(1), PushItem(2, "", {"ltv": 1.0}), item(3)])
    assert [(r.customer_id, r.ok, r.status_code) for r in results] == [
        (1, True, None),
        (2, False, "MISSING_KEY"),
        (3, True, None),
    ]
    sent = json.loads(responses.calls[0].request.body or b"")["records"]
    assert [r["fields"]["Email"] for r in sent] == ["c1@example.com", "c3@example.com"]


@responses.activate(assert_all_requests_are_fired=True)
def test_422_reports_each_record_of_the_batch() -> None:
    responses.patch(
        TABLE_URL,
        status=422,
        json={
            "error": {"type": "INVALID_VALUE_FOR_COLUMN", "message": 'Field "LTV" cannot accept the value'}
        },
    )
    results = destination().write([item(1), item(2)])
    assert [(r.customer_id, r.ok, r.status_code) for r in results] == [
        (1, False, "INVALID_VALUE_FOR_COLUMN"),
        (2, False, "INVALID_VALUE_FOR_COLUMN"),
    ]
    assert "cannot accept" in (results[0].message or "")


@responses.activate(registry=OrderedRegistry, assert_all_requests_are_fired=True)
def test_429_is_retried_then_succeeds() -> None:
    # pyairtable's urllib3 retry re-dispatches the 429 itself (responses does not sleep).
    responses.patch(TABLE_URL, status=429, json={"errors": [{"error": "RATE_LIMIT_REACHED"}]})
    responses.add_callback(responses.PATCH, TABLE_URL, callback=upsert_reply)
    (result,) = destination().write([item(1)])
    assert result.ok


@responses.activate(assert_all_requests_are_fired=True)
def test_401_is_auth_error_without_token() -> None:
    responses.patch(
        TABLE_URL, status=401, json={"error": {"type": "AUTHENTICATION_REQUIRED", "message": "x"}}
    )
    with pytest.raises(AuthError) as info:
        destination().write([item(1)])
    assert "pat-secret" not in str(info.value)


def test_throttle_keeps_at_most_five_requests_per_second() -> None:
    clock = FakeClock()
    instants: list[float] = []

    def stamp(request: Any) -> tuple[int, dict[str, str], str]:
        instants.append(clock.now)
        return upsert_reply(request)

    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        rsps.add_callback(responses.PATCH, TABLE_URL, callback=stamp)
        dest = destination(clock)
        for batch in dest.plan([item(i) for i in range(300)]):
            dest.write(batch)
    assert len(instants) == 30
    # Any window of one second holds at most 5 requests (4.8/s configured).
    for i, start in enumerate(instants):
        assert sum(1 for t in instants[i:] if t < start + 1.0) <= 5
    assert instants[-1] - instants[0] == pytest.approx(29 / 4.8)


def schema(fields: list[dict[str, Any]]) -> dict[str, Any]:
    return {"tables": [{"id": "tbl1", "name": "Customers", "primaryFieldId": "fld0", "fields": fields}]}


ALL_FIELDS = [
    {"id": f"fld{i}", "name": name, "type": "multipleSelects" if name == "Tags" else "singleLineText"}
    for i, name in enumerate(["Email", "Name", "LTV", "LTV Predicted", "P(alive)", "Tags", "Orders"])
]


@responses.activate(assert_all_requests_are_fired=True)
def test_check_passes_with_all_fields() -> None:
    responses.get(SCHEMA_URL, json=schema(ALL_FIELDS))
    dest = destination()
    dest.check()
    assert dest.tags_as_list is True


@responses.activate(assert_all_requests_are_fired=True)
def test_check_names_missing_field_and_text_tags_are_joined() -> None:
    responses.get(SCHEMA_URL, json=schema([f for f in ALL_FIELDS if f["name"] != "P(alive)"]))
    with pytest.raises(ConfigError, match=re.escape("'P(alive)'")):
        destination().check()


@responses.activate(assert_all_requests_are_fired=True)
def test_check_text_tags_field_sends_string() -> None:
    fields = [dict(f, type="singleLineText") for f in ALL_FIELDS]
    responses.get(SCHEMA_URL, json=schema(fields))
    responses.patch(
        TABLE_URL,
        match=[
            matchers.json_params_matcher(
                {"records": [{"fields": {"Tags": "a,b", "Email": "c1@example.com"}}]}, strict_match=False
            )
        ],
        json={"records": [], "createdRecords": [], "updatedRecords": []},
    )
    dest = destination()
    dest.check()
    assert dest.tags_as_list is False
    assert dest.write([PushItem(1, "c1@example.com", {"tags": "a,b"})])[0].ok


@responses.activate(assert_all_requests_are_fired=True)
def test_check_falls_back_to_listing_when_schema_endpoint_missing() -> None:
    responses.get(SCHEMA_URL, status=404, json={"error": "NOT_FOUND"})
    responses.get(TABLE_URL, json={"records": []})
    destination().check()


def test_missing_api_key_is_config_error() -> None:
    with pytest.raises(ConfigError, match="api_key"):
        AirtableDestination(settings(api_key=None))


@responses.activate(registry=OrderedRegistry, assert_all_requests_are_fired=True)
def test_503_retried_by_policy_and_counted() -> None:
    responses.patch(TABLE_URL, status=503, body="upstream down")
    responses.add_callback(responses.PATCH, TABLE_URL, callback=upsert_reply)
    dest = destination()
    (result,) = dest.write([item(1)])
    assert result.ok and dest.api_calls() == 2


@responses.activate(assert_all_requests_are_fired=True)
def test_503_forever_is_transient_not_a_record_failure() -> None:
    responses.patch(TABLE_URL, status=503, body="upstream down")
    with pytest.raises(TransientError):
        destination().write([item(1)])


@responses.activate(assert_all_requests_are_fired=True)
def test_check_unknown_table_is_config_error() -> None:
    responses.get(SCHEMA_URL, json={"tables": [{"id": "tblX", "name": "Other", "fields": []}]})
    with pytest.raises(ConfigError, match="'Customers' not found"):
        destination().check()
