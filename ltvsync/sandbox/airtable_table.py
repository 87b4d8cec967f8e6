"""One Airtable table in the emulator: schema, records, cell validation and the formula subset.

Wire shapes follow airtable.com/developers/web/api (list-records, create-records,
update-multiple-records, get-base-schema, field-model, errors) as pyairtable 3.5 reads them
(API-REFERENCE §3): records are ``{"id", "createdTime", "fields"}`` with empty cells omitted;
errors are ``{"error": {"type", "message"}}``.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any

NUMERIC_TYPES = frozenset({"number", "currency", "percent", "rating"})
TEXT_TYPES = frozenset(
    {"singleLineText", "multilineText", "email", "url", "phoneNumber", "richText", "date", "dateTime"}
)
SELECT_TYPES = frozenset({"singleSelect", "multipleSelects"})
# Default "Customers" columns: the names ltvsync's default airtable.fields mapping writes.
DEFAULT_CUSTOMERS_FIELDS = {
    "Email": "email",
    "Name": "singleLineText",
    "LTV": "currency",
    "LTV Predicted": "currency",
    "P(alive)": "percent",
    "Tags": "multipleSelects",
    "Orders": "number",
}
_ids = itertools.count(1)


def airtable_id(prefix: str) -> str:
    """An id shaped like Airtable's: 3-letter prefix + 14 characters."""
    return f"{prefix}SBX{next(_ids):011d}"


class AirtableError(Exception):
    """A request Airtable refuses as a whole (writes are all-or-nothing)."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"error": {"type": self.kind, "message": self.message}}


@dataclass
class Column:
    id: str
    name: str
    type: str
    choices: list[str] = field(default_factory=list)

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "name": self.name, "type": self.type}
        if self.type in SELECT_TYPES:
            out["options"] = {
                "choices": [
                    {"id": f"sel{i:014d}", "name": c, "color": "blueLight2"}
                    for i, c in enumerate(self.choices)
                ]
            }
        elif self.type == "currency":
            out["options"] = {"precision": 2, "symbol": "$"}
        elif self.type in ("number", "percent"):
            out["options"] = {"precision": 2}
        elif self.type == "checkbox":
            out["options"] = {"icon": "check", "color": "greenBright"}
        elif self.type == "date":
            out["options"] = {"dateFormat": {"format": "YYYY-MM-DD", "name": "iso"}}
        elif self.type == "dateTime":
            out["options"] = {
                "timeZone": "utc",
                "dateFormat": {"format": "YYYY-MM-DD", "name": "iso"},
                "timeFormat": {"format": "HH:mm", "name": "24hour"},
            }
        return out


def _infer(value: Any) -> str:
    if isinstance(value, bool):
        return "checkbox"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, list):
        return "multipleSelects"
    return "singleLineText"


class Table:
    """Records in insertion order plus column definitions (explicit, default or inferred)."""

    def __init__(self, name: str, records: dict[str, dict[str, Any]], columns: dict[str, str] | None) -> None:
        self.id = airtable_id("tbl")
        self.name = name
        self.records: dict[str, dict[str, Any]] = {
            rid: {**r, "fields": dict(r.get("fields", {}))} for rid, r in records.items()
        }
        if columns is None:
            columns = dict(DEFAULT_CUSTOMERS_FIELDS) if name == "Customers" else {}
            for record in self.records.values():
                for key, value in record["fields"].items():
                    columns.setdefault(key, _infer(value))
        self.columns = {n: Column(airtable_id("fld"), n, t) for n, t in columns.items()}
        for record in self.records.values():
            for key, value in record["fields"].items():
                column = self.columns.get(key)
                values = value if isinstance(value, list) else [value]
                if column is not None and column.type in SELECT_TYPES:
                    column.choices.extend(v for v in values if isinstance(v, str) and v not in column.choices)

    def schema(self) -> dict[str, Any]:
        columns = list(self.columns.values())
        return {
            "id": self.id,
            "name": self.name,
            "primaryFieldId": columns[0].id if columns else airtable_id("fld"),
            "fields": [c.schema() for c in columns],
            "views": [{"id": f"viw{self.id[3:]}", "name": "Grid view", "type": "grid"}],
        }

    # -- cells -----------------------------------------------------------------------------------
    def clean_fields(self, fields: Any, typecast: bool, new_choices: dict[str, list[str]]) -> dict[str, Any]:
        """Validate one record's ``fields``; returns cleaned values (None clears a cell)."""
        if not isinstance(fields, dict):
            raise AirtableError(422, "INVALID_RECORDS", "each record needs a 'fields' object")
        clean: dict[str, Any] = {}
        for name, value in fields.items():
            column = self.columns.get(name)
            if column is None:
                raise AirtableError(422, "UNKNOWN_FIELD_NAME", f'Unknown field name: "{name}"')
            clean[name] = self._cell(column, value, typecast, new_choices)
        return clean

    def _cell(self, column: Column, value: Any, typecast: bool, new_choices: dict[str, list[str]]) -> Any:
        if value is None or value == "" or value == []:
            return None
        bad = AirtableError(
            422, "INVALID_VALUE_FOR_COLUMN", f'Field "{column.name}" cannot accept the provided value'
        )
        if column.type in NUMERIC_TYPES:
            if typecast and isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    raise bad from None
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise bad
            return value
        if column.type == "checkbox":
            if not isinstance(value, bool):
                raise bad
            return value
        if column.type in SELECT_TYPES:
            return self._select(column, value, typecast, new_choices, bad)
        if typecast and isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise bad
        return value

    def _select(
        self,
        column: Column,
        value: Any,
        typecast: bool,
        new_choices: dict[str, list[str]],
        bad: AirtableError,
    ) -> Any:
        multiple = column.type == "multipleSelects"
        if multiple and typecast and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        options = value if multiple else [value]
        if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
            raise bad
        pending = new_choices.setdefault(column.name, [])
        for option in options:
            if option in column.choices or option in pending:
                continue
            if not typecast:
                raise AirtableError(
                    422,
                    "INVALID_MULTIPLE_CHOICE_OPTIONS",
                    f'Insufficient permissions to create new select option ""{option}""',
                )
            pending.append(option)
        return list(dict.fromkeys(options)) if multiple else value

    def commit_choices(self, new_choices: dict[str, list[str]]) -> None:
        for name, options in new_choices.items():
            self.columns[name].choices.extend(o for o in options if o not in self.columns[name].choices)

    # -- formula subset --------------------------------------------------------------------------
    def matcher(self, formula: str) -> Any:
        """Compile ``filterByFormula``: ``{F}='v'``, ``{F}=n``, ``RECORD_ID()='rec…'``; AND/OR/NOT nest."""
        try:
            pred, rest = _parse_formula(formula.strip(), self)
        except (ValueError, IndexError):
            pred, rest = None, "x"
        if pred is None or rest.strip():
            raise AirtableError(
                422, "INVALID_FILTER_BY_FORMULA", f"The formula for filtering records is invalid: {formula}"
            )
        return pred


