"""The push stage: desired LTV values per customer and destination, diffed, written, recorded.

For each destination the stage builds the values we want there, hashes them, and compares the
hash with the last successful push (``push_state``): unchanged customers cost zero API calls.
Changed ones go to the destination in its largest batches; each batch's per-record results are
recorded in ``push_state`` in the same transaction right after the batch, so a crash re-sends at
most the batch in flight.  Failures keep the old hash (never marked pushed), count attempts and
wait an exponential backoff before the next try.

People's edits are protected: when the value a source read back (Salesforce contact attributes)
differs from what we last wrote, someone else changed it, and ``edit_policy`` decides.
A dry run goes through the same planning code and returns the field-level changes, writing nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import Connection, select

from ltvsync.core.errors import BudgetExhaustedError, ConfigError, LtvsyncError, RecordError, TransientError
from ltvsync.core.store import PushStateRow, Store

log = logging.getLogger(__name__)

FieldValue = str | float | int | bool | None
TAG_SEPARATOR = ";"
# Fields that change on every computation and must not, alone, trigger a write.
VOLATILE_FIELDS = frozenset({"updated"})
MAX_BACKOFF = timedelta(hours=24)


class PushItemLike(Protocol):
    customer_id: int
    target_id: str
    values: Mapping[str, FieldValue]


class PushResultLike(Protocol):
    customer_id: int
    ok: bool
    status_code: str | None
    message: str | None
    skipped: bool


class DestinationLike(Protocol):
    name: str

    def plan(self, items: Sequence[Any]) -> list[list[Any]]: ...

    def write(self, batch: Sequence[Any]) -> list[Any]: ...

    def api_calls(self) -> int: ...


# Builds the destination's item type (``ltvsync.connectors.base.PushItem``) without core importing it.
ItemFactory = Callable[[int, str, Mapping[str, FieldValue], Mapping[str, FieldValue] | None], Any]


@dataclass(frozen=True)
class Desired:
    """What we want one customer's record(s) at one destination to hold."""

    customer_id: int
    targets: tuple[str, ...]
    values: Mapping[str, FieldValue]
    label: str  # email, for people reading reports
    remote: Mapping[str, FieldValue] | None = None  # values read back from the destination, if any


@dataclass(frozen=True)
class FieldChange:
    customer: str
    target: str
    field: str
    old: FieldValue
    new: FieldValue


@dataclass
class DestinationReport:
    destination: str
    dry_run: bool = False
    customers: int = 0
    unchanged: int = 0
    deferred: int = 0
    planned: int = 0
    ok: int = 0
    failed: int = 0
    skipped_edits: int = 0
    batches: int = 0
    api_calls: int = 0
    seconds: float = 0.0
    error: str | None = None
    rejections: list[dict[str, Any]] = field(default_factory=list)
    edits: list[dict[str, Any]] = field(default_factory=list)
    changes: list[FieldChange] = field(default_factory=list)

    def as_dict(self, max_changes: int | None = 200) -> dict[str, Any]:
        """The report; a dry run keeps every change, a real run the first ``max_changes``."""
        data = asdict(self)
        kept = self.changes if max_changes is None else self.changes[:max_changes]
        data["changes"] = [asdict(c) for c in kept]
        data["changes_total"] = len(self.changes)
        return data


