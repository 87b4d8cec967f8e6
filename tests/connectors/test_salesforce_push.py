"""Salesforce destination against `responses`: describe checks, planning, collections, Bulk 2.0."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
import responses
from responses import matchers
from responses.registries import OrderedRegistry

from ltvsync.connectors.base import Destination, PushItem, PushResult
from ltvsync.connectors.salesforce_push import SF_COLLECTIONS_MAX, SalesforceDestination
from ltvsync.core.errors import BudgetExhaustedError, ConfigError
from ltvsync.core.retry import RetryPolicy

from .test_salesforce_helpers import BASE, CONTACT_TYPES, describe, make_settings, sf_id

COLLECTIONS = f"{BASE}/composite/sobjects"
JOB = "7506g00000DhRA2AAN"


def destination(**overrides: Any) -> SalesforceDestination:
    return SalesforceDestination(
        make_settings(**overrides), retry=RetryPolicy.no_wait(max_attempts=3), bulk_poll_seconds=0
    )


def item(n: int, **values: Any) -> PushItem:
    base: dict[str, Any] = {"ltv": 120.5 + n, "p_alive": 0.5, "tags": "vip;repeat"}
    base.update(values)
    return PushItem(customer_id=n, target_id=sf_id(n), values=base)


def test_satisfies_the_destination_protocol_and_lists_required_fields() -> None:
    dest = destination()
    assert isinstance(dest, Destination)
    fields = dest.required_fields()
    assert ("LTV__c", "currency", "Lifetime value to date (ltvsync)") in fields
    assert [name for name, _, _ in fields] == [
        "LTV__c",
        "LTV_Predicted__c",
        "P_Alive__c",
        "LTV_Tags__c",
        "LTV_Updated__c",
    ]


def test_unknown_push_field_key_fails_at_construction() -> None:
    with pytest.raises(ConfigError, match="lifetime"):
        destination(push_fields={"lifetime": "X__c"})


@responses.activate(assert_all_requests_are_fired=True)
def test_check_passes_when_every_field_exists_with_a_fitting_type() -> None:
    responses.get(f"{BASE}/sobjects/Contact/describe", json=describe("Contact", CONTACT_TYPES))
    destination().check()


@responses.activate(assert_all_requests_are_fired=True)
def test_check_names_missing_and_mistyped_fields_and_what_to_create() -> None:
    types = {k: v for k, v in CONTACT_TYPES.items() if k != "P_Alive__c"}
    types["LTV_Tags__c"] = "boolean"
    responses.get(f"{BASE}/sobjects/Contact/describe", json=describe("Contact", types))
    with pytest.raises(ConfigError) as caught:
        destination().check()
    text = str(caught.value)
    assert "P_Alive__c is missing" in text
    assert "LTV_Tags__c is boolean" in text
    assert "Fields to create: LTV__c (currency)" in text


def test_plan_cuts_201_items_into_200_and_1() -> None:
    batches = destination().plan([item(i) for i in range(1, 202)])
    assert [len(b) for b in batches] == [SF_COLLECTIONS_MAX, 1]
    assert batches[1][0].customer_id == 201


INVALID = [
    PushItem(2, "not-an-id", {"ltv": 1.0}),
    item(3, p_alive=1.7),
    item(4, ltv="a lot"),
    item(1, ltv=3.0),  # the same Contact twice
    item(5, updated="2024-05-20T10:00:00"),  # naive datetime
    PushItem(6, sf_id(6), {"favourite_colour": "blue"}),
]


def test_validate_names_every_invalid_item_without_any_request() -> None:
    dest = destination()
    failures = dest.validate([item(1), *INVALID])
    assert [f.customer_id for f in failures] == [2, 3, 4, 1, 5, 6]
    assert all(not f.ok and f.status_code == "INVALID_ITEM" for f in failures)
    assert "not-an-id" in (failures[0].message or "") and "p_alive" in (failures[1].message or "")
    assert dest.api_calls() == 0


@responses.activate(assert_all_requests_are_fired=True)
def test_invalid_items_are_answered_locally_and_never_block_the_valid_ones() -> None:
    only_valid = {
        "allOrNone": False,
        "records": [
            {
                "attributes": {"type": "Contact"},
                "id": sf_id(1),
                "LTV__c": 121.5,
                "P_Alive__c": 0.5,
                "LTV_Tags__c": "vip;repeat",
            }
        ],
    }
    responses.patch(
        COLLECTIONS,
        json=[{"id": sf_id(1), "success": True, "errors": []}],
        match=[matchers.json_params_matcher(only_valid, strict_match=True)],
    )
    dest = destination()
    (batch,) = dest.plan([item(1), *INVALID])
    results = dest.write(batch)
    assert [(r.customer_id, r.ok, r.status_code) for r in results] == [
        (1, True, None),
        *[(i.customer_id, False, "INVALID_ITEM") for i in INVALID],
    ]
    assert dest.api_calls() == 1


@responses.activate(assert_all_requests_are_fired=True)
def test_write_returns_per_record_results_and_omits_nulls() -> None:
    batch = [item(1), item(2, tags=None), PushItem(3, sf_id(3), {"ltv": None})]
    expected_body = {
        "allOrNone": False,
        "records": [
            {
                "attributes": {"type": "Contact"},
                "id": sf_id(1),
                "LTV__c": 121.5,
                "P_Alive__c": 0.5,
                "LTV_Tags__c": "vip;repeat",
            },
            {"attributes": {"type": "Contact"}, "id": sf_id(2), "LTV__c": 122.5, "P_Alive__c": 0.5},
        ],
    }
    responses.patch(
        COLLECTIONS,
        json=[
            {"id": sf_id(1), "success": True, "errors": []},
            {
                "success": False,
                "errors": [{"statusCode": "ENTITY_IS_DELETED", "message": "entity is deleted", "fields": []}],
            },
        ],
        match=[matchers.json_params_matcher(expected_body, strict_match=True)],
    )

    dest = destination()
    results = dest.write(batch)

    assert results == [
        PushResult(1, ok=True),
        PushResult(2, ok=False, status_code="ENTITY_IS_DELETED", message="entity is deleted"),
        PushResult(3, ok=True, skipped=True),  # only nulls: nothing to write
    ]
    assert dest.api_calls() == 1


@responses.activate(assert_all_requests_are_fired=True)
def test_write_nulls_sends_them_when_configured() -> None:
    body = {
        "allOrNone": False,
        "records": [{"attributes": {"type": "Contact"}, "id": sf_id(3), "LTV__c": None}],
    }
    responses.patch(
        COLLECTIONS,
        json=[{"id": sf_id(3), "success": True, "errors": []}],
        match=[matchers.json_params_matcher(body, strict_match=True)],
    )
    results = destination(write_nulls=True).write([PushItem(3, sf_id(3), {"ltv": None})])
    assert results == [PushResult(3, ok=True)]


@responses.activate(registry=OrderedRegistry, assert_all_requests_are_fired=True)
def test_write_retries_a_429_then_succeeds() -> None:
    responses.patch(COLLECTIONS, status=429, json=[{"errorCode": "REQUEST_LIMIT", "message": "slow down"}])
    responses.patch(COLLECTIONS, json=[{"id": sf_id(1), "success": True, "errors": []}])
    assert destination().write([item(1)]) == [PushResult(1, ok=True)]


@responses.activate(assert_all_requests_are_fired=True)
def test_write_stops_on_request_limit_exceeded() -> None:
    responses.patch(
        COLLECTIONS,
        status=403,
        json=[{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}],
    )
    with pytest.raises(BudgetExhaustedError):
        destination().write([item(1)])
    assert len(responses.calls) == 1


@responses.activate(assert_all_requests_are_fired=True)
def test_a_short_answer_fails_every_record_rather_than_misattributing() -> None:
    responses.patch(COLLECTIONS, json=[{"id": sf_id(1), "success": True, "errors": []}])
    results = destination().write([item(1), item(2)])
    assert [(r.ok, r.status_code) for r in results] == [(False, "UNEXPECTED_RESPONSE")] * 2


def test_write_refuses_oversized_batches() -> None:
    with pytest.raises(ValueError, match="200"):
        destination().write([item(i) for i in range(1, 202)])


def test_use_bulk_above_the_threshold() -> None:
    dest = destination(bulk_push_threshold=2000)
    assert not dest.use_bulk(2000) and dest.use_bulk(2001)


def _csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


@responses.activate(assert_all_requests_are_fired=True)
def test_write_bulk_runs_one_update_job_and_reports_per_record() -> None:
    items = [
        item(1),
        item(2),
        item(3, p_alive=None),
        PushItem(4, "bogus", {"ltv": 1.0}),
        PushItem(1, sf_id(7), {"ltv": None}),  # customer 1's second contact: nothing but nulls
    ]
    uploaded: list[str] = []

    def upload(request: Any) -> tuple[int, dict[str, str], str]:
        uploaded.append(request.body.decode() if isinstance(request.body, bytes) else request.body)
        return 201, {}, ""

    responses.post(
        f"{BASE}/jobs/ingest",
        json={"id": JOB, "state": "Open", "operation": "update", "object": "Contact"},
        match=[
            matchers.json_params_matcher(
                {"operation": "update", "object": "Contact", "contentType": "CSV"}, strict_match=False
            )
        ],
    )
    responses.add_callback(responses.PUT, f"{BASE}/jobs/ingest/{JOB}/batches", callback=upload)
    responses.patch(
        f"{BASE}/jobs/ingest/{JOB}",
        json={"id": JOB, "state": "UploadComplete"},
        match=[matchers.json_params_matcher({"state": "UploadComplete"})],
    )
    responses.get(
        f"{BASE}/jobs/ingest/{JOB}",
        json={"id": JOB, "state": "JobComplete", "numberRecordsProcessed": 3, "numberRecordsFailed": 1},
    )
    responses.get(
        f"{BASE}/jobs/ingest/{JOB}/successfulResults",
        body=f'"sf__Id","sf__Created","Id","LTV__c"\n"{sf_id(3)}","false","{sf_id(3)}","123.5"\n'
        f'"{sf_id(1)}","false","{sf_id(1)}","121.5"\n',
        content_type="text/csv",
    )
    responses.get(
        f"{BASE}/jobs/ingest/{JOB}/failedResults",
        body='"sf__Id","sf__Error","Id"\n'
        f'"","INVALID_CROSS_REFERENCE_KEY:invalid cross reference id","{sf_id(2)}"\n',
        content_type="text/csv",
    )

    dest = destination()
    results = dest.write_bulk(items)

    assert [(r.customer_id, r.ok, r.status_code) for r in results] == [
        (1, True, None),
        (2, False, "INVALID_CROSS_REFERENCE_KEY"),
        (3, True, None),
        (4, False, "INVALID_ITEM"),
        (1, True, None),
    ]
    assert results[4].skipped and not results[0].skipped
    assert results[1].message == "invalid cross reference id"
    (sent,) = uploaded
    rows = {r["Id"]: r for r in _csv_rows(sent)}
    assert set(rows) == {sf_id(1), sf_id(2), sf_id(3)}  # the invalid item never left
    assert rows[sf_id(3)]["P_Alive__c"] == ""  # null not sent: an empty cell leaves the field alone
    assert rows[sf_id(1)]["LTV_Tags__c"] == "vip;repeat"
    assert dest.api_calls() == len(responses.calls)
