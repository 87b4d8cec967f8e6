"""SOQL building for the Salesforce connector: field validation, filters and the keyset cursor.

Every query is built with ``simple_salesforce.format_soql``; field and object names are inserted
only after they were found in the object's describe result, and configured filters are parsed into
(field, operator, value) clauses rather than pasted into the query.  Filters are also evaluated
client-side, so a row that stops matching (an opportunity no longer won) becomes a deletion instead
of lingering in the store.

Vendor docs relied on: SOQL and SOSL Reference, "Comparison Operators", "Date Formats and Date
Literals" (datetime literals are unquoted ISO-8601), "Quoted String Escape Sequences"; REST API
guide "Query" (``ORDER BY`` + ``nextRecordsUrl`` paging, 2,000 rows per page).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from simple_salesforce.format import format_soql

from ltvsync.core.errors import ConfigError

CURSOR_SEPARATOR = "|"
_IDENT_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_CLAUSE_RE = re.compile(
    r"""\s*(?P<field>[A-Za-z][A-Za-z0-9_]*)\s*(?P<op>!=|<>|<=|>=|=|<|>)\s*
        (?P<value>true|false|null|-?\d+(?:\.\d+)?|'(?:[^'\\]|\\.)*')\s*$""",
    re.IGNORECASE | re.VERBOSE,
)
_AND_RE = re.compile(r"\s+AND\s+", re.IGNORECASE)
FilterValue = str | bool | Decimal | None


@dataclass(frozen=True)
class Clause:
    """One ``Field op value`` condition of a configured filter."""

    field: str
    op: str
    value: FilterValue

    def matches(self, row: Mapping[str, Any]) -> bool:
        """Evaluate on a query row the way Salesforce would (null compares only with = / !=)."""
        actual = row.get(self.field)
        if self.op in ("=", "!="):
            equal = _normalise(actual) == _normalise(self.value)
            return equal if self.op == "=" else not equal
        left, right = _normalise(actual), _normalise(self.value)
        if left is None or right is None or type(left) is not type(right):
            return False
        if self.op == "<":
            return bool(left < right)
        if self.op == "<=":
            return bool(left <= right)
        if self.op == ">":
            return bool(left > right)
        return bool(left >= right)


def _normalise(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float | Decimal):
        return Decimal(str(value))
    return str(value)


def parse_filter(text: str) -> tuple[Clause, ...]:
    """``"IsWon = true AND StageName != 'Lost'"`` → clauses; anything else is a ConfigError."""
    if not text.strip():
        return ()
    clauses = []
    for part in _AND_RE.split(text.strip()):
        match = _CLAUSE_RE.match(part)
        if match is None:
            raise ConfigError(
                f"Salesforce filter {text!r}: cannot read {part.strip()!r}; write conditions as "
                "Field = value joined by AND (values: true, false, null, numbers, 'quoted text')"
            )
        op = "!=" if match["op"] == "<>" else match["op"]
        clauses.append(Clause(match["field"], op, _parse_literal(match["value"])))
    return tuple(clauses)


def _parse_literal(token: str) -> FilterValue:
    lowered = token.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "null":
        return None
    if token.startswith("'"):
        return re.sub(r"\\(.)", r"\1", token[1:-1])
    try:
        return Decimal(token)
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only numbers here
        raise ConfigError(f"Salesforce filter value {token!r} is not a number") from exc


def require_fields(object_name: str, described: Mapping[str, Any], fields: Sequence[str]) -> None:
    """Raise ConfigError naming the object and every configured field it lacks."""
    missing = [f for f in fields if f not in described]
    if missing:
        raise ConfigError(
            f"Salesforce object {object_name} has no field(s) {', '.join(missing)}; "
            "check the field names in the salesforce settings and the user's field-level access"
        )


def select_soql(
    object_name: str, fields: Sequence[str], since: datetime | None, *, ordered: bool = True
) -> str:
    """``SELECT fields FROM object [WHERE SystemModstamp >= since] ORDER BY SystemModstamp, Id``.

    Names must already be validated against describe; they are re-checked as identifiers so
    nothing but a plain API name can reach the query.  The lower bound is inclusive: rows sharing
    the boundary timestamp are re-read and dropped client-side by ``Keyset.is_after``.
    """
    for name in (object_name, *fields):
        if not _IDENT_RE.match(name):
            raise ConfigError(f"Salesforce name {name!r} is not a valid API name")
    columns = ", ".join(fields)
    if since is None:
        # Bulk 2.0 query jobs are read unsorted anyway; ORDER BY there only slows the job down.
        order = " ORDER BY SystemModstamp, Id" if ordered else ""
        return format_soql("SELECT {:literal} FROM {:literal}{:literal}", columns, object_name, order)
    return format_soql(
        "SELECT {:literal} FROM {:literal} WHERE SystemModstamp >= {} ORDER BY SystemModstamp, Id",
        columns,
        object_name,
        since,
    )


def count_soql(object_name: str) -> str:
    """``SELECT COUNT() FROM object``: decides between REST paging and a Bulk 2.0 backfill."""
    if not _IDENT_RE.match(object_name):
        raise ConfigError(f"Salesforce name {object_name!r} is not a valid API name")
    return format_soql("SELECT COUNT() FROM {:literal}", object_name)


def parse_sf_datetime(value: Any) -> datetime | None:
    """``2024-05-20T20:49:32.000+0000`` → aware UTC datetime; None if missing or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    return parsed.astimezone(UTC)


@dataclass(frozen=True, order=True)
class Keyset:
    """Position in a stream sorted by (SystemModstamp, Id); serialised as ``"<ISO>|<Id>"``."""

    modstamp: datetime
    record_id: str

    def encode(self) -> str:
        return f"{self.modstamp.isoformat()}{CURSOR_SEPARATOR}{self.record_id}"

    @classmethod
    def decode(cls, cursor: str | None) -> Keyset | None:
        """Parse a stored cursor; a malformed cursor is a ConfigError, never silently a full reload."""
        if not cursor:
            return None
        stamp, sep, record_id = cursor.partition(CURSOR_SEPARATOR)
        modstamp = parse_sf_datetime(stamp)
        if not sep or modstamp is None:
            raise ConfigError(f"Salesforce cursor {cursor!r} is not '<SystemModstamp ISO>|<Id>'")
        return cls(modstamp, record_id)
