"""The Salesforce emulator, driven by the unmodified simple-salesforce client over TLS on loopback."""

from __future__ import annotations

import csv
import io
import random
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
import requests
from simple_salesforce.api import Salesforce
from simple_salesforce.exceptions import (
    SalesforceExpiredSession,
    SalesforceMalformedRequest,
    SalesforceRefusedRequest,
    SalesforceResourceNotFound,
)
from simple_salesforce.format import format_soql

from ltvsync.sandbox import soql
from ltvsync.sandbox.salesforce import SalesforceEmulator
from ltvsync.sandbox.salesforce_schema import sf_datetime
from ltvsync.sandbox.tls import SandboxTLS

from .conftest import AS_OF, N_CONTACTS, contact_id, make_contacts, sf_session

Client = Callable[..., Any]  # builds a Salesforce; Any because its __getattr__ typing is a union


def bulk2_contact(sf: Any) -> Any:
    """``sf.bulk2.Contact`` (its ``__getattr__`` typing is a union mypy cannot narrow)."""
    return cast(Any, sf).bulk2.Contact


def live_contacts(emu: SalesforceEmulator) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in emu.objects["Contact"].items() if not v["IsDeleted"]}


# -- query / queryAll / queryMore -----------------------------------------------------------------
def test_query_all_iter_pages_5000_contacts_in_modstamp_order(
    sf_emulator: SalesforceEmulator, sf_client: Client
) -> None:
    rows = list(
        sf_client().query_all_iter(
            "SELECT Id, Email, SystemModstamp FROM Contact ORDER BY SystemModstamp, Id"
        )
    )
    assert [r["Id"] for r in rows] == sorted(
        live_contacts(sf_emulator), key=lambda i: (sf_emulator.objects["Contact"][i]["SystemModstamp"], i)
    )
    assert len({r["Id"] for r in rows}) == len(rows)
    assert rows[0]["attributes"]["type"] == "Contact"
    assert set(rows[0]) == {"attributes", "Id", "Email", "SystemModstamp"}
    # 4,995 rows in pages of 2,000: the first query plus two queryMore calls.
    assert (sf_emulator.count("query"), sf_emulator.count("query_more")) == (1, 2)


def test_batch_size_header_and_next_records_url_format(
    sf_emulator: SalesforceEmulator, sf_client: Client
) -> None:
    sf = sf_client()
    first = sf.query("SELECT Id FROM Contact", headers={"Sforce-Query-Options": "batchSize=500"})
    assert len(first["records"]) == 500 and first["done"] is False
    assert first["nextRecordsUrl"].startswith("/services/data/v59.0/query/")
    assert first["nextRecordsUrl"].endswith("-500")
    second = sf.query_more(first["nextRecordsUrl"], identifier_is_url=True)
    assert len(second["records"]) == 500
    assert {r["Id"] for r in first["records"]}.isdisjoint(r["Id"] for r in second["records"])
    # The same locator also answers under queryAll/ (documented: either resource works).
    third = sf.query_more(second["nextRecordsUrl"].replace("/query/", "/queryAll/"), identifier_is_url=True)
    assert third["nextRecordsUrl"].endswith("-1500")


def test_watermark_filter_matches_python_and_query_all_sees_deletes(
    sf_emulator: SalesforceEmulator, sf_client: Client
) -> None:
    sf = sf_client()
    boundary = AS_OF - timedelta(days=30) + timedelta(minutes=40)
    q = format_soql("SELECT Id FROM Contact WHERE SystemModstamp >= {} ORDER BY SystemModstamp", boundary)
    live = [r["Id"] for r in sf.query_all_iter(q)]
    every = [r["Id"] for r in sf.query_all_iter(q, include_deleted=True)]
    expected = {
        i
        for i, c in sf_emulator.objects["Contact"].items()
        if soql.parse_datetime(c["SystemModstamp"]) >= boundary
    }
    assert set(every) == expected
    assert set(live) == {i for i in expected if not sf_emulator.objects["Contact"][i]["IsDeleted"]}
    assert len(every) > len(live)  # the boundary minute includes soft-deleted rows


