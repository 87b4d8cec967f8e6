"""The pull stage: read every stream of every source and store each page with its cursor.

A page's records, its rejections and the cursor valid after it are written in ONE transaction,
so a crash at any point loses nothing and duplicates nothing: on restart the stream resumes at
the last committed cursor and re-reads (inclusive lower bound) rows the idempotent upserts absorb.
A stream whose pages carry no cursor (not sorted by it) checkpoints only with its last page.

Errors arrive already classified by the connector (``ltvsync.core.errors``): a spent API budget
ends the stream cleanly at its last committed cursor; a transient failure that outlived the retry
policy fails that stream only (the next cycle is the outer retry); configuration errors fail the
source.  Unexpected exceptions are bugs: recorded with their type, the other streams still run.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from sqlalchemy import Connection, select, update

from ltvsync.core import models as m
from ltvsync.core.currency import CurrencyTable
from ltvsync.core.errors import BudgetExhaustedError, ConfigError, TransientError
from ltvsync.core.records import (
    CustomerRecord,
    Deletion,
    EventRecord,
    Page,
    PurchaseRecord,
    Record,
    Rejection,
    TicketRecord,
)
from ltvsync.core.store import Store

log = logging.getLogger(__name__)

# Deletions name an entity; these are the tables that keep a ``deleted`` flag for it.
DELETABLE = {"customer": "identity", "purchase": "purchase", "ticket": "ticket"}


class StreamLike(Protocol):
    name: str
    is_sorted: bool


class SourceLike(Protocol):
    """What the pull stage needs of a source (``ltvsync.connectors.base.Source``)."""

    name: str

    def streams(self) -> Sequence[Any]: ...

    def read(self, stream: str, cursor: str | None) -> Iterable[Page]: ...


@dataclass
class StreamReport:
    source: str
    stream: str
    status: str = "ok"  # ok | budget | failed | stopped
    records: int = 0
    changed: int = 0
    pages: int = 0
    rejections: int = 0
    api_calls: int = 0
    seconds: float = 0.0
    cursor: str | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PageRows:
    """One page split into table rows, plus rejections discovered while converting it."""

    identities: list[dict[str, Any]] = field(default_factory=list)
    purchases: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    tickets: list[dict[str, Any]] = field(default_factory=list)
    deletions: list[Deletion] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)


Progress = Callable[[StreamReport], None]


def split_page(records: Sequence[Record], stream: str, fx: CurrencyTable) -> PageRows:
    """Turn records into rows per table; a purchase that cannot be valued is rejected, not dropped."""
    out = PageRows()
    events_append = out.events.append
    for rec in records:
        # Events first: they are most of every pull (one check per record, not four).
        if isinstance(rec, EventRecord):
            props = rec.properties
            events_append(
                {
                    "source": rec.source,
                    "source_id": rec.source_id,
                    "customer_source_id": rec.customer_source_id,
                    "kind": str(rec.kind),
                    "name": rec.name,
                    "occurred_at": rec.occurred_at,
                    # A fresh dict only when needed: rows are read, never mutated, by the store.
                    "properties": props if type(props) is dict else dict(props),
                    "referred": rec.referred,
                }
            )
        elif isinstance(rec, CustomerRecord):
            out.identities.append(
                {
                    "source": rec.source,
                    "source_id": rec.source_id,
                    "email": rec.email,
                    "name": rec.name,
                    "created_at": rec.created_at,
                    "updated_at": rec.updated_at,
                    "attributes": dict(rec.attributes),
                    "deleted": False,
                }
            )
        elif isinstance(rec, PurchaseRecord):
            reason = _purchase_problem(rec, fx)
            if reason is not None:
                out.rejections.append(Rejection(rec.source, stream, _record_json(rec), reason))
                continue
            out.purchases.append(
                {
                    "source": rec.source,
                    "source_id": rec.source_id,
                    "customer_source_id": rec.customer_source_id,
                    "customer_email": rec.customer_email,
                    "amount": rec.amount,
                    "currency": rec.currency.upper(),
                    "amount_base": fx.to_base(rec.amount, rec.currency),
                    "purchased_at": rec.purchased_at,
                    "updated_at": rec.updated_at,
                    "deleted": False,
                }
            )
        elif isinstance(rec, TicketRecord):
            out.tickets.append(
                {
                    "source": rec.source,
                    "source_id": rec.source_id,
                    "customer_source_id": rec.customer_source_id,
                    "status": rec.status,
                    "created_at": rec.created_at,
                    "updated_at": rec.updated_at,
                    "solved_at": rec.solved_at,
                    "first_reply_minutes": rec.first_reply_minutes,
                    "satisfaction": rec.satisfaction,
                    "deleted": False,
                }
            )
        else:
            out.deletions.append(rec)
    return out


def _purchase_problem(rec: PurchaseRecord, fx: CurrencyTable) -> str | None:
    if not rec.currency or not fx.knows(rec.currency):
        return f"unknown currency {rec.currency!r} (not in ltv.fx_rates)"
    if not rec.amount.is_finite() or rec.amount < 0:
        return f"invalid amount {rec.amount}"
    return None


def _record_json(rec: Record) -> str:
    def default(value: object) -> str:
        return str(value)

    return json.dumps(asdict(rec), default=default, sort_keys=True)


def write_page(
    store: Store,
    conn: Connection,
    connector: str,
    stream: str,
    page: Page,
    fx: CurrencyTable,
    run_id: int | None,
) -> tuple[int, int, int]:
    """Store one page and, if it carries one, its cursor.  Returns (records, changed, rejected)."""
    rows = split_page(page.records, stream, fx)
    changed = 0
    changed += store.upsert_many(conn, "identity", rows.identities, key=("source", "source_id"))
    changed += store.upsert_many(conn, "purchase", rows.purchases, key=("source", "source_id"))
    changed += store.upsert_many(conn, "event", rows.events, key=("source", "source_id"))
    changed += store.upsert_many(conn, "ticket", rows.tickets, key=("source", "source_id"))
    changed += apply_deletions(conn, rows.deletions)
    rejections = new_rejections(conn, [*page.rejections, *rows.rejections])
    store.quarantine(conn, rejections, run_id=run_id)
    if page.cursor is not None:
        store.set_cursor(conn, connector, stream, page.cursor)
    stored = len(page.records) - len(rows.rejections)
    return stored, changed, len(rejections)


def new_rejections(conn: Connection, rejections: Sequence[Rejection]) -> list[Rejection]:
    """Rejections not already in quarantine: re-reads (inclusive cursors, Mixpanel's lag window,
    a rerun after a crash) must not quarantine the same payload twice."""
    if not rejections:
        return []
    q = m.TABLES["quarantine"]
    unique = list({(r.source, r.stream, r.payload): r for r in rejections}.values())
    seen: set[tuple[str, str, str]] = set()
    for source, stream in {(r.source, r.stream) for r in unique}:
        payloads = [r.payload for r in unique if r.source == source and r.stream == stream]
        for start in range(0, len(payloads), 500):
            query = select(q.c.payload).where(
                q.c.source == source, q.c.stream == stream, q.c.payload.in_(payloads[start : start + 500])
            )
            seen.update((source, stream, p) for (p,) in conn.execute(query))
    return [r for r in unique if (r.source, r.stream, r.payload) not in seen]


def apply_deletions(conn: Connection, deletions: Sequence[Deletion]) -> int:
    """Flag deleted source rows; they stay for history but stop counting in metrics."""
    changed = 0
    for entity in DELETABLE:
        ids = [(d.source, d.source_id) for d in deletions if d.entity == entity]
        if not ids:
            continue
        table = m.TABLES[DELETABLE[entity]]
        for source in {s for s, _ in ids}:
            source_ids = [i for s, i in ids if s == source]
            for start in range(0, len(source_ids), 900):
                chunk = source_ids[start : start + 900]
                result = conn.execute(
                    update(table)
                    .where(table.c.source == source, table.c.source_id.in_(chunk), table.c.deleted.is_(False))
                    .values(deleted=True, row_version=table.c.row_version + 1)
                )
                changed += result.rowcount
    return changed


# Pages are buffered and written together once this many records (or seconds) accumulate: per-page
# commits made small pages (Mixpanel's one page per day) cost more in commits than in inserts.
FLUSH_RECORDS = 5000
FLUSH_SECONDS = 2.0


class _PageBuffer:
    """Complete pages waiting to be written; each flush is one transaction ending at the last
    page's cursor, so a crash between flushes loses only pages whose cursor was not committed."""

    def __init__(self, store: Store, source: str, stream: str, fx: CurrencyTable, run_id: int | None) -> None:
        self.store, self.source, self.stream, self.fx, self.run_id = store, source, stream, fx, run_id
        self.pages: list[Page] = []
        self.records = 0
        self.since = time.monotonic()

    def add(self, page: Page) -> bool:
        """Buffer ``page``; True when the buffer should be flushed."""
        self.pages.append(page)
        self.records += len(page.records)
        return self.records >= FLUSH_RECORDS or time.monotonic() - self.since >= FLUSH_SECONDS

    def flush(self, report: StreamReport) -> None:
        if not self.pages:
            return
        with self.store.transaction() as conn:
            totals = [
                write_page(self.store, conn, self.source, self.stream, page, self.fx, self.run_id)
                for page in self.pages
            ]
        for page, (stored, changed, rejected) in zip(self.pages, totals, strict=True):
            report.pages += 1
            report.records += stored
            report.changed += changed
            report.rejections += rejected
            report.api_calls += page.api_calls
            if page.cursor is not None:
                report.cursor = page.cursor
        self.pages, self.records, self.since = [], 0, time.monotonic()