_EQ = re.compile(
    r"""\s*(?:\{(?P<field>(?:\\.|[^}\\])*)\}|(?P<rid>RECORD_ID\(\)))\s*=\s*
    (?:'(?P<sq>(?:\\.|[^'\\])*)'|"(?P<dq>(?:\\.|[^"\\])*)"|(?P<num>-?\d+(?:\.\d+)?)|(?P<bool>TRUE\(\)|FALSE\(\)))""",
    re.VERBOSE,
)


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def _parse_formula(text: str, table: Table) -> tuple[Any, str]:
    """Recursive-descent over the subset; returns (predicate(record) -> bool, unparsed rest)."""
    upper = text.upper()
    for func in ("AND(", "OR(", "NOT("):
        if upper.startswith(func):
            rest = text[len(func) :]
            parts = []
            while True:
                part, rest = _parse_formula(rest.lstrip(), table)
                parts.append(part)
                rest = rest.lstrip()
                if rest.startswith(","):
                    rest = rest[1:]
                    continue
                if not rest.startswith(")"):
                    raise ValueError("unclosed function")
                rest = rest[1:]
                break
            if func == "AND(":
                return (lambda r, ps=parts: all(p(r) for p in ps)), rest
            if func == "OR(":
                return (lambda r, ps=parts: any(p(r) for p in ps)), rest
            if len(parts) != 1:
                raise ValueError("NOT takes one argument")
            return (lambda r, p=parts[0]: not p(r)), rest
    match = _EQ.match(text)
    if match is None:
        raise ValueError("unsupported formula")
    if match.group("sq") is not None or match.group("dq") is not None:
        wanted: Any = _unescape(match.group("sq") if match.group("sq") is not None else match.group("dq"))
    elif match.group("num") is not None:
        wanted = float(match.group("num"))
    else:
        wanted = match.group("bool").upper() == "TRUE()"
    rest = text[match.end() :]
    if match.group("rid"):
        return (lambda r, w=wanted: r["id"] == w), rest
    name = _unescape(match.group("field"))
    if name not in table.columns:
        raise AirtableError(422, "INVALID_FILTER_BY_FORMULA", f"Unknown field names: {name.lower()}")

    def cell_equals(record: dict[str, Any], n: str = name, w: Any = wanted) -> bool:
        value = record["fields"].get(n)
        if isinstance(w, bool):
            return bool(value) is w
        if isinstance(w, float):
            return isinstance(value, int | float) and float(value) == w
        if value is None:
            return bool(w == "")  # Airtable treats an empty cell as equal to ''
        if isinstance(value, list):
            return bool(", ".join(map(str, value)) == w)
        return bool(str(value) == w)

    return cell_equals, rest