def values_hash(values: Mapping[str, FieldValue], targets: Sequence[str]) -> str:
    """Stable hash of what we would write (volatile fields excluded) and where."""
    stable = {k: v for k, v in values.items() if k not in VOLATILE_FIELDS}
    blob = json.dumps({"v": stable, "t": sorted(targets)}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def backoff(attempts: int) -> timedelta:
    """Wait before retrying a customer that failed ``attempts`` times: 2, 4, 8 ... minutes, ≤ 24 h."""
    return min(timedelta(minutes=2 ** max(attempts, 1)), MAX_BACKOFF)


def edited_fields(
    previous: Mapping[str, FieldValue] | None, remote: Mapping[str, FieldValue] | None
) -> list[str]:
    """Fields whose value at the destination differs from what we last wrote there."""
    if not previous or remote is None:
        return []
    edited = []
    for key, ours in previous.items():
        if key in VOLATILE_FIELDS or key not in remote:
            continue
        if not _same(ours, remote[key]):
            edited.append(key)
    return edited


def _same(a: FieldValue, b: FieldValue) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return abs(float(a) - float(b)) <= 0.005 + 1e-9 * abs(float(a))
    if isinstance(a, str) and isinstance(b, str):
        return (
            set(a.split(TAG_SEPARATOR)) == set(b.split(TAG_SEPARATOR)) if TAG_SEPARATOR in a + b else a == b
        )
    return a == b


@dataclass(frozen=True)
class PushPlan:
    """Items to send (in order) and the bookkeeping to record their results."""

    items: list[Any]
    owners: list[Desired]
    hashes: dict[int, str]
    changes: list[FieldChange]


def plan_push(
    destination: str,
    desired: Sequence[Desired],
    state: Mapping[int, PushStateRow],
    *,
    now: datetime,
    edit_policy: str,
    make_item: ItemFactory,
    report: DestinationReport,
    retry_failed: bool = False,
) -> PushPlan:
    """Decide what to send: changed customers whose backoff has passed, minus protected edits."""
    items: list[Any] = []
    owners: list[Desired] = []
    hashes: dict[int, str] = {}
    changes: list[FieldChange] = []
    for want in desired:
        report.customers += 1
        prev = state.get(want.customer_id)
        digest = values_hash(want.values, want.targets)
        if prev is not None and prev.values_hash == digest and prev.last_error is None:
            report.unchanged += 1
            continue
        if (
            prev is not None
            and prev.last_error is not None
            and not retry_failed
            and prev.next_attempt_at is not None
            and prev.next_attempt_at > now
        ):
            report.deferred += 1
            continue
        previous = dict(prev.values) if prev is not None and prev.values and prev.values_hash else None
        values = dict(want.values)
        edited = edited_fields(previous, want.remote)
        if edited:  # reported under every policy, so people's edits never vanish silently
            report.edits.append({"customer": want.label, "fields": edited, "policy": edit_policy})
        if edited and edit_policy != "overwrite":
            if edit_policy == "skip":
                report.skipped_edits += 1
                continue
            for key in edited:  # flag: write the rest, leave the edited fields alone
                values.pop(key, None)
        old_values = want.remote if want.remote is not None else (previous or {})
        for key, new in values.items():
            old = old_values.get(key)
            if key in VOLATILE_FIELDS or not _same(old, new):
                for target in want.targets:
                    changes.append(FieldChange(want.label, target, key, old, new))
        hashes[want.customer_id] = digest
        for target in want.targets:
            items.append(make_item(want.customer_id, target, values, previous))
            owners.append(want)
    report.planned = len(items)
    report.changes = changes
    return PushPlan(items, owners, hashes, changes)


def execute_push(
    store: Store,
    dest: DestinationLike,
    plan: PushPlan,
    state: Mapping[int, PushStateRow],
    report: DestinationReport,
    *,
    now: datetime,
    stop: threading.Event | None = None,
    use_bulk: bool = False,
    progress: Callable[[DestinationReport], None] | None = None,
) -> None:
    """Write the planned items batch by batch, recording results after each batch."""
    calls_before = dest.api_calls()
    started = time.monotonic()
    try:
        if use_bulk:
            batches = [plan.items]
            writer: Callable[[Sequence[Any]], list[Any]] = dest.write_bulk  # type: ignore[attr-defined]
        else:
            batches = dest.plan(plan.items)
            writer = dest.write
        offset = 0
        for batch in batches:
            results = writer(batch)
            owners = plan.owners[offset : offset + len(batch)]
            offset += len(batch)
            _record(store, dest.name, owners, results, plan.hashes, state, report, now)
            report.batches += 1
            if progress is not None:
                progress(report)
            if stop is not None and stop.is_set():
                report.error = "stopped before the end of the push"
                break
    except (TransientError, BudgetExhaustedError, RecordError, ConfigError, LtvsyncError) as exc:
        report.error = f"{type(exc).__name__}: {exc}"
        log.error("push to %s stopped: %s", dest.name, report.error)
    finally:
        report.api_calls += dest.api_calls() - calls_before
        report.seconds += time.monotonic() - started


def _record(
    store: Store,
    destination: str,
    owners: Sequence[Desired],
    results: Sequence[Any],
    hashes: Mapping[int, str],
    state: Mapping[int, PushStateRow],
    report: DestinationReport,
    now: datetime,
) -> None:
    """One push_state row per customer of the batch: pushed only if every target succeeded."""
    outcome: dict[int, tuple[Desired, list[Any]]] = {}
    for want, result in zip(owners, results, strict=True):
        outcome.setdefault(want.customer_id, (want, []))[1].append(result)
    rows: list[PushStateRow] = []
    for customer_id, (want, res) in outcome.items():
        prev = state.get(customer_id)
        failures = [r for r in res if not r.ok]
        if not failures:
            report.ok += 1
            rows.append(PushStateRow(destination, customer_id, hashes[customer_id], dict(want.values), now))
            continue
        report.failed += 1
        first = failures[0]
        message = f"{first.status_code}: {first.message}"
        attempts = (prev.attempts if prev is not None else 0) + 1
        report.rejections.append(
            {
                "customer": want.label,
                "status_code": first.status_code,
                "message": first.message,
                "attempts": attempts,
            }
        )
        rows.append(
            PushStateRow(
                destination,
                customer_id,
                prev.values_hash if prev is not None else None,
                prev.values if prev is not None else None,
                prev.pushed_at if prev is not None else None,
                last_error=message[:1000],
                attempts=attempts,
                next_attempt_at=now + backoff(attempts),
            )
        )
    with store.transaction() as conn:
        store.set_push_state(conn, rows)


# -- desired values ---------------------------------------------------------------------------------


def _tags(value: str | None) -> str:
    return TAG_SEPARATOR.join(sorted(t for t in (value or "").split(TAG_SEPARATOR) if t))


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)


