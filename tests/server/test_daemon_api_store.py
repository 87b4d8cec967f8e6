"""The real pieces together, in process: Store (SQLite) ← cycle ← Daemon ← HTTP API → SqlStatusQueries.

Only the cycle is a stand-in (it writes run rows the way the pipeline does); everything the API
answers comes from the store through the production queries.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from ltvsync.config.settings import ScheduleSettings
from ltvsync.core.status_queries import SqlStatusQueries
from ltvsync.core.store import Store
from ltvsync.scheduler import Daemon
from ltvsync.server.app import create_app

from .conftest import TOKEN


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(f"sqlite:///{tmp_path / 'ltv.db'}")
    yield opened
    opened.close()


def test_sync_now_over_http_records_and_reports_a_run(store: Store) -> None:
    release = threading.Event()

    def cycle(trigger: str, on_started: Callable[[int], None]) -> int:
        run_id = store.start_run(trigger)
        on_started(run_id)
        release.wait(10)
        report = {"streams": [{"source": "zendesk", "stream": "tickets", "records": 7, "api_calls": 2}]}
        store.finish_run(run_id, "ok", {"records": 7, "rejections": 0}, report, None)
        return run_id

    daemon = Daemon(cycle, ScheduleSettings(enabled=False))
    daemon.start()
    client = TestClient(create_app(daemon, SqlStatusQueries(store.engine), TOKEN))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        first = client.post("/api/sync", headers=auth).json()
        joined = client.post("/api/sync", headers=auth).json()
        assert joined == {"run_id": first["run_id"], "joined": True}
        running = client.get(f"/api/runs/{first['run_id']}", headers=auth).json()
        assert running["status"] == "running" and running["finished_at"] is None
        assert client.get("/api/status", headers=auth).json()["daemon"]["cycle_running"] is True

        release.set()
        deadline = time.monotonic() + 10
        while (run := client.get(f"/api/runs/{first['run_id']}", headers=auth).json())["finished_at"] is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert run["status"] == "ok" and run["trigger"] == "manual"
        assert run["counts"] == {"records": 7, "rejections": 0}
        assert run["duration_seconds"] >= 0

        metrics = client.get("/metrics", headers=auth).text.splitlines()
        assert 'ltvsync_runs_total{status="ok"} 1' in metrics
        assert 'ltvsync_last_run_records_loaded{source="zendesk",stream="tickets"} 7' in metrics
        assert 'ltvsync_last_run_api_calls{connector="zendesk"} 2' in metrics
        # An empty store still answers every chart.
        assert client.get("/api/charts/ltv-distribution", headers=auth).json()["total"] == 0
        assert client.get("/api/charts/cohorts", headers=auth).json()["rows"] == []
        assert client.get("/api/charts/tag-counts", headers=auth).json() == []
    finally:
        release.set()
        assert daemon.shutdown(timeout=5)
