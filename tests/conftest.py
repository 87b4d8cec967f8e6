"""Shared fixtures: a migrated ``store`` on SQLite and on Postgres.

Every test that takes ``store`` (or ``store_url``) runs twice, with ids ``[sqlite]`` and
``[postgres]``.  SQLite uses a file in ``tmp_path``; Postgres uses ``LTVSYNC_TEST_DATABASE_URL``
(default: the local trust-auth server) with a fresh schema per test, dropped afterwards.  When
Postgres is unreachable the Postgres half is skipped with the reason, except under ``CI=true``,
where it fails: CI must exercise both stores.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy.engine import make_url

from ltvsync.core.store import Store, normalize_url, safe_url

DEFAULT_TEST_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _libpq_url(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A Postgres URL whose ``search_path`` is a fresh schema for this test only."""
    base = normalize_url(os.environ.get("LTVSYNC_TEST_DATABASE_URL", DEFAULT_TEST_PG_URL))
    try:
        admin = psycopg.connect(_libpq_url(base), autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        reason = f"PostgreSQL unreachable at {safe_url(base)}: {type(exc).__name__}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason + " (CI=true requires it)")
        pytest.skip(reason)
    schema = f"test_{secrets.token_hex(6)}"
    with admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            yield (
                make_url(base)
                .update_query_dict({"options": f"-csearch_path={schema}"})
                .render_as_string(hide_password=False)
            )
        finally:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A URL for an empty database, once per dialect."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('store') / 'ltvsync.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """A migrated store on each dialect, closed after the test."""
    opened = Store.open(store_url)
    try:
        yield opened
    finally:
        opened.close()
