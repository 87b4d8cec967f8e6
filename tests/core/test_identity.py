"""Identity resolution on both stores: one email is one person, merges are logged, nothing is dropped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select

from ltvsync.core.identity import IdentityReport, normalize_email, resolve_identities
from ltvsync.core.models import TABLES
from ltvsync.core.store import Store

T0 = datetime(2025, 1, 10, 9, 0, tzinfo=UTC)
KEY = ("source", "source_id")


def identity(source: str, source_id: str, email: str | None, name: str | None = None, days: int = 0) -> dict:
    at = T0 + timedelta(days=days)
    return {
        "source": source,
        "source_id": source_id,
        "email": email,
        "name": name,
        "created_at": at,
        "updated_at": at,
        "attributes": {},
        "deleted": False,
    }


def purchase(source: str, source_id: str, buyer: str | None, email: str | None = None, days: int = 0) -> dict:
    return {
        "source": source,
        "source_id": source_id,
        "customer_source_id": buyer,
        "customer_email": email,
        "amount": Decimal("40.00"),
        "currency": "USD",
        "amount_base": Decimal("40.00"),
        "purchased_at": T0 + timedelta(days=days),
        "updated_at": T0,
        "deleted": False,
    }


def event(source_id: str, user: str) -> dict:
    return {
        "source": "mixpanel",
        "source_id": source_id,
        "customer_source_id": user,
        "kind": "login",
        "name": "Login",
        "occurred_at": T0,
        "properties": {},
        "referred": None,
    }


def resolve(store: Store, **tables: list[dict]) -> IdentityReport:
    with store.transaction() as conn:
        for table, rows in tables.items():
            store.upsert_many(conn, table, rows, KEY)
        return resolve_identities(store, conn)


def links(store: Store) -> dict[tuple[str, str], int | None]:
    t = TABLES["identity"]
    with store.engine.connect() as conn:
        return {(r.source, r.source_id): r.customer_id for r in conn.execute(select(t))}


def live_customers(store: Store) -> list:
    t = TABLES["customer"]
    with store.engine.connect() as conn:
        return list(conn.execute(select(t).where(t.c.merged_into.is_(None)).order_by(t.c.id)))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Ada.Lovelace@Example.COM ", "ada.lovelace@example.com"),
        ("ada@example.com", "ada@example.com"),
        ("", None),
        ("   ", None),
        (None, None),
        ("no-at-sign.example.com", None),
        ("two@@example.com", None),
        ("@example.com", None),
        ("ada@localhost", None),
        ("ada@example.", None),
        ("ada lovelace@example.com", None),
    ],
)
def test_normalize_email(raw: str | None, expected: str | None) -> None:
    assert normalize_email(raw) == expected


def test_two_customers_merge_when_an_email_change_reveals_one_person(store: Store) -> None:
    # Run 1: Salesforce knows Ada by her work email, Mixpanel by her personal one: two customers.
    first = resolve(
        store,
        identity=[
            identity("salesforce", "003A", "ada@work.example.com", "Ada Lovelace"),
            identity("mixpanel", "mp-ada", "ada@home.example.com", "ada", days=1),
        ],
        purchase=[purchase("salesforce", "006A", "003A")],
        event=[event("ins-1", "mp-ada")],
    )
    assert (first.customers_created, first.merges, first.facts_linked) == (2, 0, 2)
    before = links(store)
    sf_customer, mp_customer = before[("salesforce", "003A")], before[("mixpanel", "mp-ada")]
    assert sf_customer is not None and mp_customer is not None and sf_customer != mp_customer

    # Run 2: Mixpanel's profile now carries the work email (different case and spacing).
    second = resolve(store, identity=[identity("mixpanel", "mp-ada", " ADA@work.example.com", "ada", days=1)])
    assert second.merges == 1 and second.customers_created == 0
    assert second.facts_linked == 1  # Mixpanel's event moves with its identity; the purchase stays
    kept, merged = min(sf_customer, mp_customer), max(sf_customer, mp_customer)
    assert second.merged_pairs == ((kept, merged),)
    assert links(store) == {("salesforce", "003A"): kept, ("mixpanel", "mp-ada"): kept}
    assert [c.id for c in live_customers(store)] == [kept]

    with store.engine.connect() as conn:
        log = conn.execute(select(TABLES["merge_log"])).all()
        gone = conn.execute(select(TABLES["customer"]).where(TABLES["customer"].c.id == merged)).one()
        owners = {
            name: {r.customer_id for r in conn.execute(select(TABLES[name].c.customer_id))}
            for name in ("purchase", "event")
        }
    assert [(r.kept_customer_id, r.merged_customer_id) for r in log] == [(kept, merged)]
    assert "ada@work.example.com" in log[0].reason and log[0].at.tzinfo is not None
    assert gone.merged_into == kept
    assert owners == {"purchase": {kept}, "event": {kept}}

    # A third pass over unchanged data changes nothing.
    third = resolve(store)
    assert (third.merges, third.customers_created, third.identities_linked, third.facts_linked) == (
        0,
        0,
        0,
        0,
    )


def test_same_email_in_two_sources_is_one_customer_from_the_start(store: Store) -> None:
    report = resolve(
        store,
        identity=[
            identity("salesforce", "003B", "Grace@Navy.example.org", "Grace Hopper"),
            identity("zendesk", "zd-9", "grace@navy.example.org "),
        ],
    )
    assert (report.customers_created, report.merges) == (1, 0)
    (customer,) = live_customers(store)
    assert customer.email == "grace@navy.example.org" and customer.name == "Grace Hopper"
    assert set(links(store).values()) == {customer.id}


def test_unlinked_identity_is_kept_and_known_identity_without_email_stays(store: Store) -> None:
    report = resolve(
        store,
        identity=[
            identity("zendesk", "zd-anon", None, "Anonymous visitor"),
            identity("zendesk", "zd-bad", "not-an-email"),
            identity("salesforce", "003C", "alan@example.com", "Alan"),
        ],
        ticket=[
            {
                "source": "zendesk",
                "source_id": "t-1",
                "customer_source_id": "zd-anon",
                "status": "open",
                "created_at": T0,
                "updated_at": T0,
                "solved_at": None,
                "first_reply_minutes": None,
                "satisfaction": None,
                "deleted": False,
            }
        ],
    )
    assert report.unlinked_identities == 2 and report.customers_created == 1
    state = links(store)
    assert state[("zendesk", "zd-anon")] is None and state[("zendesk", "zd-bad")] is None
    alan = state[("salesforce", "003C")]
    assert alan is not None

    # Salesforce later sends Alan without an email: he keeps his customer.
    later = resolve(store, identity=[identity("salesforce", "003C", None, "Alan", days=3)])
    assert links(store)[("salesforce", "003C")] == alan
    assert later.customers_created == 0 and later.unlinked_identities == 2
    with store.engine.connect() as conn:
        ticket_owner = conn.execute(select(TABLES["ticket"].c.customer_id)).scalar_one()
    assert ticket_owner is None  # the ticket is kept, still waiting for its requester to be known


def test_facts_link_by_identity_then_by_purchase_email_and_dates_follow(store: Store) -> None:
    resolve(
        store,
        identity=[identity("salesforce", "003D", "joan@example.com", "Joan", days=-30)],
        purchase=[
            purchase("salesforce", "006-late", "003D", days=5),
            purchase("salesforce", "006-early", "003D", days=2),
            purchase("stripe", "ch_1", None, email=" JOAN@example.com", days=1),
            purchase("stripe", "ch_2", None, email="stranger@example.com", days=1),
        ],
    )
    (joan,) = live_customers(store)
    purchase_t = TABLES["purchase"]
    with store.engine.connect() as conn:
        owners = dict(conn.execute(select(purchase_t.c.source_id, purchase_t.c.customer_id)).all())
    assert owners == {"006-late": joan.id, "006-early": joan.id, "ch_1": joan.id, "ch_2": None}
    assert joan.customer_since == T0 - timedelta(days=30)
    assert joan.first_purchase_at == T0 + timedelta(days=1)


def test_chain_of_three_merges_into_the_oldest_and_old_emails_still_find_it(store: Store) -> None:
    resolve(
        store,
        identity=[
            identity("salesforce", "003X", "x@example.com"),
            identity("mixpanel", "mp-y", "y@example.com", days=1),
            identity("zendesk", "zd-z", "z@example.com", days=2),
        ],
    )
    first = links(store)
    oldest = first[("salesforce", "003X")]
    # Mixpanel's profile moves to x@, Zendesk's user to y@: all three were one person.
    report = resolve(
        store,
        identity=[
            identity("mixpanel", "mp-y", "x@example.com", days=1),
            identity("zendesk", "zd-z", "y@example.com", days=2),
        ],
    )
    assert report.merges == 2 and {kept for kept, _ in report.merged_pairs} == {oldest}
    assert set(links(store).values()) == {oldest}
    # A new source arriving with z@ (only a merged customer's email now) joins the kept customer.
    later = resolve(store, identity=[identity("stripe", "cus_1", "Z@example.com", days=5)])
    assert later.customers_created == 0
    assert links(store)[("stripe", "cus_1")] == oldest
    assert [c.id for c in live_customers(store)] == [oldest]


def test_deleted_identity_keeps_its_link_but_its_email_merges_nothing(store: Store) -> None:
    resolve(
        store,
        identity=[
            identity("salesforce", "003L", "lin@example.com"),
            identity("zendesk", "zd-l", "lin.old@example.com", days=1),
        ],
    )
    before = links(store)
    gone = {**identity("zendesk", "zd-l", "lin@example.com", days=1), "deleted": True}
    report = resolve(store, identity=[gone])
    assert report.merges == 0
    assert links(store) == before
    assert len(live_customers(store)) == 2
