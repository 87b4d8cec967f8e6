"""Alembic environment for the ltvsync store, shipped inside the package.

``Store.upgrade()`` runs it programmatically and hands over its open connection in
``config.attributes["connection"]``, so migrations run inside the store's transaction (and, on
Postgres, under its advisory lock).  The ``alembic`` CLI also works with ``-x url=...``.
Relies on: Alembic "Cookbook: Sharing a Connection across one or more programmatic migration
commands" and "Running Batch Migrations for SQLite" (``render_as_batch``: SQLite cannot ALTER
most things, so later migrations that change columns must use ``op.batch_alter_table``).

There is no alembic.ini; to draft the next revision against a database at the current head::

    from alembic import command
    from alembic.config import Config
    cfg = Config()
    cfg.set_main_option("script_location", "ltvsync/core/migrations")
    cfg.set_main_option("sqlalchemy.url", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    command.revision(cfg, "what it adds", autogenerate=True, rev_id="0003")

then make the file self-contained (plain ``sa.`` types, as 0001 does) before committing.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine
from sqlmodel import SQLModel

import ltvsync.core.models  # noqa: F401  (registers the tables on SQLModel.metadata)

config = context.config
target_metadata = SQLModel.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("no database URL: pass -x url=... or set sqlalchemy.url")
    engine = create_engine(url)
    with engine.begin() as conn:
        _run(conn)
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) mode is not supported; run against a database")
run_migrations_online()