def pull_stream(
    store: Store,
    source: SourceLike,
    stream: StreamLike,
    *,
    fx: CurrencyTable,
    run_id: int | None = None,
    full_refresh: bool = False,
    stop: threading.Event | None = None,
    progress: Progress | None = None,
    redact: Callable[[str], str] = lambda s: s,
) -> StreamReport:
    """Read one stream from its stored cursor to the end; pages and their cursor are committed
    together, a few thousand records per transaction."""
    report = StreamReport(source.name, stream.name)
    started = time.monotonic()
    with store.engine.connect() as conn:
        cursor = None if full_refresh else store.get_cursor(conn, source.name, stream.name)
    report.cursor = cursor
    buffer = _PageBuffer(store, source.name, stream.name, fx, run_id)
    try:
        try:
            for page in source.read(stream.name, cursor):
                if buffer.add(page):
                    buffer.flush(report)
                    if progress is not None:
                        report.seconds = time.monotonic() - started
                        progress(report)
                if stop is not None and stop.is_set():
                    report.status = "stopped"
                    break
        finally:
            # Pages read before an error are complete and carry valid cursors: keep them.
            buffer.flush(report)
    except BudgetExhaustedError as exc:
        report.status, report.error = "budget", redact(str(exc))
        log.warning(
            "%s.%s: API budget spent, resuming next cycle: %s", source.name, stream.name, report.error
        )
    except (TransientError, ConfigError) as exc:
        report.status, report.error = "failed", redact(f"{type(exc).__name__}: {exc}")
        log.error("%s.%s failed: %s", source.name, stream.name, report.error)
    except Exception as exc:  # a bug: keep the run going, report it loudly
        report.status, report.error = "failed", redact(f"bug: {type(exc).__name__}: {exc}")
        log.exception("%s.%s crashed", source.name, stream.name)
    report.seconds = time.monotonic() - started
    if progress is not None:
        progress(report)
    return report


def pull_source(
    store: Store,
    source: SourceLike,
    *,
    fx: CurrencyTable,
    run_id: int | None = None,
    only_streams: Sequence[str] | None = None,
    full_refresh: bool = False,
    stop: threading.Event | None = None,
    progress: Progress | None = None,
    redact: Callable[[str], str] = lambda s: s,
) -> list[StreamReport]:
    """Pull every (selected) stream of ``source``; a spent budget skips its remaining streams."""
    reports: list[StreamReport] = []
    for stream in source.streams():
        if only_streams and stream.name not in only_streams:
            continue
        if stop is not None and stop.is_set():
            break
        rep = pull_stream(
            store,
            source,
            stream,
            fx=fx,
            run_id=run_id,
            full_refresh=full_refresh,
            stop=stop,
            progress=progress,
            redact=redact,
        )
        reports.append(rep)
        if rep.status == "budget":
            break
    return reports
