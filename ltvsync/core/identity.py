"""Identity resolution: which source identities are one customer, and which facts are theirs.

The rule (deliberately simple and explainable):

* An email is normalised by trimming and lower-casing; anything without exactly one ``@`` and a
  dotted domain counts as no email.
* One normalised email is one person.  Identities, customers and emails form a graph (an
  identity is joined to its normalised email and to the customer it is linked to; a customer to
  its email, including the email of a customer merged away earlier); each connected part of the
  graph is one customer.
* A part holding two or more customers is merged: the oldest customer (lowest id) is kept, the
  others get ``merged_into`` and one ``merge_log`` row each with the shared email(s) as reason.
  Typical cause: a source changes a person's email to one another customer already has.
* A part with an email but no customer gets a new customer.  An identity that loses its email
  keeps its customer (a record with no email but a known identity joins its customer).  An
  identity with neither email nor link stays unlinked (``customer_id`` NULL), never dropped.
* An identity its source deleted keeps its link but its email no longer links or merges anything.
* Facts (purchases, events, tickets) take the customer of the identity ``(source,
  customer_source_id)`` names; a purchase with no such identity falls back to its
  ``customer_email``.  Facts of merged customers move to the kept customer.

The graph is solved in memory (one read of identities and customers, union-find); every write
is a bulk statement, and fact linking is set-based SQL.  Merges are never undone automatically.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, and_, bindparam, delete, func, insert, select, update

from ltvsync.core.models import TABLES
from ltvsync.core.store import Store

FACT_TABLES = ("purchase", "event", "ticket")
# Emails per IN (...) query: well under SQLite's bound-parameter limit.
IN_CHUNK = 500
MAX_REASON_CHARS = 500

Node = tuple[str, ...]


@dataclass(frozen=True)
class IdentityReport:
    """What one resolution pass changed."""

    customers_created: int = 0
    identities_linked: int = 0
    merges: int = 0
    unlinked_identities: int = 0
    facts_linked: int = 0
    merged_pairs: tuple[tuple[int, int], ...] = field(default=())


def normalize_email(value: str | None) -> str | None:
    """Trimmed, lower-cased email, or None when empty or not shaped like an address."""
    if value is None:
        return None
    email = value.strip().lower()
    if email.count("@") != 1 or any(ch.isspace() for ch in email):
        return None
    local, domain = email.split("@")
    if not local or "." not in domain or domain.startswith(".") or domain.endswith("."):
        return None
    return email


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[Node, Node] = {}

    def find(self, node: Node) -> Node:
        parent = self.parent.setdefault(node, node)
        if parent != node:
            root = self.find(parent)
            self.parent[node] = root
            return root
        return node

    def union(self, a: Node, b: Node) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[ra] = rb


@dataclass
class _Part:
    customers: set[int] = field(default_factory=set)
    emails: set[str] = field(default_factory=set)
    identities: list[Any] = field(default_factory=list)


@dataclass
class _Plan:
    new_customers: dict[str, str | None] = field(default_factory=dict)  # email -> name
    merges: list[tuple[int, int, str]] = field(default_factory=list)  # kept, merged, reason
    emails_to_set: dict[int, str] = field(default_factory=dict)
    # (source, source_id, customer id or None, email of a customer to create or None, old customer id)
    links: list[tuple[str, str, int | None, str | None, int | None]] = field(default_factory=list)
    unlinked: int = 0


def resolve_identities(store: Store, conn: Connection) -> IdentityReport:
    """Link identities to customers, merge customers that turn out to be one, link facts."""
    customer, identity = TABLES["customer"], TABLES["identity"]
    customers = conn.execute(select(customer.c.id, customer.c.email, customer.c.merged_into)).all()
    identities = conn.execute(
        select(
            identity.c.source,
            identity.c.source_id,
            identity.c.customer_id,
            identity.c.email,
            identity.c.name,
            identity.c.created_at,
            identity.c.deleted,
        )
    ).all()
    plan = _plan(customers, identities)
    now = store.clock()
    new_ids = _create_customers(conn, plan.new_customers, now)
    changed_links = _apply_links(conn, plan, new_ids)
    _apply_merges(conn, plan.merges, now)
    if plan.emails_to_set:
        stmt = (
            update(customer)
            .where(customer.c.id == bindparam("cid"))
            .values(email=bindparam("em"), updated_at=now)
        )
        conn.execute(stmt, [{"cid": c, "em": e} for c, e in plan.emails_to_set.items()])
    facts = _link_facts(conn, changed_links, plan.merges)
    _refresh_customer_dates(conn, now)
    return IdentityReport(
        customers_created=len(new_ids),
        identities_linked=len(changed_links),
        merges=len(plan.merges),
        unlinked_identities=plan.unlinked,
        facts_linked=facts,
        merged_pairs=tuple((kept, merged) for kept, merged, _ in plan.merges),
    )


def _plan(customers: Sequence[Any], identities: Sequence[Any]) -> _Plan:
    """Decide every change from the current rows, without touching the database."""
    merged_into = {c.id: c.merged_into for c in customers}

    def live(customer_id: int) -> int:
        seen = set()
        while merged_into.get(customer_id) is not None and customer_id not in seen:
            seen.add(customer_id)
            customer_id = merged_into[customer_id]
        return customer_id

    uf = _UnionFind()
    for c in customers:
        email = normalize_email(c.email)
        uf.find(("c", str(live(c.id))))
        if email:
            uf.union(("c", str(live(c.id))), ("e", email))
    for i in identities:
        node: Node = ("i", i.source, i.source_id)
        uf.find(node)
        if i.customer_id is not None:
            uf.union(node, ("c", str(live(i.customer_id))))
        # A record the source deleted keeps its link but no longer vouches for an email.
        email = None if i.deleted else normalize_email(i.email)
        if email:
            uf.union(node, ("e", email))

    parts: dict[Node, _Part] = defaultdict(_Part)
    for i in identities:
        parts[uf.find(("i", i.source, i.source_id))].identities.append(i)
    for other in list(uf.parent):
        part = parts[uf.find(other)]
        if other[0] == "c":
            part.customers.add(int(other[1]))
        elif other[0] == "e":
            part.emails.add(other[1])

    live_emails = {c.id: normalize_email(c.email) for c in customers if c.merged_into is None}
    plan = _Plan()
    for part in parts.values():
        _plan_part(part, plan, live_emails)
    return plan


def _plan_part(part: _Part, plan: _Plan, live_emails: dict[int, str | None]) -> None:
    target: int | str | None  # customer id, or the email of a customer to create
    if part.customers:
        target = min(part.customers)
        for other in sorted(part.customers - {target}):
            shared = ", ".join(sorted(part.emails)) or "a shared identity"
            plan.merges.append((target, other, f"same person: {shared}"[:MAX_REASON_CHARS]))
        if live_emails.get(target) is None and part.emails:
            plan.emails_to_set[target] = min(part.emails)
    elif part.emails:
        target = min(part.emails)
        named = sorted(
            (i for i in part.identities if i.name),
            key=lambda i: (i.created_at is None, i.created_at or datetime.min, i.source, i.source_id),
        )
        plan.new_customers[target] = named[0].name if named else None
    else:
        target = None
    for i in part.identities:
        if target is None:
            plan.unlinked += 1
        if isinstance(target, str):
            plan.links.append((i.source, i.source_id, None, target, i.customer_id))
        elif target != i.customer_id:
            plan.links.append((i.source, i.source_id, target, None, i.customer_id))


def _create_customers(conn: Connection, new: dict[str, str | None], now: datetime) -> dict[str, int]:
    if not new:
        return {}
    customer = TABLES["customer"]
    rows = [{"email": e, "name": n, "created_at": now, "updated_at": now} for e, n in new.items()]
    conn.execute(insert(customer), rows)
    ids: dict[str, int] = {}
    emails = list(new)
    for start in range(0, len(emails), IN_CHUNK):
        query = select(customer.c.id, customer.c.email).where(
            customer.c.email.in_(emails[start : start + IN_CHUNK]), customer.c.merged_into.is_(None)
        )
        ids.update({r.email: r.id for r in conn.execute(query)})
    return ids


def _apply_links(conn: Connection, plan: _Plan, new_ids: dict[str, int]) -> list[dict[str, Any]]:
    links = [
        {"s": source, "sid": source_id, "c": new_ids[email] if email is not None else customer_id, "old": old}
        for source, source_id, customer_id, email, old in plan.links
    ]
    if links:
        identity = TABLES["identity"]
        stmt = (
            update(identity)
            .where(identity.c.source == bindparam("s"), identity.c.source_id == bindparam("sid"))
            .values(customer_id=bindparam("c"))
        )
        conn.execute(stmt, links)
    return links


def _apply_merges(conn: Connection, merges: Sequence[tuple[int, int, str]], now: datetime) -> None:
    if not merges:
        return
    customer, log = TABLES["customer"], TABLES["merge_log"]
    metrics = TABLES["customer_metrics"]
    pairs = [{"kept": kept, "merged": merged} for kept, merged, _ in merges]
    conn.execute(
        update(customer)
        .where(customer.c.id == bindparam("merged"))
        .values(merged_into=bindparam("kept"), updated_at=now),
        pairs,
    )
    # Keep chains one hop long so lookups never walk history.
    conn.execute(
        update(customer)
        .where(customer.c.merged_into == bindparam("merged"))
        .values(merged_into=bindparam("kept")),
        pairs,
    )
    conn.execute(
        insert(log),
        [{"kept_customer_id": k, "merged_customer_id": m, "reason": r, "at": now} for k, m, r in merges],
    )
    # The merged customers' metrics are stale by definition; the next computation rebuilds them.
    conn.execute(delete(metrics).where(metrics.c.customer_id == bindparam("merged")), pairs)


def _link_facts(conn: Connection, links: list[dict[str, Any]], merges: Sequence[tuple[int, int, str]]) -> int:
    """Point facts at their customers; returns the number of fact rows that changed owner."""
    identity, customer = TABLES["identity"], TABLES["customer"]
    # Facts of identities that were linked before and moved (new links are the NULL case below).
    moved = [{"s": x["s"], "sid": x["sid"], "c": x["c"]} for x in links if x["old"] is not None]
    absorbed = [{"kept": kept, "merged": merged} for kept, merged, _ in merges]
    total = 0
    for name in FACT_TABLES:
        fact = TABLES[name]
        if moved:
            stmt = (
                update(fact)
                .where(fact.c.source == bindparam("s"), fact.c.customer_source_id == bindparam("sid"))
                .values(customer_id=bindparam("c"))
            )
            total += max(conn.execute(stmt, moved).rowcount, 0)
        if absorbed:
            stmt = (
                update(fact)
                .where(fact.c.customer_id == bindparam("merged"))
                .values(customer_id=bindparam("kept"))
            )
            total += max(conn.execute(stmt, absorbed).rowcount, 0)
        # Unlinked facts: set-based, from the identity their source names.
        owner = (
            select(identity.c.customer_id)
            .where(identity.c.source == fact.c.source, identity.c.source_id == fact.c.customer_source_id)
            .scalar_subquery()
        )
        stmt = update(fact).where(fact.c.customer_id.is_(None), owner.is_not(None)).values(customer_id=owner)
        total += max(conn.execute(stmt).rowcount, 0)
    purchase = TABLES["purchase"]
    by_email = (
        select(customer.c.id)
        .where(
            customer.c.email == func.lower(func.trim(purchase.c.customer_email)),
            customer.c.merged_into.is_(None),
        )
        .scalar_subquery()
    )
    stmt = (
        update(purchase)
        .where(
            and_(
                purchase.c.customer_id.is_(None),
                purchase.c.customer_email.is_not(None),
                by_email.is_not(None),
            )
        )
        .values(customer_id=by_email)
    )
    total += max(conn.execute(stmt).rowcount, 0)
    return total


def _refresh_customer_dates(conn: Connection, now: datetime) -> None:
    """customer_since = earliest identity creation; first_purchase_at = earliest live purchase."""
    customer: Table = TABLES["customer"]
    identity, purchase = TABLES["identity"], TABLES["purchase"]
    since = (
        select(func.min(identity.c.created_at))
        .where(identity.c.customer_id == customer.c.id)
        .scalar_subquery()
    )
    first = (
        select(func.min(purchase.c.purchased_at))
        .where(purchase.c.customer_id == customer.c.id, purchase.c.deleted.is_(False))
        .scalar_subquery()
    )
    for column, value in (("customer_since", since), ("first_purchase_at", first)):
        stmt = (
            update(customer)
            .where(customer.c.merged_into.is_(None), customer.c[column].is_distinct_from(value))
            .values({column: value, "updated_at": now})
        )
        conn.execute(stmt)
