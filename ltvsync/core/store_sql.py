"""The bulk upsert statement for SQLite and Postgres, built once per table shape.

``INSERT … VALUES (…), (…) ON CONFLICT (key) DO UPDATE SET … WHERE <some column changed>``: the
``WHERE`` makes a re-read of unchanged data a no-op (no row rewritten, ``row_version`` unchanged),
which is what lets connectors re-read from an inclusive cursor cheaply.

Why hand-built SQL text and not ``conn.execute(insert(...), rows)``: SQLAlchemy's executemany
path runs one statement per row on both drivers here (``insertmanyvalues`` is only used with
RETURNING), and compiling a multi-row ``insert().values([...])`` per batch costs more than the
insert itself.  So the statement text is built once per table shape and values go through the
same SQLAlchemy bind processors the Core would apply (UTC datetimes, JSON text, Decimal on
SQLite), then straight to the driver.  SQLite gets multi-row ``VALUES`` sized to its parameter
limit; Postgres gets ``SELECT … FROM unnest(%b::type[], …)``, one binary array per column
(parsing and planning tens of thousands of placeholders cost Postgres more than the insert).

Relies on: SQLite "UPSERT" (https://sqlite.org/lang_upsert.html; ``IS NOT`` is SQLite's null-safe
inequality; at most ``SQLITE_LIMIT_VARIABLE_NUMBER`` bound parameters per statement, 32766 since
3.32) and PostgreSQL "INSERT … ON CONFLICT" (``IS DISTINCT FROM``; at most 65535 parameters; a
statement may not update the same row twice, hence de-duplication by key before sending).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, Dialect, String, Table
from sqlalchemy.types import TypeDecorator, TypeEngine

# Bound-parameter ceilings per statement.
POSTGRES_MAX_PARAMS = 65_535
SQLITE_OLD_MAX_PARAMS = 999  # builds before 3.32 (later builds report their own limit, 32766 by default)
ROW_VERSION = "row_version"
NUL_REPLACEMENT = "\ufffd"

BindProcessor = Callable[[Any], Any] | None


@dataclass(frozen=True)
class UpsertPlan:
    """Everything about one upsert shape that does not depend on the rows."""

    table: Table
    columns: tuple[str, ...]
    key: tuple[str, ...]
    processors: tuple[BindProcessor, ...]
    rows_per_statement: int
    dialect_name: str
    paramstyle: str
    sql_types: tuple[str, ...]

    def sql(self, n_rows: int) -> str:
        if self.dialect_name == "postgresql":
            return _render_unnest(self.table, self.columns, self.key, self.sql_types)
        return _render(self.table, self.columns, self.key, n_rows, self.dialect_name, self.paramstyle)

    def columnar_params(self, rows: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
        """One list per column (Postgres binds each as an array for ``unnest``)."""
        flat = self.params(rows)
        ncols = len(self.columns)
        return [flat[i::ncols] for i in range(ncols)]

    def params(self, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
        """Flatten rows into one positional parameter list, applying the column types' processors."""
        ncols = len(self.columns)
        out: list[Any] = []
        extend = out.extend
        get = itemgetter(*self.columns)
        # This is the hot path of every sync: rows are flattened first, then each typed column is
        # processed as one slice (a list comprehension per column, not a Python loop per value).
        try:
            if ncols > 1:
                for row in rows:
                    if len(row) != ncols:
                        raise ValueError(f"row has columns {sorted(row)}, expected {sorted(self.columns)}")
                    extend(get(row))
            else:
                for row in rows:
                    if len(row) != ncols:
                        raise ValueError(f"row has columns {sorted(row)}, expected {sorted(self.columns)}")
                    out.append(get(row))
        except KeyError as exc:
            raise ValueError(f"row lacks column {exc}, expected {sorted(self.columns)}") from None
        for i, p in enumerate(self.processors):
            if p is None:
                continue
            column = out[i::ncols]
            if p is _without_nul and not _has_nul(column):
                continue  # the usual case: no NUL anywhere in this column, nothing to replace
            out[i::ncols] = [v if v is None else p(v) for v in column]
        return out


def _has_nul(values: list[Any]) -> bool:
    """Whether any str in ``values`` holds a NUL, checked in C when the column is all str/None."""
    try:
        return "\x00" in "".join(filter(None, values))
    except TypeError:  # a non-str value among them: check one by one
        return any(isinstance(v, str) and "\x00" in v for v in values)


