"""The single-cycle lock on both stores: a second holder is refused, release frees it, and a holder
killed with SIGKILL leaves nothing behind (Postgres ends the session; the kernel drops the flock)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from ltvsync.core.errors import LockHeldError, StoreError
from ltvsync.core.lock import cycle_lock, scoped_key

PG_URL = os.environ.get("LTVSYNC_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@dataclass(frozen=True)
class _Store:
    engine: Engine
    dialect: str


@pytest.fixture
def pg_store() -> Iterator[_Store]:
    engine = create_engine(PG_URL)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        engine.dispose()
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {exc.__class__.__name__}")
    yield _Store(engine, "postgresql")
    engine.dispose()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[_Store]:
    engine = create_engine(f"sqlite:///{tmp_path / 'ltv.db'}")
    yield _Store(engine, "sqlite")
    engine.dispose()


def _unique_name() -> str:
    # Other test sessions share this Postgres; a unique lock name keeps them from colliding.
    return f"test-lock-{uuid.uuid4()}"


def _holders(store: _Store, name: str) -> int:
    with store.engine.connect() as conn:
        key = scoped_key(conn, name)
        classid, objid = (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                    "AND classid = CAST(:c AS oid) AND objid = CAST(:o AS oid) AND granted"
                ),
                {"c": classid, "o": objid},
            ).scalar_one()
        )


@pytest.mark.postgres
def test_postgres_second_lock_is_refused_then_free_after_release(pg_store: _Store) -> None:
    name = _unique_name()
    with cycle_lock(pg_store, name):
        assert _holders(pg_store, name) == 1
        with pytest.raises(LockHeldError, match="advisory key"), cycle_lock(pg_store, name):
            pass
    assert _holders(pg_store, name) == 0
    with cycle_lock(pg_store, name):
        pass


@pytest.mark.postgres
def test_postgres_lock_is_released_when_the_block_raises(pg_store: _Store) -> None:
    name = _unique_name()
    with pytest.raises(RuntimeError), cycle_lock(pg_store, name):
        raise RuntimeError("cycle blew up")
    with cycle_lock(pg_store, name):
        pass


@pytest.mark.postgres
def test_postgres_different_names_do_not_conflict(pg_store: _Store) -> None:
    with cycle_lock(pg_store, _unique_name()), cycle_lock(pg_store, _unique_name()):
        pass


def test_sqlite_second_lock_is_refused_then_free_after_release(sqlite_store: _Store, tmp_path: Path) -> None:
    with cycle_lock(sqlite_store):
        assert (tmp_path / "ltv.db.lock").exists()
        with pytest.raises(LockHeldError), cycle_lock(sqlite_store):
            pass
    with cycle_lock(sqlite_store):
        pass


def test_sqlite_in_memory_uses_a_process_local_lock() -> None:
    store = _Store(create_engine("sqlite://"), "sqlite")
    name = _unique_name()
    with cycle_lock(store, name), pytest.raises(LockHeldError), cycle_lock(store, name):
        pass
    with cycle_lock(store, name):
        pass


def test_unknown_dialect_is_a_store_error() -> None:
    store = _Store(create_engine("sqlite://"), "mysql")
    with pytest.raises(StoreError, match="mysql"), cycle_lock(store):
        pass


_HOLDER = """
import sys, time
from dataclasses import dataclass
from sqlalchemy import create_engine
from ltvsync.core.lock import cycle_lock

@dataclass(frozen=True)
class S:
    engine: object
    dialect: str

store = S(create_engine(sys.argv[1]), sys.argv[2])
with cycle_lock(store, sys.argv[3]):
    print("locked", flush=True)
    time.sleep(120)
"""


def _start_holder(url: str, dialect: str, name: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, url, dialect, name], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _acquire_within(store: _Store, name: str, seconds: float) -> float:
    """Try to take the lock until it succeeds; return how long it took."""
    start = time.monotonic()
    while True:
        try:
            with cycle_lock(store, name):
                return time.monotonic() - start
        except LockHeldError:
            if time.monotonic() - start > seconds:
                raise
            time.sleep(0.05)


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
def test_lock_of_a_killed_holder_is_released(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    store: _Store = request.getfixturevalue("pg_store" if kind == "postgresql" else "sqlite_store")
    name = _unique_name()
    url = PG_URL if kind == "postgresql" else f"sqlite:///{tmp_path / 'ltv.db'}"
    proc = _start_holder(url, kind, name)
    try:
        with pytest.raises(LockHeldError), cycle_lock(store, name):
            pass
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        assert _acquire_within(store, name, seconds=10) < 10
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
