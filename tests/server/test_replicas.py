"""Real ``ltvsync serve`` processes against the sandbox: replicas never overlap, SIGTERM loses nothing."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import requests
from sqlalchemy import select

from ltvsync.core import models as m
from ltvsync.core.pipeline import CycleOptions, run_cycle
from ltvsync.core.store import Store
from ltvsync.sandbox.http import Knobs
from ltvsync.sandbox.runner import Sandbox
from tests.integration.helpers import FAST_RETRY, small_world

TOKEN = "replica-test-token-0123456789"
STOP_BOUND_SECONDS = 70.0  # serve waits up to 60 s for the running cycle's batch to finish


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(config: Path, port: int, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    env = {
        **os.environ,
        "LTVSYNC_SERVER__TOKEN": TOKEN,
        "LTVSYNC_SERVER__PORT": str(port),
        "LTVSYNC_SCHEDULE__CRON": "0 0 1 1 *",  # no scheduled cycle during the test
    }
    env.pop("LTVSYNC_CONFIG", None)
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ltvsync.cli", "serve", "--config", str(config)],
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            if requests.get(f"{url}/healthz", timeout=1).ok:
                return proc, url
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline, "daemon did not come up"
        time.sleep(0.1)


def _runs(url: str) -> list[tuple[datetime, datetime, str]]:
    store = Store.open(url, upgrade=False)
    try:
        t = m.TABLES["sync_run"]
        with store.engine.connect() as conn:
            rows = conn.execute(select(t.c.started_at, t.c.finished_at, t.c.status).order_by(t.c.id)).all()
    finally:
        store.close()
    return [(r.started_at, r.finished_at, r.status) for r in rows]


@pytest.mark.postgres
def test_two_serve_processes_on_one_postgres_never_run_cycles_at_once(pg_url: str, tmp_path: Path) -> None:
    with Sandbox(world=small_world(n=150, seed=2), knobs=Knobs(time_scale=0.001, latency=0.002)) as sb:
        config = sb.write_config(tmp_path / "ltvsync.toml", store_url=pg_url)
        Store.open(pg_url).close()  # migrate once up front, so both replicas start on a ready schema
        daemons = [_serve(config, _free_port(), tmp_path / f"serve{i}.log") for i in range(2)]
        headers = {"Authorization": f"Bearer {TOKEN}"}
        answers: list[int] = []
        try:
            deadline = time.monotonic() + 25
            while time.monotonic() < deadline:
                for _proc, url in daemons:  # both replicas are asked for cycles, over and over
                    answers.append(requests.post(f"{url}/api/sync", headers=headers, timeout=90).status_code)
                time.sleep(0.3)
        finally:
            for proc, _url in daemons:
                proc.send_signal(signal.SIGTERM)
            for proc, _url in daemons:
                proc.wait(timeout=STOP_BOUND_SECONDS)
    # Contention happened: some requests found the other replica holding the lock and were refused.
    assert 409 in answers and 202 in answers, answers
    runs = _runs(pg_url)
    finished = [r for r in runs if r[1] is not None]
    assert len(finished) >= 2, runs
    ordered = sorted(finished)
    for (_s1, end1, _), (start2, _e2, _) in itertools.pairwise(ordered):
        assert end1 <= start2, f"cycles overlapped: {ordered}"


def test_sigterm_mid_cycle_exits_within_the_bound_and_the_next_start_loses_nothing(tmp_path: Path) -> None:
    world = small_world(n=200, seed=6)
    with Sandbox(world=world, knobs=Knobs(time_scale=0.001, latency=0.004)) as sb:
        url = f"sqlite:///{tmp_path / 'daemon.db'}"
        config = sb.write_config(tmp_path / "ltvsync.toml", store_url=url)
        proc, base = _serve(config, _free_port(), tmp_path / "serve.log")
        headers = {"Authorization": f"Bearer {TOKEN}"}
        requests.post(f"{base}/api/sync", headers=headers, timeout=90)
        time.sleep(1.0)  # the cycle is pulling
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=STOP_BOUND_SECONDS + 10)
        assert time.monotonic() - signalled < STOP_BOUND_SECONDS
        statuses = [status for _s, _f, status in _runs(url)]
        assert statuses and statuses[-1] in ("stopped", "ok"), statuses

        # The next start resumes from the committed cursors and ends equal to an uninterrupted pull.
        proc, base = _serve(config, _free_port(), tmp_path / "serve2.log")
        run_id = requests.post(f"{base}/api/sync", headers=headers, timeout=90).json()["run_id"]
        deadline = time.monotonic() + 120
        while (
            requests.get(f"{base}/api/runs/{run_id}", headers=headers, timeout=10).json()["status"]
            == "running"
        ):
            assert time.monotonic() < deadline
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=STOP_BOUND_SECONDS)

        ref_url = f"sqlite:///{tmp_path / 'reference.db'}"
        reference = Store.open(ref_url)
        from ltvsync.assemble import build_cycle

        run_cycle(
            build_cycle(sb.settings(ref_url), reference, retry=FAST_RETRY),
            options=CycleOptions(stages=("pull",)),
        )
    resumed = Store.open(url, upgrade=False)
    for table in ("identity", "purchase", "event", "ticket"):
        t = m.TABLES[table]
        query = select(t.c.source, t.c.source_id).order_by(t.c.source, t.c.source_id)
        with resumed.engine.connect() as a, reference.engine.connect() as b:
            assert a.execute(query).all() == b.execute(query).all(), table
