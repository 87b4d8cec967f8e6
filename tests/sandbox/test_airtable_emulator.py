"""The Airtable emulator, driven by the unmodified pyairtable client (and raw requests) over loopback."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest
import requests
from pyairtable import Api

from ltvsync.sandbox.airtable import AirtableEmulator
from ltvsync.sandbox.airtable_table import AirtableError
from ltvsync.sandbox.http import Knobs

from .conftest import AIRTABLE_BASE, AIRTABLE_FIELDS

TOKEN = "sandbox-token"


def customers(emu: AirtableEmulator) -> Any:
    return Api(TOKEN, endpoint_url=emu.base_url).table(AIRTABLE_BASE, "Customers")


def raw(
    emu: AirtableEmulator, method: str, body: Any = None, token: str = TOKEN, **params: Any
) -> requests.Response:
    session = requests.Session()
    session.trust_env = False
    return session.request(
        method,
        f"{emu.base_url}/v0/{AIRTABLE_BASE}/Customers",
        json=body,
        params=params,
        headers={"Authorization": f"Bearer {token}"},
        timeout=5,
    )


def people(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "fields": {
                "Email": f"p{i}@example.com",
                "LTV": i * 1.5,
                "Tags": ["vip"] if i % 2 else ["new", "trial"],
            }
        }
        for i in range(start, start + n)
    ]


def test_batch_upsert_of_25_takes_exactly_3_requests(airtable_emulator: AirtableEmulator) -> None:
    table = customers(airtable_emulator)
    first = table.batch_upsert(people(25), key_fields=["Email"], typecast=True)
    assert airtable_emulator.count("records_update") == 3
    assert (len(first["createdRecords"]), len(first["updatedRecords"]), len(first["records"])) == (25, 0, 25)
    changed = [{"fields": {"Email": "p3@example.com", "LTV": 99.0}}, *people(2, start=25)]
    second = table.batch_upsert(changed, key_fields=["Email"], typecast=True)
    assert second["updatedRecords"] == [
        r["id"] for r in first["records"] if r["fields"]["Email"] == "p3@example.com"
    ]
    assert len(second["createdRecords"]) == 2
    stored = {
        r["fields"]["Email"]: r["fields"] for r in airtable_emulator.records(AIRTABLE_BASE, "Customers")
    }
    assert len(stored) == 27
    assert stored["p3@example.com"] == {
        "Email": "p3@example.com",
        "LTV": 99.0,
        "Tags": ["vip"],
    }  # PATCH merges


def test_listing_pages_with_offset_and_filters(airtable_emulator: AirtableEmulator) -> None:
    table = customers(airtable_emulator)
    table.batch_upsert(people(25), key_fields=["Email"], typecast=True)
    rows = table.all(page_size=10, fields=["Email"])
    assert airtable_emulator.count("records_list") == 3
    assert sorted(r["fields"]["Email"] for r in rows) == sorted(f"p{i}@example.com" for i in range(25))
    assert all(set(r["fields"]) == {"Email"} and r["createdTime"] for r in rows)
    assert [r["fields"]["LTV"] for r in table.all(formula="{Email}='p4@example.com'")] == [6.0]
    both = table.all(formula="OR({Email}='p1@example.com', {Email}=\"p2@example.com\")")
    assert sorted(r["fields"]["Email"] for r in both) == ["p1@example.com", "p2@example.com"]


def test_unsupported_formula_is_422(airtable_emulator: AirtableEmulator) -> None:
    answer = raw(airtable_emulator, "GET", filterByFormula="FIND('x', {Email})")
    assert answer.status_code == 422
    assert answer.json()["error"]["type"] == "INVALID_FILTER_BY_FORMULA"


def test_eleven_records_in_one_request_is_422_invalid_records(airtable_emulator: AirtableEmulator) -> None:
    body = {"records": people(11), "performUpsert": {"fieldsToMergeOn": ["Email"]}, "typecast": True}
    answer = raw(airtable_emulator, "PATCH", body)
    assert answer.status_code == 422
    assert answer.json() == {
        "error": {
            "type": "INVALID_RECORDS",
            "message": "You must provide an array of up to 10 record objects, each with an 'id' ID field "
            "and a 'fields' object for cell values.",
        }
    }
    assert airtable_emulator.records(AIRTABLE_BASE, "Customers") == []


def test_page_size_101_is_422(airtable_emulator: AirtableEmulator) -> None:
    answer = raw(airtable_emulator, "GET", pageSize=101)
    assert answer.status_code == 422
    assert answer.json()["error"]["type"] == "INVALID_REQUEST_UNKNOWN"
    assert raw(airtable_emulator, "GET", pageSize=100).status_code == 200


def test_bad_token_is_401(airtable_emulator: AirtableEmulator) -> None:
    answer = raw(airtable_emulator, "GET", token="wrong")
    assert answer.status_code == 401
    assert answer.json()["error"]["type"] == "AUTHENTICATION_REQUIRED"


def test_select_options_need_typecast_and_unknown_fields_are_refused(
    airtable_emulator: AirtableEmulator,
) -> None:
    table = customers(airtable_emulator)
    with pytest.raises(requests.HTTPError, match="INVALID_MULTIPLE_CHOICE_OPTIONS"):
        table.batch_upsert([{"fields": {"Email": "a@example.com", "Tags": ["gold"]}}], key_fields=["Email"])
    with pytest.raises(requests.HTTPError, match="UNKNOWN_FIELD_NAME"):
        table.batch_upsert([{"fields": {"Email": "a@example.com", "Colour": "red"}}], key_fields=["Email"])
    with pytest.raises(requests.HTTPError, match="INVALID_VALUE_FOR_COLUMN"):
        table.batch_upsert([{"fields": {"Email": "a@example.com", "LTV": "lots"}}], key_fields=["Email"])
    assert airtable_emulator.records(AIRTABLE_BASE, "Customers") == []
    table.batch_upsert(
        [{"fields": {"Email": "a@example.com", "Tags": ["gold"]}}], key_fields=["Email"], typecast=True
    )
    tags = next(f for f in table.schema(force=True).fields if f.name == "Tags")
    assert [c.name for c in cast(Any, tags).options.choices] == ["gold"]


def test_schema_lists_the_configured_columns(airtable_emulator: AirtableEmulator) -> None:
    schema = customers(airtable_emulator).schema()
    assert {f.name: f.type for f in schema.fields} == AIRTABLE_FIELDS
    assert schema.primary_field_id == schema.fields[0].id


def test_fail_records_fail_the_whole_request(airtable_emulator: AirtableEmulator) -> None:
    airtable_emulator.fail_records["p1@example.com"] = "INVALID_VALUE_FOR_COLUMN"
    with pytest.raises(requests.HTTPError, match="INVALID_VALUE_FOR_COLUMN"):
        customers(airtable_emulator).batch_upsert(people(3), key_fields=["Email"], typecast=True)
    assert airtable_emulator.records(AIRTABLE_BASE, "Customers") == []
    assert airtable_emulator.writes == []


@pytest.fixture
def slow_limit_emulator() -> Iterator[AirtableEmulator]:
    # time_scale 0.02: the 30 s penalty lasts 0.6 s, inside pyairtable's ~3 s of Retry backoff.
    emu = AirtableEmulator({AIRTABLE_BASE: {"Customers": {}}}, Knobs(time_scale=0.02))
    emu.start()
    yield emu
    emu.stop()


def test_pyairtable_recovers_from_a_429_penalty(slow_limit_emulator: AirtableEmulator) -> None:
    slow_limit_emulator.penalize(AIRTABLE_BASE)
    started = time.monotonic()
    result = customers(slow_limit_emulator).batch_upsert(people(5), key_fields=["Email"], typecast=True)
    assert len(result["createdRecords"]) == 5
    assert slow_limit_emulator.throttled >= 1
    assert slow_limit_emulator.count("records_update") == 1 + slow_limit_emulator.throttled
    assert time.monotonic() - started >= 0.6 * 0.9


def test_a_burst_over_5_per_second_trips_the_penalty() -> None:
    emu = AirtableEmulator(
        {AIRTABLE_BASE: {"Customers": {}}}, Knobs(time_scale=1.0)
    )  # real 1 s window, 30 s penalty
    emu.start()
    try:
        codes = [raw(emu, "GET").status_code for _ in range(7)]
        assert codes[:5] == [200] * 5 and codes[5:] == [429, 429]
        limited = raw(emu, "GET")
        assert limited.json()["error"]["type"] == "RATE_LIMIT_REACHED"
        # None sent: urllib3 would sleep for it; pyairtable's own backoff is what real Airtable gets.
        assert "Retry-After" not in limited.headers
    finally:
        emu.stop()


def test_mangled_formulas_are_refused_never_crash(airtable_emulator: AirtableEmulator) -> None:
    table = airtable_emulator.table(AIRTABLE_BASE, "Customers")
    good = "AND({Email}='a\\'b', OR({LTV}=3, NOT({Tags}=\"x\")), RECORD_ID()='rec1')"
    rng = random.Random(3)
    cases = [good[:i] for i in range(len(good))]
    for _ in range(300):
        chars = list(good)
        chars[rng.randrange(len(chars))] = rng.choice("(){}'\",= ")
        cases.append("".join(chars))
    refused = 0
    for formula in cases:
        try:
            table.matcher(formula)({"id": "rec1", "fields": {"Email": "a'b", "LTV": 3}})
        except AirtableError as exc:
            assert exc.status == 422
            refused += 1
    assert refused > len(cases) // 2


def test_table_names_with_spaces_are_url_decoded() -> None:
    emu = AirtableEmulator(
        {AIRTABLE_BASE: {"Customer LTV": {}}},
        Knobs(rate_limits=False),
        fields={f"{AIRTABLE_BASE}/Customer LTV": {"Email": "email", "LTV": "currency"}},
    )
    emu.start()
    try:
        table = Api(TOKEN, endpoint_url=emu.base_url).table(AIRTABLE_BASE, "Customer LTV")
        table.batch_create([{"Email": "x@example.com", "LTV": 2.5}], typecast=True)
        assert [r["fields"] for r in table.all()] == [{"Email": "x@example.com", "LTV": 2.5}]
    finally:
        emu.stop()