def metrics_rows(conn: Connection) -> list[dict[str, Any]]:
    """Every counted customer's metrics with email and name (typed columns: aware datetimes)."""
    from ltvsync.core import models as m

    c, cm = m.TABLES["customer"], m.TABLES["customer_metrics"]
    query = (
        select(
            c.c.id.label("customer_id"),
            c.c.email,
            c.c.name,
            cm.c.orders,
            cm.c.ltv_simple,
            cm.c.ltv_predicted,
            cm.c.p_alive,
            cm.c.tags,
            cm.c.as_of,
        )
        .select_from(cm.join(c, c.c.id == cm.c.customer_id))
        .where(c.c.merged_into.is_(None))
        .order_by(c.c.id)
    )
    return [dict(r._mapping) for r in conn.execute(query)]


def source_targets(conn: Connection, source: str) -> dict[int, list[tuple[str, Mapping[str, Any]]]]:
    """Customer → [(source_id, attributes)] of live identities in ``source`` (e.g. Salesforce contacts)."""
    from ltvsync.core import models as m  # local: only this helper needs the table objects

    t = m.TABLES["identity"]
    out: dict[int, list[tuple[str, Mapping[str, Any]]]] = {}
    query = t.select().where(t.c.source == source, t.c.customer_id.is_not(None), t.c.deleted.is_(False))
    for row in conn.execute(query.order_by(t.c.source_id)):
        out.setdefault(int(row.customer_id), []).append((str(row.source_id), row.attributes or {}))
    return out


def salesforce_desired(
    conn: Connection, push_fields: Mapping[str, str], *, source: str = "salesforce"
) -> list[Desired]:
    """Values for every customer that has Salesforce contacts; read-back values from the pull."""
    targets = source_targets(conn, source)
    desired: list[Desired] = []
    for row in metrics_rows(conn):
        contacts = targets.get(int(row["customer_id"]))
        if not contacts:
            continue
        values = _sf_values(row, push_fields)
        # Read-back: the pull stores the contact's current mapped field values as attributes.
        remote_raw = contacts[0][1]
        remote = {k: remote_raw.get(api) for k, api in push_fields.items() if api in remote_raw}
        desired.append(
            Desired(
                int(row["customer_id"]), tuple(c[0] for c in contacts), values, row["email"] or "", remote
            )
        )
    return desired


def _sf_values(row: Mapping[str, Any], push_fields: Mapping[str, str]) -> dict[str, FieldValue]:
    predicted = row["ltv_predicted"]
    all_values: dict[str, FieldValue] = {
        "ltv": _round(row["ltv_simple"], 2),
        "ltv_predicted": _round(predicted, 2),
        "p_alive": _round(row["p_alive"], 4),
        "tags": _tags(row["tags"]),
        "updated": row["as_of"].isoformat() if row["as_of"] is not None else None,
    }
    return {k: v for k, v in all_values.items() if k in push_fields}


def airtable_desired(conn: Connection, fields: Mapping[str, str]) -> list[Desired]:
    """Values for every customer with an email (the Airtable key)."""
    desired: list[Desired] = []
    for row in metrics_rows(conn):
        email = row["email"]
        if not email:
            continue
        all_values: dict[str, FieldValue] = {
            "name": row["name"],
            "ltv": _round(row["ltv_simple"], 2),
            "ltv_predicted": _round(row["ltv_predicted"], 2),
            "p_alive": _round(row["p_alive"], 4),
            # The Airtable connector splits tags on commas into a multipleSelects list.
            "tags": _tags(row["tags"]).replace(TAG_SEPARATOR, ","),
            "orders": int(row["orders"] or 0),
        }
        values = {k: v for k, v in all_values.items() if k in fields and k != "email"}
        desired.append(Desired(int(row["customer_id"]), (email,), values, email))
    return desired