def test_count_and_boolean_logic(sf_client: Client) -> None:
    sf = sf_client()
    assert sf.query("SELECT COUNT() FROM Contact")["totalSize"] == N_CONTACTS - N_CONTACTS // 1000
    q = format_soql(
        "SELECT Id FROM Contact WHERE (Email = {} OR Email = {}) AND FirstName != {}",
        "person1@example.com",
        "person2@example.com",
        "Ann",
    )
    assert [r["Id"] for r in sf.query(q)["records"]] == [contact_id(2)]
    opp = sf.query(
        "SELECT Id, Amount FROM Opportunity WHERE CloseDate >= 2024-06-01 AND Amount != null "
        "ORDER BY Amount DESC"
    )
    assert [r["Amount"] for r in opp["records"]] == [-5.0]
    assert sf.query("SELECT Id FROM Opportunity WHERE IsWon = true LIMIT 1")["totalSize"] == 1


def test_quoted_string_escapes_from_format_soql(sf_emulator: SalesforceEmulator, sf_client: Client) -> None:
    new_id = sf_emulator.add("Contact", {"LastName": "O'Brien \\ Sons", "Email": "ob@example.com"})
    q = format_soql("SELECT Id, Name FROM Contact WHERE LastName = {}", "O'Brien \\ Sons")
    assert [r["Id"] for r in sf_client().query(q)["records"]] == [new_id]


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("SELECT Id, Bogus__c FROM Contact", "INVALID_FIELD"),
        ("SELECT Id FROM Contact WHERE Nope = 1", "INVALID_FIELD"),
        ("SELECT Id FROM Contact WHERE", "MALFORMED_QUERY"),
        ("SELECT Id FROM Contact WHERE Email = 'unterminated", "MALFORMED_QUERY"),
        ("SELEC Id FROM Contact", "MALFORMED_QUERY"),
        ("SELECT Id FROM Nothing", "INVALID_TYPE"),
    ],
)
def test_bad_queries_answer_400_with_error_list(sf_client: Client, text: str, code: str) -> None:
    with pytest.raises(SalesforceMalformedRequest) as info:
        sf_client().query(text)
    assert info.value.status == 400
    assert cast(Any, info.value).content[0]["errorCode"] == code


def test_soql_nulls_sort_first_ascending_and_last_descending() -> None:
    records: list[dict[str, Any]] = [{"Id": "a", "X": 2.0}, {"Id": "b", "X": None}, {"Id": "c", "X": 1.0}]
    types = {"Id": "id", "X": "double"}

    def resolve(obj: str, name: str) -> str:
        return obj if not name else {"id": "Id", "x": "X"}[name.lower()]

    asc = soql.run(soql.parse("SELECT Id FROM T ORDER BY X", resolve), records, types)
    desc = soql.run(soql.parse("select id from T order by x desc", resolve), records, types)
    assert [r["Id"] for r in asc] == ["b", "c", "a"]
    assert [r["Id"] for r in desc] == ["a", "c", "b"]


# -- describe --------------------------------------------------------------------------------------
def test_describe_lists_exactly_the_spec_fields(sf_client: Client) -> None:
    sf = sf_client()
    names = {o["name"] for o in sf.describe()["sobjects"]}
    assert {"Contact", "Opportunity", "Account"} <= names
    fields = {f["name"]: f for f in sf.Contact.describe()["fields"]}
    assert set(fields) == {
        "Id", "FirstName", "LastName", "Name", "Email", "AccountId", "CreatedDate", "LastModifiedDate",
        "SystemModstamp", "IsDeleted", "LTV__c", "LTV_Predicted__c", "P_Alive__c", "LTV_Tags__c",
        "LTV_Updated__c",
    }  # fmt: skip
    assert (fields["LTV__c"]["type"], fields["LTV__c"]["custom"], fields["LTV__c"]["updateable"]) == (
        "currency",
        True,
        True,
    )
    assert fields["P_Alive__c"]["type"] == "percent"
    assert fields["LTV_Tags__c"]["length"] == 255
    assert fields["SystemModstamp"]["updateable"] is False


