"""Fixtures for the Salesforce and Airtable emulator tests: small deterministic orgs/bases, started on
loopback and stopped after each test, plus client factories built exactly as production code would."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from simple_salesforce.api import Salesforce

from ltvsync.sandbox.airtable import AirtableEmulator
from ltvsync.sandbox.http import Knobs
from ltvsync.sandbox.salesforce import SalesforceEmulator
from ltvsync.sandbox.salesforce_schema import sf_datetime
from ltvsync.sandbox.tls import SandboxTLS, make_tls

N_CONTACTS = 5000
AS_OF = datetime(2025, 1, 1, tzinfo=UTC)
AIRTABLE_BASE = "appSandbox0000001"
SF_SESSION = "sandbox-session"


def contact_id(i: int) -> str:
    return f"003TST{i:012d}"


@functools.cache
def make_contacts(n: int) -> dict[str, dict[str, Any]]:
    """Contacts whose SystemModstamp cycles over 50 distinct minutes (many share a timestamp).

    Cached: the emulator deep-copies what it is given, so tests cannot change the shared dicts."""
    out: dict[str, dict[str, Any]] = {}
    for i in range(n):
        stamp = sf_datetime(AS_OF - timedelta(days=30) + timedelta(minutes=i % 50))
        out[contact_id(i)] = {
            "Id": contact_id(i),
            "FirstName": "Ann" if i % 2 else "Bob",
            "LastName": f"Last{i}",
            "Name": f"{'Ann' if i % 2 else 'Bob'} Last{i}",
            "Email": f"person{i}@example.com",
            "AccountId": "001TST000000000000",
            "CreatedDate": stamp,
            "LastModifiedDate": stamp,
            "SystemModstamp": stamp,
            "IsDeleted": i % 1000 == 999,
            "LTV__c": None,
            "LTV_Predicted__c": None,
            "P_Alive__c": None,
            "LTV_Tags__c": None,
            "LTV_Updated__c": None,
        }
    return out


def make_opportunities() -> dict[str, dict[str, Any]]:
    rows = [
        ("Closed Won", 120.0, "2024-03-01"),
        ("Closed Lost", None, "2024-06-15"),
        ("Closed Won", -5.0, "2024-09-30"),
    ]
    out = {}
    for i, (stage, amount, close) in enumerate(rows):
        oid = f"006TST{i:012d}"
        out[oid] = {
            "Id": oid,
            "Name": f"Deal {i}",
            "ContactId": contact_id(i),
            "AccountId": "001TST000000000000",
            "Amount": amount,
            "CloseDate": close,
            "StageName": stage,
            "IsWon": stage == "Closed Won",
            "IsClosed": True,
            "CurrencyIsoCode": "USD",
            "CreatedDate": sf_datetime(AS_OF - timedelta(days=400)),
            "LastModifiedDate": sf_datetime(AS_OF - timedelta(days=400)),
            "SystemModstamp": sf_datetime(AS_OF - timedelta(days=400)),
            "IsDeleted": False,
        }
    return out


@pytest.fixture(scope="session")
def sandbox_tls() -> SandboxTLS:
    return make_tls()


@pytest.fixture
def sf_emulator(sandbox_tls: SandboxTLS) -> Iterator[SalesforceEmulator]:
    account = {
        "001TST000000000000": {
            "Id": "001TST000000000000",
            "Name": "Acme",
            "CreatedDate": sf_datetime(AS_OF),
            "LastModifiedDate": sf_datetime(AS_OF),
            "SystemModstamp": sf_datetime(AS_OF),
            "IsDeleted": False,
        }
    }
    emu = SalesforceEmulator(
        {"Contact": make_contacts(N_CONTACTS), "Opportunity": make_opportunities(), "Account": account},
        clock=lambda: AS_OF,
    )
    emu.start_tls(tls=sandbox_tls)
    yield emu
    emu.stop()


def sf_session(ca_path: str) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE would otherwise override verify
    session.verify = ca_path
    return session


@pytest.fixture
def sf_client(sf_emulator: SalesforceEmulator) -> Callable[..., Any]:
    def build(session_id: str = SF_SESSION) -> Any:
        assert sf_emulator.ca_path is not None
        return Salesforce(
            instance_url=sf_emulator.base_url, session_id=session_id, session=sf_session(sf_emulator.ca_path)
        )

    return build


AIRTABLE_FIELDS = {
    "Email": "email",
    "Name": "singleLineText",
    "LTV": "currency",
    "P(alive)": "percent",
    "Tags": "multipleSelects",
    "Orders": "number",
}


@pytest.fixture
def airtable_emulator() -> Iterator[AirtableEmulator]:
    # Rate limits off so request counts are exact; the limiter has its own tests.
    emu = AirtableEmulator(
        {AIRTABLE_BASE: {"Customers": {}}},
        Knobs(rate_limits=False),
        fields={"Customers": dict(AIRTABLE_FIELDS)},
    )
    emu.start()
    yield emu
    emu.stop()
