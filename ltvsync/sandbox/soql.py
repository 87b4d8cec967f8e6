"""The SOQL subset the Salesforce emulator understands: parse a query, then run it over record dicts.

Supported (enough for the connectors and ``format_soql`` output; see Salesforce "SOQL and SOSL
Reference", SELECT / WHERE / ORDER BY / LIMIT / COUNT()):

    SELECT f1, f2 FROM Obj [WHERE cond] [ORDER BY f [ASC|DESC] [NULLS FIRST|LAST], ...] [LIMIT n]
    SELECT COUNT() FROM Obj [WHERE cond]

``cond`` combines comparisons (``= != <> < <= > >=``, ``IN (...)``, ``NOT IN (...)``, ``LIKE``) with
AND / OR / NOT and parentheses.  Literals: unquoted datetimes (``2024-05-01T00:00:00Z``,
``...000+0000``), dates, quoted strings with backslash escapes, numbers, ``true``/``false``/``null``.
Field names are case-insensitive, as in Salesforce; results use the canonical spelling.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any


class SoqlError(Exception):
    """A query the emulator refuses; ``code`` is the Salesforce ``errorCode``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


_TOKEN = re.compile(
    r"""\s*(?:
      (?P<dt>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2}))
    | (?P<date>\d{4}-\d{2}-\d{2})
    | (?P<num>-?\d+(?:\.\d+)?)
    | (?P<str>'(?:\\.|[^'\\])*')
    | (?P<op>!=|<>|<=|>=|=|<|>)
    | (?P<punct>[(),])
    | (?P<word>[A-Za-z_][A-Za-z0-9_.]*)
    )""",
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", '"': '"', "'": "'", "\\": "\\"}


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    value: Any = None


@dataclass(frozen=True)
class Compare:
    field: str
    op: str
    value: Any  # a literal, or a tuple of literals for IN / NOT IN


@dataclass(frozen=True)
class BoolOp:
    op: str  # "AND" | "OR" | "NOT"
    parts: tuple[Condition, ...]


Condition = Compare | BoolOp


@dataclass(frozen=True)
class Query:
    obj: str
    fields: tuple[str, ...]
    where: Condition | None
    order_by: tuple[tuple[str, bool, bool], ...]  # (field, descending, nulls_last)
    limit: int | None
    count_only: bool


def parse_datetime(text: str) -> datetime:
    """Parse a SOQL/REST datetime (``Z``, ``+0000`` or ``+00:00`` offsets) to aware UTC."""
    cleaned = text.replace("Z", "+00:00")
    if re.search(r"[+-]\d{4}$", cleaned):
        cleaned = f"{cleaned[:-2]}:{cleaned[-2:]}"
    return datetime.fromisoformat(cleaned).astimezone(UTC)


def _unquote(text: str) -> str:
    body = text[1:-1]
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), body)