# -- sObject Collections ---------------------------------------------------------------------------
def _update(sf: Any, records: list[dict[str, Any]], all_or_none: bool = False) -> list[dict[str, Any]]:
    body = {"allOrNone": all_or_none, "records": [{"attributes": {"type": "Contact"}, **r} for r in records]}
    results: list[dict[str, Any]] = sf.restful("composite/sobjects", method="PATCH", json=body)
    return results


def test_collections_update_reports_per_record_results_in_order(
    sf_emulator: SalesforceEmulator, sf_client: Client
) -> None:
    sf_emulator.fail_records[contact_id(2)] = ("FIELD_CUSTOM_VALIDATION_EXCEPTION", "LTV must be positive")
    results = _update(
        sf_client(),
        [
            {"id": contact_id(1), "LTV__c": 10.5, "LTV_Tags__c": "vip;loyal"},
            {"id": contact_id(2), "LTV__c": 3.0},
            {"id": "003TST999999999999", "LTV__c": 1.0},
            {"id": contact_id(999), "LTV__c": 1.0},
            {"id": contact_id(3), "Bogus__c": 1},
            {"id": contact_id(4), "LTV_Tags__c": "x" * 256},
        ],
    )
    assert results[0] == {"id": contact_id(1), "success": True, "errors": []}
    codes = [r["errors"][0]["statusCode"] if r["errors"] else None for r in results]
    assert codes == [
        None, "FIELD_CUSTOM_VALIDATION_EXCEPTION", "INVALID_CROSS_REFERENCE_KEY", "ENTITY_IS_DELETED",
        "INVALID_FIELD", "STRING_TOO_LONG",
    ]  # fmt: skip
    assert sf_emulator.record("Contact", contact_id(1))["LTV__c"] == 10.5
    assert sf_emulator.record("Contact", contact_id(2))["LTV__c"] is None
    assert sf_emulator.writes == [("Contact", contact_id(1), {"LTV__c": 10.5, "LTV_Tags__c": "vip;loyal"})]
    assert sf_emulator.store.last_writer[contact_id(1)] == "client"