def make_plan(
    conn: Connection, table: Table, columns: Sequence[str], key: Sequence[str], batch: int
) -> UpsertPlan:
    """Validate the shape and size statements to the dialect's parameter limit."""
    dialect = conn.dialect
    unknown = [c for c in (*columns, *key) if c not in table.c]
    if unknown:
        raise ValueError(f"{table.name} has no column(s) {unknown}")
    missing_key = [k for k in key if k not in columns]
    if missing_key:
        raise ValueError(f"rows lack key column(s) {missing_key}")
    processors = tuple(_processor(table, c, dialect) for c in columns)
    # Postgres binds one array per column, so only the batch size bounds a statement there.
    max_rows = batch if dialect.name == "postgresql" else max(1, _max_params(conn) // len(columns))
    return UpsertPlan(
        table=table,
        columns=tuple(columns),
        key=tuple(key),
        processors=processors,
        rows_per_statement=max(1, min(batch, max_rows)),
        dialect_name=dialect.name,
        paramstyle=dialect.paramstyle,
        sql_types=tuple(table.c[c].type.compile(dialect=dialect) for c in columns),
    )


def execute_plan(conn: Connection, plan: UpsertPlan, rows: Sequence[Mapping[str, Any]]) -> int:
    """Send rows in statements of ``plan.rows_per_statement``; return rows inserted or changed."""
    changed = 0
    step = plan.rows_per_statement
    columnar = plan.dialect_name == "postgresql"
    for start in range(0, len(rows), step):
        chunk = rows[start : start + step]
        params = plan.columnar_params(chunk) if columnar else plan.params(chunk)
        result = conn.exec_driver_sql(plan.sql(len(chunk)), tuple(params))
        # Both drivers report inserted + updated rows; rows skipped by the WHERE do not count.
        changed += max(result.rowcount, 0)
    return changed


def _processor(table: Table, column: str, dialect: Dialect) -> BindProcessor:
    col_type = table.c[column].type
    processor = col_type.dialect_impl(dialect).bind_processor(dialect)
    if processor is None and _is_text(col_type):
        return _without_nul
    return processor


def _is_text(col_type: TypeEngine[Any]) -> bool:
    # SQLModel's str columns are AutoString, a TypeDecorator over String.
    impl = col_type.impl_instance if isinstance(col_type, TypeDecorator) else col_type
    return isinstance(impl, String)


def _without_nul(value: Any) -> Any:
    """Postgres text cannot hold NUL; one stray byte from a source must not fail a whole page.

    Replaced on both stores (with U+FFFD) so SQLite and Postgres hold the same data.
    """
    return value.replace("\x00", NUL_REPLACEMENT) if isinstance(value, str) and "\x00" in value else value


def _max_params(conn: Connection) -> int:
    if conn.dialect.name == "postgresql":
        return POSTGRES_MAX_PARAMS
    raw = conn.connection.dbapi_connection
    getlimit = getattr(raw, "getlimit", None)  # sqlite3.Connection.getlimit is Python 3.11+
    if getlimit is None:
        return SQLITE_OLD_MAX_PARAMS
    import sqlite3

    return int(getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))


@lru_cache(maxsize=256)
def _render(
    table: Table, columns: tuple[str, ...], key: tuple[str, ...], n_rows: int, dialect: str, style: str
) -> str:
    quote = _quoter(dialect)
    placeholder = "?" if style == "qmark" else "%s"
    one_row = "(" + ", ".join([placeholder] * len(columns)) + ")"
    name = quote(table.name)
    sql = [
        f"INSERT INTO {name} ({', '.join(quote(c) for c in columns)}) VALUES ",
        ", ".join([one_row] * n_rows),
        f" ON CONFLICT ({', '.join(quote(k) for k in key)}) ",
    ]
    updates = [c for c in columns if c not in key and c != ROW_VERSION]
    if not updates:
        sql.append("DO NOTHING")
        return "".join(sql)
    sets = [f"{quote(c)} = excluded.{quote(c)}" for c in updates]
    if ROW_VERSION in table.c and ROW_VERSION not in columns:
        sets.append(f"{quote(ROW_VERSION)} = {name}.{quote(ROW_VERSION)} + 1")
    distinct = "IS NOT" if dialect == "sqlite" else "IS DISTINCT FROM"
    changed = " OR ".join(f"{name}.{quote(c)} {distinct} excluded.{quote(c)}" for c in updates)
    sql.append(f"DO UPDATE SET {', '.join(sets)} WHERE {changed}")
    return "".join(sql)


@lru_cache(maxsize=256)
def _render_unnest(
    table: Table, columns: tuple[str, ...], key: tuple[str, ...], types: tuple[str, ...]
) -> str:
    """Postgres: ``INSERT … SELECT … FROM unnest(%b::type[], …)``, one array parameter per column.

    The statement stays tiny whatever the batch size, so psycopg prepares it once and binds arrays.
    """
    quote = _quoter("postgresql")
    # %b: binary arrays, which psycopg dumps several times faster than the text format.
    arrays = ", ".join(f"%b::{t}[]" for t in types)
    head = _render(table, columns, key, 1, "postgresql", "format")
    insert_part, conflict_part = head.split(" VALUES ", 1)
    conflict = conflict_part.split(" ON CONFLICT ", 1)[1]
    cols = ", ".join(quote(c) for c in columns)
    return f"{insert_part} SELECT {cols} FROM unnest({arrays}) AS v({cols}) ON CONFLICT {conflict}"


def _quoter(dialect: str) -> Callable[[str], str]:
    # Both dialects quote identifiers with double quotes; quote always so reserved words
    # ("values", "trigger", "at") are safe without consulting a keyword list.
    return lambda ident: '"' + ident.replace('"', '""') + '"'
