"""The single-cycle lock: at most one sync cycle at a time across every process sharing a store.

Postgres: a session-level advisory lock (``pg_try_advisory_lock``) held on a dedicated connection
for the cycle's duration.  Postgres releases it when that session ends, so a replica killed with
SIGKILL never leaves it behind (PostgreSQL docs, "Advisory Locks", and "Advisory Lock Functions").

SQLite: ``fcntl.flock`` on ``<dbfile>.lock``.  The kernel drops a flock when the last descriptor of
the open file closes, which includes process death (flock(2)).  An in-memory SQLite database is
private to its process, so a process-local lock is enough there.

Both variants acquire without waiting: a second cycle is refused with ``LockHeldError`` rather than
queued, because the next scheduled cycle will pick up whatever the running one did not.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from ltvsync.core.errors import LockHeldError, StoreError

DEFAULT_LOCK_NAME = "ltvsync-cycle"
LOCK_FILE_SUFFIX = ".lock"

_memory_locks: dict[str, threading.Lock] = {}
_memory_locks_guard = threading.Lock()


class LockableStore(Protocol):
    """What the lock needs from the store: its engine and dialect name."""

    @property
    def engine(self) -> Engine: ...

    @property
    def dialect(self) -> str: ...


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for ``name`` (Postgres advisory locks take a bigint)."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def scoped_key(conn: Connection, name: str) -> int:
    """The advisory key of ``name`` for the store ``conn`` is connected to.

    Advisory keys are per database cluster: scoping them to the store (database + schema) makes
    replicas of one store exclude each other while stores in other schemas do not.
    """
    scope = conn.execute(text("SELECT current_database() || '.' || current_schema()")).scalar()
    return advisory_key(f"{name}@{scope}")


@contextmanager
def cycle_lock(store: LockableStore, name: str = DEFAULT_LOCK_NAME) -> Iterator[None]:
    """Hold the named lock for the ``with`` block, or raise ``LockHeldError`` at once."""
    if store.dialect == "postgresql":
        with _postgres_lock(store.engine, name):
            yield
    elif store.dialect == "sqlite":
        database = store.engine.url.database
        if not database or database == ":memory:" or database.startswith("file::memory:"):
            with _memory_lock(name):
                yield
        else:
            with _file_lock(Path(database), name):
                yield
    else:
        raise StoreError(f"no single-cycle lock for the {store.dialect!r} dialect")


@contextmanager
def _postgres_lock(engine: Engine, name: str) -> Iterator[None]:
    # Autocommit so the holder connection never sits "idle in transaction" for a whole cycle.
    conn: Connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    try:
        key = scoped_key(conn, name)
        got = conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar()
    except Exception:
        conn.close()
        raise
    if not got:
        conn.close()
        raise LockHeldError(f"another ltvsync process holds the {name!r} lock (advisory key {key})")
    try:
        yield
    finally:
        _release_postgres(conn, key)


def _release_postgres(conn: Connection, key: int) -> None:
    try:
        released = conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key}).scalar()
    except Exception:
        released = False
    if not released:
        # The pool would otherwise hand a session still holding the lock to someone else;
        # discarding the connection ends the session, which releases every advisory lock it holds.
        conn.invalidate()
    conn.close()


@contextmanager
def _file_lock(database: Path, name: str) -> Iterator[None]:
    suffix = LOCK_FILE_SUFFIX if name == DEFAULT_LOCK_NAME else f".{_safe(name)}{LOCK_FILE_SUFFIX}"
    path = database.with_name(database.name + suffix)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockHeldError(f"another ltvsync process holds the {name!r} lock ({path})") from None
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextmanager
def _memory_lock(name: str) -> Iterator[None]:
    with _memory_locks_guard:
        lock = _memory_locks.setdefault(name, threading.Lock())
    if not lock.acquire(blocking=False):
        raise LockHeldError(f"another cycle in this process holds the {name!r} lock")
    try:
        yield
    finally:
        lock.release()


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