def tokenize(soql: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    text = soql.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise SoqlError(
                "MALFORMED_QUERY", f"unexpected token at position {pos}: {text[pos : pos + 20]!r}"
            )
        pos = match.end()
        kind = match.lastgroup or ""
        raw = match.group(kind)
        if kind == "dt":
            tokens.append(Token("lit", raw, parse_datetime(raw)))
        elif kind == "date":
            tokens.append(Token("lit", raw, date.fromisoformat(raw)))
        elif kind == "num":
            tokens.append(Token("lit", raw, float(raw) if "." in raw else int(raw)))
        elif kind == "str":
            tokens.append(Token("lit", raw, _unquote(raw)))
        elif kind == "word" and raw.lower() in ("true", "false"):
            tokens.append(Token("lit", raw, raw.lower() == "true"))
        elif kind == "word" and raw.lower() == "null":
            tokens.append(Token("lit", raw, None))
        else:
            tokens.append(Token(kind, raw))
    return tokens


class _Parser:
    def __init__(self, tokens: list[Token], resolve: Callable[[str, str], str]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.resolve = resolve  # (obj, field) -> canonical field name, raises SoqlError
        self.obj = ""

    def peek(self, offset: int = 0) -> Token | None:
        index = self.pos + offset
        return self.tokens[index] if index < len(self.tokens) else None

    def keyword(self, *words: str) -> bool:
        tok = self.peek()
        return tok is not None and tok.kind == "word" and tok.text.upper() in words

    def expect_keyword(self, word: str) -> None:
        if not self.keyword(word):
            raise SoqlError("MALFORMED_QUERY", f"expecting {word}")
        self.pos += 1

    def take(self, kind: str) -> Token:
        tok = self.peek()
        if tok is None or tok.kind != kind:
            raise SoqlError("MALFORMED_QUERY", f"unexpected {tok.text if tok else 'end of query'!r}")
        self.pos += 1
        return tok

    def query(self) -> Query:
        self.expect_keyword("SELECT")
        count_only = False
        raw_fields: list[str] = []
        if self.keyword("COUNT") and (nxt := self.peek(1)) is not None and nxt.text == "(":
            self.pos += 2
            self.take_punct(")")
            count_only = True
        else:
            raw_fields.append(self.take("word").text)
            while self.punct(","):
                raw_fields.append(self.take("word").text)
        self.expect_keyword("FROM")
        self.obj = self.resolve(self.take("word").text, "")
        fields = tuple(dict.fromkeys(self.resolve(self.obj, f) for f in raw_fields))
        where = None
        if self.keyword("WHERE"):
            self.pos += 1
            where = self.disjunction()
        order: list[tuple[str, bool, bool]] = []
        if self.keyword("ORDER"):
            self.pos += 1
            self.expect_keyword("BY")
            order.append(self.order_item())
            while self.punct(","):
                order.append(self.order_item())
        limit = None
        if self.keyword("LIMIT"):
            self.pos += 1
            tok = self.take("lit")
            if not isinstance(tok.value, int) or isinstance(tok.value, bool) or tok.value < 0:
                raise SoqlError("MALFORMED_QUERY", "LIMIT must be a non-negative integer")
            limit = tok.value
        if self.peek() is not None:
            raise SoqlError("MALFORMED_QUERY", f"unexpected token {self.peek().text!r}")  # type: ignore[union-attr]
        return Query(self.obj, fields, where, tuple(order), limit, count_only)

    def punct(self, char: str) -> bool:
        tok = self.peek()
        if tok is not None and tok.kind == "punct" and tok.text == char:
            self.pos += 1
            return True
        return False

    def take_punct(self, char: str) -> None:
        if not self.punct(char):
            raise SoqlError("MALFORMED_QUERY", f"expecting {char!r}")

    def order_item(self) -> tuple[str, bool, bool]:
        field = self.resolve(self.obj, self.take("word").text)
        descending = False
        if self.keyword("ASC", "DESC"):
            descending = self.take("word").text.upper() == "DESC"
        nulls_last = descending  # Salesforce default: NULLS FIRST ascending, NULLS LAST descending
        if self.keyword("NULLS"):
            self.pos += 1
            if not self.keyword("FIRST", "LAST"):
                raise SoqlError("MALFORMED_QUERY", "expecting FIRST or LAST after NULLS")
            nulls_last = self.take("word").text.upper() == "LAST"
        return field, descending, nulls_last

    def disjunction(self) -> Condition:
        parts = [self.conjunction()]
        while self.keyword("OR"):
            self.pos += 1
            parts.append(self.conjunction())
        return parts[0] if len(parts) == 1 else BoolOp("OR", tuple(parts))

    def conjunction(self) -> Condition:
        parts = [self.unary()]
        while self.keyword("AND"):
            self.pos += 1
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else BoolOp("AND", tuple(parts))

    def unary(self) -> Condition:
        if self.keyword("NOT"):
            self.pos += 1
            return BoolOp("NOT", (self.unary(),))
        if self.punct("("):
            inner = self.disjunction()
            self.take_punct(")")
            return inner
        return self.comparison()

    def comparison(self) -> Condition:
        field = self.resolve(self.obj, self.take("word").text)
        if self.keyword("IN", "NOT"):
            negate = self.take("word").text.upper() == "NOT"
            if negate:
                self.expect_keyword("IN")
            self.take_punct("(")
            values = [self.take("lit").value]
            while self.punct(","):
                values.append(self.take("lit").value)
            self.take_punct(")")
            return Compare(field, "NOT IN" if negate else "IN", tuple(values))
        if self.keyword("LIKE"):
            self.pos += 1
            return Compare(field, "LIKE", self.take("lit").value)
        op = self.take("op").text
        return Compare(field, "!=" if op == "<>" else op, self.take("lit").value)


def parse(soql: str, resolve: Callable[[str, str], str]) -> Query:
    """Parse ``soql``; ``resolve(obj, field)`` canonicalises names (``field == ""`` for the object)."""
    return _Parser(tokenize(soql), resolve).query()


def coerce(value: Any, field_type: str) -> Any:
    """Turn a stored wire value into something comparable for ``field_type`` (None stays None)."""
    if value is None:
        return None
    if field_type == "datetime":
        return parse_datetime(value) if isinstance(value, str) else value
    if field_type == "date":
        return date.fromisoformat(value[:10]) if isinstance(value, str) else value
    if field_type in ("currency", "double", "percent", "int"):
        return float(value) if not isinstance(value, bool) else value
    return value


def _literal(value: Any, field_type: str) -> Any:
    if value is None:
        return None
    if field_type == "date" and isinstance(value, datetime):
        return value.date()
    if field_type == "datetime" and isinstance(value, date) and not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def matches(cond: Condition | None, record: Mapping[str, Any], types: Mapping[str, str]) -> bool:
    """Evaluate ``cond`` for one record; ``types`` maps canonical field name → describe type."""
    if cond is None:
        return True
    if isinstance(cond, BoolOp):
        if cond.op == "AND":
            return all(matches(p, record, types) for p in cond.parts)
        if cond.op == "OR":
            return any(matches(p, record, types) for p in cond.parts)
        return not matches(cond.parts[0], record, types)
    ftype = types.get(cond.field, "string")
    actual = coerce(record.get(cond.field), ftype)
    if cond.op in ("IN", "NOT IN"):
        found = actual in {_literal(v, ftype) for v in cond.value}
        return found if cond.op == "IN" else not found
    if cond.op == "LIKE":
        if actual is None or not isinstance(cond.value, str):
            return False
        pattern = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in cond.value)
        return re.fullmatch(pattern, str(actual), re.IGNORECASE | re.DOTALL) is not None
    expected = _literal(cond.value, ftype)
    if cond.op == "=":
        return bool(actual == expected)
    if cond.op == "!=":
        return bool(actual != expected)
    if actual is None or expected is None:
        return False  # SOQL: ordering comparisons with null are never true
    try:
        return _COMPARE[cond.op](actual, expected)
    except TypeError as exc:
        raise SoqlError(
            "INVALID_QUERY_FILTER_OPERATOR", f"cannot compare {cond.field} with {cond.value!r}"
        ) from exc


def run(query: Query, records: list[dict[str, Any]], types: Mapping[str, str]) -> list[dict[str, Any]]:
    """Filter, sort and limit ``records`` (full dicts); projection is left to the caller."""
    rows = [r for r in records if matches(query.where, r, types)]
    for field, descending, nulls_last in reversed(query.order_by):
        ftype = types.get(field, "string")
        present = [r for r in rows if r.get(field) is not None]
        missing = [r for r in rows if r.get(field) is None]
        present.sort(key=lambda r, f=field, t=ftype: coerce(r.get(f), t), reverse=descending)  # type: ignore[misc]
        rows = present + missing if nulls_last else missing + present
    if query.limit is not None:
        rows = rows[: query.limit]
    return rows