def test_collections_all_or_none_rolls_back_the_good_records(
    sf_emulator: SalesforceEmulator, sf_client: Client
) -> None:
    sf_emulator.fail_records[contact_id(2)] = ("FIELD_CUSTOM_VALIDATION_EXCEPTION", "nope")
    results = _update(
        sf_client(), [{"id": contact_id(1), "LTV__c": 1.0}, {"id": contact_id(2), "LTV__c": 2.0}], True
    )
    assert [r["success"] for r in results] == [False, False]
    assert results[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert sf_emulator.writes == [] and sf_emulator.record("Contact", contact_id(1))["LTV__c"] is None


def test_collections_refuse_201_records(sf_emulator: SalesforceEmulator, sf_client: Client) -> None:
    with pytest.raises(SalesforceMalformedRequest) as info:
        _update(sf_client(), [{"id": contact_id(i), "LTV__c": 1.0} for i in range(201)])
    assert info.value.status == 400
    assert cast(Any, info.value).content[0]["errorCode"] == "EXCEEDED_ID_LIMIT"
    assert sf_emulator.writes == []


def test_collections_upsert_on_email_reports_created_flag(
    sf_emulator: SalesforceEmulator, sf_client: Client
) -> None:
    body = {
        "allOrNone": False,
        "records": [
            {"attributes": {"type": "Contact"}, "Email": "PERSON5@example.com", "LTV__c": 7.0},
            {"attributes": {"type": "Contact"}, "Email": "fresh@example.com", "LastName": "Fresh"},
            {"attributes": {"type": "Contact"}, "Email": "nolastname@example.com"},
        ],
    }
    results: list[dict[str, Any]] = sf_client().restful(
        "composite/sobjects/Contact/Email", method="PATCH", json=body
    )
    assert results[0] == {"id": contact_id(5), "success": True, "errors": [], "created": False}
    assert results[1]["created"] is True and results[1]["id"].startswith("003")
    assert results[2]["errors"][0]["statusCode"] == "REQUIRED_FIELD_MISSING"
    created = sf_emulator.record("Contact", results[1]["id"])
    assert (created["Name"], created["IsDeleted"], created["CreatedDate"]) == (
        "Fresh",
        False,
        sf_datetime(AS_OF),
    )


def test_single_record_update_and_someone_else_edits(
    sf_emulator: SalesforceEmulator, sf_client: Client
) -> None:
    sf = sf_client()
    contact = cast(Any, sf).Contact
    assert contact.update(contact_id(7), {"LTV__c": 99.0}) == 204
    assert contact.get(contact_id(7))["LTV__c"] == 99.0
    later = AS_OF + timedelta(hours=1)
    sf_emulator.clock = lambda: later
    sf_emulator.modify("Contact", contact_id(7), {"LTV__c": 1.0})
    record = sf_emulator.record("Contact", contact_id(7))
    assert record["SystemModstamp"] == sf_datetime(later) and record["LastModifiedDate"] == sf_datetime(later)
    assert sf_emulator.store.last_writer[contact_id(7)] == "admin"
    assert sf_emulator.writes == [("Contact", contact_id(7), {"LTV__c": 99.0})]
    sf_emulator.delete("Contact", contact_id(7))
    assert sf.query(format_soql("SELECT Id FROM Contact WHERE Id = {}", contact_id(7)))["totalSize"] == 0
    new_id = contact.create({"LastName": "Created", "Email": "created@example.com"})["id"]
    assert sf_emulator.record("Contact", new_id)["Name"] == "Created"
    assert contact.delete(new_id) == 204
    assert sf_emulator.record("Contact", new_id)["IsDeleted"] is True
    with pytest.raises(SalesforceMalformedRequest) as info:
        contact.create({"Email": "no-last-name@example.com"})
    assert cast(Any, info.value).content[0]["errorCode"] == "REQUIRED_FIELD_MISSING"
    with pytest.raises(SalesforceResourceNotFound):
        contact.get(new_id)


# -- Bulk API 2.0 ----------------------------------------------------------------------------------
def test_bulk2_update_with_a_failing_row(sf_emulator: SalesforceEmulator, sf_client: Client) -> None:
    sf = sf_client()
    sf_emulator.fail_records[contact_id(11)] = ("FIELD_CUSTOM_VALIDATION_EXCEPTION", "blocked")
    rows = [{"Id": contact_id(i), "LTV__c": f"{i}.25", "P_Alive__c": "50"} for i in range(10, 13)]
    [summary] = bulk2_contact(sf).update(records=rows, wait=0)
    assert (summary["numberRecordsProcessed"], summary["numberRecordsFailed"]) == (3, 1)
    assert sf_emulator.record("Contact", contact_id(10))["LTV__c"] == 10.25
    assert sf_emulator.record("Contact", contact_id(11))["LTV__c"] is None
    ok = list(csv.DictReader(io.StringIO(bulk2_contact(sf).get_successful_records(summary["job_id"]))))
    bad = list(csv.DictReader(io.StringIO(bulk2_contact(sf).get_failed_records(summary["job_id"]))))
    assert sorted(r["sf__Id"] for r in ok) == [contact_id(10), contact_id(12)]
    assert ok[0]["sf__Created"] == "false" and ok[0]["LTV__c"] in ("10.25", "12.25")
    assert [(r["sf__Id"], r["sf__Error"].split(":")[0]) for r in bad] == [
        (contact_id(11), "FIELD_CUSTOM_VALIDATION_EXCEPTION")
    ]


def test_bulk2_upsert_creates_and_updates(sf_emulator: SalesforceEmulator, sf_client: Client) -> None:
    sf = sf_client()
    rows = [
        {"Email": "person20@example.com", "LTV__c": "5"},
        {"Email": "bulk-new@example.com", "LastName": "New", "LTV__c": "6"},
    ]
    [summary] = bulk2_contact(sf).upsert(records=rows, external_id_field="Email", wait=0)
    assert summary["numberRecordsFailed"] == 0
    ok = list(csv.DictReader(io.StringIO(bulk2_contact(sf).get_successful_records(summary["job_id"]))))
    assert sorted(r["sf__Created"] for r in ok) == ["false", "true"]
    assert sf_emulator.record("Contact", contact_id(20))["LTV__c"] == 5.0


def test_bulk2_query_pages_with_locator(sf_emulator: SalesforceEmulator, sf_client: Client) -> None:
    sf = sf_client()
    pages = list(
        bulk2_contact(sf).query(
            "SELECT Id, Email FROM Contact WHERE FirstName = 'Ann'", max_records=1000, wait=0
        )
    )
    rows = [r for page in pages for r in csv.DictReader(io.StringIO(page))]
    expected = {i for i, c in live_contacts(sf_emulator).items() if c["FirstName"] == "Ann"}
    assert len(pages) == -(-len(expected) // 1000)
    assert {r["Id"] for r in rows} == expected and len(rows) == len(expected)
    assert sf_emulator.count("bulk_query_results") == len(pages)


# -- refusals: auth, budget ------------------------------------------------------------------------
def test_bad_token_is_401_invalid_session_id(sf_client: Client) -> None:
    with pytest.raises(SalesforceExpiredSession) as info:
        sf_client("wrong-token").query("SELECT Id FROM Contact LIMIT 1")
    assert cast(Any, info.value).content == [
        {"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}
    ]


def test_daily_budget_exhaustion_is_403_and_usage_is_reported(sandbox_tls: SandboxTLS) -> None:
    now = [AS_OF]
    emu = SalesforceEmulator({"Contact": make_contacts(5)}, daily_budget=3, clock=lambda: now[0])
    emu.start_tls(tls=sandbox_tls)
    try:
        sf = Salesforce(
            instance_url=emu.base_url, session_id="sandbox-session", session=sf_session(sandbox_tls.ca_path)
        )
        for _ in range(3):
            sf.query("SELECT Id FROM Contact")
        assert (sf.api_usage["api-usage"].used, sf.api_usage["api-usage"].total) == (3, 3)
        with pytest.raises(SalesforceRefusedRequest) as info:
            sf.query("SELECT Id FROM Contact")
        assert cast(Any, info.value).content == [
            {"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}
        ]
        now[0] = AS_OF + timedelta(hours=23)
        with pytest.raises(SalesforceRefusedRequest):
            sf.query("SELECT Id FROM Contact")
        now[0] = AS_OF + timedelta(hours=24)  # a new day's allocation
        assert sf.query("SELECT COUNT() FROM Contact")["totalSize"] == 5
        assert sf.api_usage["api-usage"].used == 1
    finally:
        emu.stop()


def test_oauth_token_endpoint_points_back_at_the_emulator(sf_emulator: SalesforceEmulator) -> None:
    assert sf_emulator.ca_path is not None
    session = sf_session(sf_emulator.ca_path)
    answer = session.post(
        f"{sf_emulator.base_url}/services/oauth2/token",
        data={
            "grant_type": "password",
            "client_id": "k",
            "client_secret": "s",
            "username": "u",
            "password": "p",
        },
        timeout=5,
    ).json()
    assert answer["instance_url"] == sf_emulator.base_url and answer["access_token"] == sf_emulator.session_id


def test_datetime_literal_forms_agree() -> None:
    forms = ["2024-05-01T00:00:00Z", "2024-05-01T00:00:00.000+0000", "2024-05-01T02:00:00+02:00"]
    assert {soql.parse_datetime(f) for f in forms} == {datetime(2024, 5, 1, tzinfo=UTC)}


def test_written_datetimes_and_dates_come_back_in_salesforce_form(
    sf_emulator: SalesforceEmulator, sf_client: Client
) -> None:
    results = _update(
        sf_client(),
        [
            {"id": contact_id(30), "LTV_Updated__c": "2026-11-01T02:00:00+02:00"},
            {"id": contact_id(31), "LTV_Updated__c": "2026-11-01T00:00:00"},
            {"id": contact_id(32), "LTV_Updated__c": "yesterday"},
            {"id": contact_id(33), "LTV_Updated__c": 1730419200},
        ],
    )
    assert [r["success"] for r in results] == [True, True, False, False]
    assert results[2]["errors"][0]["statusCode"] == "INVALID_TYPE_ON_FIELD_IN_RECORD"
    for i in (30, 31):
        assert (
            sf_emulator.record("Contact", contact_id(i))["LTV_Updated__c"] == "2026-11-01T00:00:00.000+0000"
        )


def test_bulk2_job_with_an_unknown_column_fails_and_the_client_aborts_nothing(
    sf_emulator: SalesforceEmulator, sf_client: Client
) -> None:
    from simple_salesforce.exceptions import SalesforceOperationError

    with pytest.raises(SalesforceOperationError, match="Field name not found"):
        bulk2_contact(sf_client()).update(records=[{"Id": contact_id(1), "Nope__c": "1"}], wait=0)
    assert sf_emulator.writes == []
    [job] = sf_emulator.bulk.jobs.values()
    assert job.state == "Failed"


def test_injected_faults_keep_salesforce_error_shapes(sf_emulator: SalesforceEmulator) -> None:
    assert sf_emulator.ca_path is not None
    session = sf_session(sf_emulator.ca_path)
    url = f"{sf_emulator.base_url}/services/data/v59.0/query/"
    headers = {"Authorization": f"Bearer {sf_emulator.session_id}"}
    sf_emulator.knobs.fault_rate = 1.0
    statuses: list[int | str] = []
    for _ in range(12):
        try:
            answer = session.get(
                url, params={"q": "SELECT Id FROM Contact LIMIT 1"}, headers=headers, timeout=5
            )
        except requests.ConnectionError:
            statuses.append("dropped")
            continue
        statuses.append(answer.status_code)
        assert "api-usage=" in answer.headers["Sforce-Limit-Info"]
        if answer.status_code == 503:
            assert answer.json()[0]["errorCode"] == "SERVER_UNAVAILABLE"
    assert set(statuses) <= {503, 429, "dropped"} and 503 in statuses
    sf_emulator.knobs.fault_rate = 0.0
    answer = session.get(url, params={"q": "SELECT Id FROM Contact LIMIT 1"}, headers=headers, timeout=5)
    assert answer.json()["totalSize"] == 1


def test_a_generated_world_loads_and_describe_matches_its_fields(sandbox_tls: SandboxTLS) -> None:
    from ltvsync.sandbox.world import generate_world

    world = generate_world(n_customers=60, seed=5, as_of=AS_OF)
    emu = SalesforceEmulator(world.salesforce)
    emu.start_tls(tls=sandbox_tls)
    try:
        sf = cast(
            Any,
            Salesforce(
                instance_url=emu.base_url,
                session_id="sandbox-session",
                session=sf_session(sandbox_tls.ca_path),
            ),
        )
        for obj, records in world.salesforce.items():
            described = {f["name"] for f in getattr(sf, obj).describe()["fields"]}
            assert described == set().union(*(r.keys() for r in records.values())), obj
            live = sum(1 for r in records.values() if not r["IsDeleted"])
            assert sf.query(f"SELECT COUNT() FROM {obj}")["totalSize"] == live
            assert sf.query(f"SELECT COUNT() FROM {obj}", include_deleted=True)["totalSize"] == len(records)
    finally:
        emu.stop()


def test_admin_http_routes_edit_as_someone_else_without_spending_budget(
    sf_emulator: SalesforceEmulator,
) -> None:
    assert sf_emulator.ca_path is not None
    session = sf_session(sf_emulator.ca_path)
    base = f"{sf_emulator.base_url}/admin/sobjects/Contact"
    created = session.post(base, json={"LastName": "Admin", "Email": "admin@example.com"}, timeout=5)
    assert created.status_code == 201
    new_id = created.json()["id"]
    assert session.patch(f"{base}/{new_id}", json={"LTV__c": 5.0}, timeout=5).status_code == 204
    assert session.delete(f"{base}/{contact_id(1)}", timeout=5).status_code == 204
    assert session.patch(f"{base}/003NOPE", json={}, timeout=5).status_code == 404
    assert sf_emulator.record("Contact", new_id)["LTV__c"] == 5.0
    assert sf_emulator.record("Contact", contact_id(1))["IsDeleted"] is True
    assert sf_emulator.store.last_writer[new_id] == "admin"
    assert session.get(f"{sf_emulator.base_url}/admin/writes", timeout=5).json() == []
    assert sf_emulator.api_used == 0


def test_mangled_soql_is_refused_never_crashes() -> None:
    emulator = SalesforceEmulator(
        {"Contact": make_contacts(20)}
    )  # not started: run_soql is the parser + engine
    good = (
        "SELECT Id, Email FROM Contact WHERE (SystemModstamp >= 2024-01-01T00:00:00Z OR Email = 'a\\'b') "
        "AND LTV__c != null AND Email IN ('a', 'b') ORDER BY SystemModstamp DESC NULLS LAST, Id LIMIT 5"
    )
    rng = random.Random(7)
    tokens = good.split()
    cases = [good[:i] for i in range(0, len(good), 3)]
    for _ in range(300):
        mangled = list(tokens)
        mangled.insert(
            rng.randrange(len(mangled)), rng.choice(["'x'", "5", "(", ")", ",", "AND", "=", "LIMIT"])
        )
        del mangled[rng.randrange(len(mangled))]
        cases.append(" ".join(mangled))
    refused = 0
    for text in cases:
        try:
            emulator.run_soql(text, include_deleted=True)
        except soql.SoqlError as exc:  # anything else escaping would be a 500 to the client
            assert exc.code in {
                "MALFORMED_QUERY",
                "INVALID_FIELD",
                "INVALID_TYPE",
                "INVALID_QUERY_FILTER_OPERATOR",
            }
            refused += 1
    assert refused > len(cases) // 2


def test_concurrent_pagers_each_get_every_row(sf_emulator: SalesforceEmulator, sf_client: Client) -> None:
    def page_all(_: int) -> list[str]:
        return [r["Id"] for r in sf_client().query_all_iter("SELECT Id FROM Contact ORDER BY Id")]

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(page_all, range(4)))
    expected = sorted(live_contacts(sf_emulator))
    assert all(ids == expected for ids in results)


def test_a_silent_connection_does_not_stall_the_tls_server(
    sf_emulator: SalesforceEmulator, sf_client: Client
) -> None:
    port = int(sf_emulator.base_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)):  # connects, never says hello
        started = time.monotonic()
        assert sf_client().query("SELECT COUNT() FROM Contact")["totalSize"] > 0
        assert time.monotonic() - started < 2


def test_opportunity_flags_follow_the_stage(sf_emulator: SalesforceEmulator, sf_client: Client) -> None:
    body = {
        "allOrNone": False,
        "records": [
            {
                "attributes": {"type": "Opportunity"},
                "Name": "New",
                "StageName": "Prospecting",
                "CloseDate": "2025-01-31",
            },
            {
                "attributes": {"type": "Opportunity"},
                "Name": "Bad date",
                "StageName": "Closed Won",
                "CloseDate": "31/01",
            },
        ],
    }
    created, bad = sf_client().restful("composite/sobjects", method="POST", json=body)
    assert bad["errors"][0]["statusCode"] == "INVALID_TYPE_ON_FIELD_IN_RECORD"
    assert (
        sf_emulator.record("Opportunity", created["id"])["IsWon"],
        sf_emulator.record("Opportunity", created["id"])["IsClosed"],
    ) == (False, False)
    sf_client().restful(
        "composite/sobjects",
        method="PATCH",
        json={
            "records": [
                {"attributes": {"type": "Opportunity"}, "id": created["id"], "StageName": "Closed Won"}
            ]
        },
    )
    record = sf_emulator.record("Opportunity", created["id"])
    assert (record["IsWon"], record["IsClosed"]) == (True, True)
