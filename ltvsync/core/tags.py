"""Behavioural tags: evaluate the rule set over every customer at once, keep membership and its
enter/leave history, and watch churn.

Evaluation is set-based: ``tag_features.read_features`` reads each feature family in one SQL
pass into numpy arrays, and ``tag_masks`` turns every condition into a boolean mask (no loop per
customer per rule).  Only customers whose membership changed get ``tag_history`` rows, each with
the values that decided it and the model version in force.  A missing value (no model, no data)
never satisfies a condition, whatever the operator.

No vendor documentation is involved; rule semantics are in ``ltvsync.core.tag_rules``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import Connection, delete, select

from ltvsync.config.settings import Settings
from ltvsync.core.models_tags import TAG_TABLES
from ltvsync.core.store import Store
from ltvsync.core.tag_features import Features, FloatArray, bind_time, dense_unique, fetch_rows, read_features
from ltvsync.core.tag_rules import Condition, Rule, rules_from_settings

if TYPE_CHECKING:  # the pipeline imports the hooks through ltvsync.assemble, not the reverse
    from ltvsync.core.pipeline import SyncReport

BoolArray = NDArray[np.bool_]
SECONDS_PER_DAY = 86_400.0
TAG_SEPARATOR = ";"
EARLY_CHURN_DAYS = 30.0
CHURN_REPORT_COHORTS = 6
WEEK_AGO_DAYS = 7
# A "week ago" snapshot older than this is too stale to compare with.
WEEK_AGO_MAX_DAYS = 14
AT_RISK_TAG = "at-risk"
_CHUNK = 900  # SQLite's parameter limit, with room
_DRIVER_BATCH = 50_000
# Up to this many tags, tag sets are bit patterns in one int64 range small enough to bincount.
DENSE_TAGS = 20
_COMPARE: dict[str, Any] = {
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
    "==": np.equal,
    "!=": np.not_equal,
}


class Evaluator:
    """Resolves feature keys (including derived metrics) and percentile thresholds once per run."""

    def __init__(self, features: Features, as_of: datetime) -> None:
        self.features = features
        self.as_of_day = as_of.astimezone(UTC).timestamp() / SECONDS_PER_DAY
        self._cache: dict[str, FloatArray] = {}
        self._thresholds: dict[tuple[str, float], float] = {}

    def metric(self, key: str) -> FloatArray:
        if key not in self._cache:
            self._cache[key] = self._derive(key)
        return self._cache[key]

    def _derive(self, key: str) -> FloatArray:
        f = self.features
        if key in f.values:
            return f.values[key]
        metric, _, window = key.partition("@")
        if metric == "logins_trend":
            last = self.metric(f"logins_window@{window}")
            prev = self.metric(f"logins_prev_window@{window}")
            # No logins before: no trend to speak of (NaN never matches).
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.where(prev > 0, last / np.where(prev > 0, prev, 1.0), np.nan)
        if metric == "days_since_activity":
            since = self.metric("days_since_start")
            return np.where(np.isnan(f.last_activity_day), since, self.as_of_day - f.last_activity_day)
        if metric == "ltv_percentile":
            ltv = self.metric("ltv_predicted")
            ltv = np.where(np.isnan(ltv), self.metric("ltv_simple"), ltv)
            return percentile_rank(ltv)
        raise KeyError(f"feature {key!r} was not read; is it in a rule?")

    def threshold(self, cond: Condition) -> float:
        if cond.percentile is None:
            assert cond.value is not None
            return float(cond.value)
        key = (cond.key, cond.percentile)
        if key not in self._thresholds:
            values = self.metric(cond.key)
            finite = values[np.isfinite(values)]
            self._thresholds[key] = float(np.percentile(finite, cond.percentile)) if len(finite) else math.nan
        return self._thresholds[key]

    def condition(self, cond: Condition) -> BoolArray:
        x = self.metric(cond.key)
        t = self.threshold(cond)
        if math.isnan(t):
            return np.zeros(len(x), dtype=bool)
        with np.errstate(invalid="ignore"):
            mask: BoolArray = _COMPARE[cond.op](x, t)
        return mask & ~np.isnan(x)

    def rule(self, rule: Rule) -> BoolArray:
        n = len(self.features)
        mask = np.ones(n, dtype=bool)
        for node in rule.all:
            mask &= self.node(node)
        if rule.any:
            some = np.zeros(n, dtype=bool)
            for node in rule.any:
                some |= self.node(node)
            mask &= some
        return mask

    def node(self, node: Condition | Rule) -> BoolArray:
        return self.condition(node) if isinstance(node, Condition) else self.rule(node)

    def reasons(self, rule: Rule, rows: NDArray[np.intp]) -> list[str]:
        """For each row index, JSON of the values the rule read and the thresholds it used."""
        conds = rule.conditions()
        keys = sorted({c.key for c in conds})
        limits = _dumps({c.describe(): _finite(self.threshold(c)) for c in conds})
        table = np.column_stack([self.metric(k)[rows] for k in keys]) if keys else np.zeros((len(rows), 0))
        head = '{"thresholds":' + limits + ',"values":{'
        names = [json.dumps(k) + ":" for k in keys]
        # Formatted by hand (floats as JSON numbers, NaN as null): json.dumps per row is the
        # slowest part of a first run, when every customer enters its tags.
        return [
            head + ",".join(n + _json_number(v) for n, v in zip(names, values, strict=True)) + "}}"
            for values in table.tolist()
        ]


def _json_number(value: float) -> str:
    return repr(round(value, 6)) if math.isfinite(value) else "null"


def _dumps(value: Any) -> str:
    # Sorted keys and compact separators: the same text JsonText writes.
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _finite(value: float) -> float | None:
    return round(float(value), 6) if math.isfinite(value) else None


def percentile_rank(values: FloatArray) -> FloatArray:
    """0-100: the share of known values at or below each value (NaN stays NaN)."""
    out = np.full(len(values), np.nan)
    ok = np.isfinite(values)
    known = np.sort(values[ok])
    if len(known):
        out[ok] = np.searchsorted(known, values[ok], side="right") / len(known) * 100.0
    return out


def tag_masks(features: Features, rules: Sequence[Rule], as_of: datetime) -> dict[str, BoolArray]:
    """Tag name -> who holds it (aligned with ``features.customer_id``).  Pure: no I/O, no clock."""
    ev = Evaluator(features, as_of)
    return {rule.name: ev.rule(rule) for rule in rules}


@dataclass
class TagChanges:
    entered: dict[str, NDArray[np.int64]] = field(default_factory=dict)
    left: dict[str, NDArray[np.int64]] = field(default_factory=dict)


def diff_membership(
    ids: NDArray[np.int64], masks: Mapping[str, BoolArray], current: Mapping[str, NDArray[np.int64]]
) -> TagChanges:
    """Who enters and leaves each tag, given the stored membership (customer ids per tag).

    Stored members no longer in the population (deleted, merged) leave too; tags no rule defines
    any more are emptied.
    """
    changes = TagChanges()
    for tag in sorted(set(masks) | set(current)):
        now = ids[masks[tag]] if tag in masks else np.zeros(0, dtype=np.int64)
        before = current.get(tag, np.zeros(0, dtype=np.int64))
        changes.entered[tag] = np.setdiff1d(now, before, assume_unique=True)
        changes.left[tag] = np.setdiff1d(before, now, assume_unique=True)
    return changes


def tags_hook(
    store: Store, conn: Connection, settings: Settings, as_of: datetime, report: SyncReport
) -> None:
    """Compute tags, write membership changes and history, and fill ``report.tags``."""
    rules = rules_from_settings(settings.tags)
    features = read_features(conn, store.dialect, rules, as_of)
    ev = Evaluator(features, as_of)
    masks = {rule.name: ev.rule(rule) for rule in rules}
    current = _membership(conn)
    changes = diff_membership(features.customer_id, masks, current)
    _write_changes(store, conn, features, ev, rules, changes, as_of)
    _write_tag_strings(conn, features, masks)
    counts = {tag: int(mask.sum()) for tag, mask in masks.items()}
    _write_counts(store, conn, counts, as_of.astimezone(UTC).date())
    report.tags = {
        "counts": counts,
        "entered": {t: len(v) for t, v in changes.entered.items() if len(v)},
        "left": {t: len(v) for t, v in changes.left.items() if len(v)},
        "churn": churn_summary(conn, ev, counts.get(AT_RISK_TAG), as_of),
    }


def _membership(conn: Connection) -> dict[str, NDArray[np.int64]]:
    by_tag: dict[str, list[int]] = {}
    for cid, tag in fetch_rows(conn, "SELECT customer_id, tag FROM tag_membership", {}):
        by_tag.setdefault(tag, []).append(cid)
    # (customer_id, tag) is the primary key, so sorting is enough to make each array a set.
    return {tag: np.sort(np.asarray(ids, dtype=np.int64)) for tag, ids in by_tag.items()}


def _write_changes(
    store: Store,
    conn: Connection,
    features: Features,
    ev: Evaluator,
    rules: Sequence[Rule],
    changes: TagChanges,
    as_of: datetime,
) -> None:
    by_name = {rule.name: rule for rule in rules}
    ids = features.customer_id
    membership = TAG_TABLES["tag_membership"]
    at = bind_time(as_of, store.dialect)
    history: list[tuple[Any, ...]] = []
    for tag in sorted(set(changes.entered) | set(changes.left)):
        rule = by_name.get(tag)
        text = rule.describe() if rule is not None else "(rule removed)"
        for action, who in (("enter", changes.entered[tag]), ("leave", changes.left[tag])):
            if not len(who):
                continue
            pos = np.minimum(np.searchsorted(ids, who), max(len(ids) - 1, 0))
            known = (ids[pos] == who) if len(ids) else np.zeros(len(who), dtype=bool)
            reasons = ev.reasons(rule, pos) if rule is not None and len(ids) else [None] * len(who)
            for i, cid in enumerate(who.tolist()):
                values = reasons[i] if known[i] else _GONE
                version = features.model_version[pos[i]] if known[i] else None
                history.append((cid, tag, action, at, text, values, version))
        left = changes.left[tag].tolist()
        for i in range(0, len(left), _CHUNK):
            chunk = left[i : i + _CHUNK]
            conn.execute(
                delete(membership).where(membership.c.tag == tag, membership.c.customer_id.in_(chunk))
            )
        entered = [{"customer_id": cid, "tag": tag, "since": as_of} for cid in changes.entered[tag].tolist()]
        store.upsert_many(conn, membership, entered, key=("customer_id", "tag"))
    # Straight to the driver: SQLAlchemy's per-row parameter processing would dominate the run
    # when every customer enters its tags at once (first run); values are pre-serialised.
    _executemany(
        conn,
        'INSERT INTO tag_history (customer_id, tag, action, at, rule, "values", model_version) '
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        history,
    )


_GONE = json.dumps({"reason": "no longer a counted customer"})


def _executemany(conn: Connection, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
    """Run ``sql`` (``?`` placeholders) for every row through the DB-API driver."""
    if not rows:
        return
    if conn.dialect.paramstyle != "qmark":
        sql = sql.replace("?", "%s")
    for i in range(0, len(rows), _DRIVER_BATCH):
        conn.exec_driver_sql(sql, list(rows[i : i + _DRIVER_BATCH]))


def tag_strings(ids: NDArray[np.int64], masks: Mapping[str, BoolArray]) -> list[str | None]:
    """``customer_metrics.tags`` per customer: names sorted, ';'-separated, None for no tag."""
    return list(_tag_string_array(len(ids), masks))


def _tag_string_array(n: int, masks: Mapping[str, BoolArray]) -> NDArray[np.object_]:
    # Each customer's tag set as a bit pattern; only the few distinct patterns become strings.
    names = sorted(masks)
    codes = np.zeros(n, dtype=np.int64)
    if len(names) <= DENSE_TAGS:
        for bit, name in enumerate(names):
            codes |= masks[name].astype(np.int64) << bit
        patterns, inverse = dense_unique(codes)
    else:  # too many tags for a dense bit range: rank the (sorted) membership rows instead
        rows = np.column_stack([masks[name] for name in names])
        unique_rows, inverse = np.unique(rows, axis=0, return_inverse=True)
        patterns = np.array(
            [sum(1 << b for b in np.flatnonzero(r).tolist()) for r in unique_rows], dtype=object
        )
    texts = np.empty(len(patterns), dtype=object)
    for j, code in enumerate(patterns.tolist()):
        held = [name for bit, name in enumerate(names) if int(code) >> bit & 1]
        texts[j] = TAG_SEPARATOR.join(held) if held else None
    return texts[inverse] if n else np.empty(0, dtype=object)


def _write_tag_strings(conn: Connection, features: Features, masks: Mapping[str, BoolArray]) -> None:
    new = _tag_string_array(len(features), masks)
    old = np.array([t or None for t in features.stored_tags], dtype=object)
    differ = np.flatnonzero(new != old) if len(new) else np.zeros(0, dtype=np.int64)
    ids = features.customer_id
    changed = [(new[i], int(ids[i])) for i in differ.tolist()]
    _executemany(conn, "UPDATE customer_metrics SET tags = ? WHERE customer_id = ?", changed)


def _write_counts(store: Store, conn: Connection, counts: Mapping[str, int], day: date) -> None:
    rows = [{"day": day, "tag": tag, "customers": n} for tag, n in counts.items()]
    store.upsert_many(conn, TAG_TABLES["tag_count_snapshot"], rows, key=("day", "tag"))


def churn_summary(conn: Connection, ev: Evaluator, at_risk: int | None, as_of: datetime) -> dict[str, Any]:
    """At-risk count and its change since about a week ago, and early vanishing per start month."""
    day = as_of.astimezone(UTC).date()
    t = TAG_TABLES["tag_count_snapshot"]
    query = (
        select(t.c.day, t.c.customers)
        .where(
            t.c.tag == AT_RISK_TAG,
            t.c.day <= day - timedelta(days=WEEK_AGO_DAYS),
            t.c.day >= day - timedelta(days=WEEK_AGO_MAX_DAYS),
        )
        .order_by(t.c.day.desc())
        .limit(1)
    )
    before = conn.execute(query).first()
    summary: dict[str, Any] = {
        "at_risk": at_risk,
        "at_risk_week_ago": None if before is None else int(before.customers),
        "at_risk_change": None if before is None or at_risk is None else at_risk - int(before.customers),
        "week_ago_day": None if before is None else before.day.isoformat(),
    }
    summary["early_vanish"] = early_vanish(ev, CHURN_REPORT_COHORTS)
    return summary


def early_vanish(ev: Evaluator, last: int) -> dict[str, dict[str, float | int]]:
    """Per start month: customers at least 30 days old, and the share with no activity after day 30."""
    f = ev.features
    if not len(f):
        return {}
    since = ev.metric("days_since_start")
    start = ev.as_of_day - since
    eligible = since >= EARLY_CHURN_DAYS
    active_late = f.last_activity_day >= start + EARLY_CHURN_DAYS  # NaN (never active) -> False
    months = np.floor(start[eligible]).astype("datetime64[D]").astype("datetime64[M]")
    vanished = ~active_late[eligible]
    out: dict[str, dict[str, float | int]] = {}
    for month in np.unique(months)[-last:]:  # a few dozen distinct months
        in_month = months == month
        n = int(in_month.sum())
        k = int(vanished[in_month].sum())
        out[str(month)] = {"eligible": n, "vanished": k, "share": round(k / n, 4)}
    return out


def rule_by_name(rules: Iterable[Rule], name: str) -> Rule | None:
    return next((r for r in rules if r.name == name), None)


@dataclass(frozen=True)
class TagReason:
    """A tag a customer holds now, with the rule and values of the run that put them in it."""

    tag: str
    since: datetime
    rule: str
    values: Any


@dataclass(frozen=True)
class HistoryRow:
    at: datetime
    tag: str
    action: str
    rule: str
    values: Any
    model_version: str | None


def customer_tag_reasons(conn: Connection, customer_id: int) -> list[TagReason]:
    """Current tags of one customer, each with its latest 'enter' history row."""
    m, h = TAG_TABLES["tag_membership"], TAG_TABLES["tag_history"]
    held = conn.execute(
        select(m.c.tag, m.c.since).where(m.c.customer_id == customer_id).order_by(m.c.tag)
    ).all()
    out = []
    for tag, since in held:
        row = conn.execute(
            select(h.c.rule, h.c["values"])
            .where(h.c.customer_id == customer_id, h.c.tag == tag, h.c.action == "enter")
            .order_by(h.c.at.desc(), h.c.id.desc())
            .limit(1)
        ).first()
        out.append(TagReason(tag, since, row.rule if row else "", row.values if row else None))
    return out


def customer_history(conn: Connection, customer_id: int, limit: int) -> list[HistoryRow]:
    """The latest ``limit`` enter/leave rows of one customer, newest first."""
    h = TAG_TABLES["tag_history"]
    query = (
        select(h).where(h.c.customer_id == customer_id).order_by(h.c.at.desc(), h.c.id.desc()).limit(limit)
    )
    return [HistoryRow(r.at, r.tag, r.action, r.rule, r.values, r.model_version) for r in conn.execute(query)]
