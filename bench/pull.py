"""Pull throughput: a whole sandbox world pulled end to end, against a bare HTTP read of the same pages.

``ltvsync sandbox serve --customers N --json --no-rate-limits`` runs as a child process (rate limits
off: this measures our throughput, not the vendors' quotas).  Each measurement then runs in its own
fresh subprocess so its peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``) is the pull's alone, not the
world generator's:

* ``pull``: ``run_cycle(CycleOptions(stages=("pull",)))`` on a fresh store (SQLite file, or a freshly
  created Postgres database) with the production retry policy; records/second = records loaded /
  wall time of ``run_cycle``.
* ``bare``: plain ``requests`` reading the same pages the connectors read and discarding the bytes
  (parsing only what paging needs): Salesforce ``COUNT()`` then a Bulk 2.0 query job (results paged
  by ``Sforce-Locator``) above ``bulk_backfill_threshold`` rows, else ``queryAll`` + ``nextRecordsUrl``,
  over TLS with the sandbox CA; Mixpanel export in the connector's 31-day windows and every engage
  page; Zendesk incremental cursor pages for users and tickets (with ``metric_sets``).

Overhead = pull wall time / bare read wall time.  Vendor docs behind the bare reader: Salesforce
REST "Execute a SOQL Query"/"QueryAll", Bulk API 2.0 "Create a Query Job"/"Get Results for a Query
Job"; Mixpanel raw-event-export and engage-query; Zendesk incremental exports (cursor based).

Usage: .venv/bin/python bench/pull.py [--customers 100000] [--seed 0] [--store both|sqlite|postgres]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, date, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

import requests

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_BENCH_DB = "ltvsync_bench_pull"
PG_STORE_URL = f"postgresql+psycopg://postgres@127.0.0.1:5432/{PG_BENCH_DB}"
LOAD_SAMPLE_SECONDS = 5.0
# Keep in step with the connectors: ltvsync.connectors.mixpanel / zendesk / salesforce_bulk.
MIXPANEL_EXPORT_WINDOW_DAYS = 31
BULK_QUERY_PAGE = 50_000
REQUEST_TIMEOUT = 600


# -- workers (each run in a fresh subprocess) -------------------------------------------------------


def _settings(config: str, store_url: str) -> Any:
    from ltvsync.config.loader import load_settings

    settings = load_settings(config, env={})
    settings.store.url = store_url
    # The sandbox org has multi-currency on (as in tests/integration/helpers.py).
    settings.salesforce.currency_field = "CurrencyIsoCode"
    return settings


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker_pull(config: str, store_url: str) -> dict[str, Any]:
    from ltvsync.assemble import build_cycle, open_store
    from ltvsync.core.pipeline import CycleOptions, run_cycle

    settings = _settings(config, store_url)
    store = open_store(settings)
    cycle = build_cycle(settings, store)
    rss_before = _peak_rss_mb()
    start = time.perf_counter()
    report = run_cycle(cycle, trigger="bench", options=CycleOptions(stages=("pull",)))
    wall = time.perf_counter() - start
    streams = [
        {k: s[k] for k in ("source", "stream", "status", "records", "pages", "api_calls", "rejections")}
        | {"seconds": round(s["seconds"], 3), "error": s.get("error")}
        for s in report.streams
    ]
    return {
        "status": report.status,
        "errors": report.errors,
        "wall_s": wall,
        "records": sum(s["records"] for s in streams),
        "api_calls": sum(s["api_calls"] for s in streams),
        "streams": streams,
        "rss_before_pull_mb": rss_before,
        "peak_rss_mb": _peak_rss_mb(),
    }


class _Meter:
    """Requests, bytes and seconds per stream of the bare read."""

    def __init__(self) -> None:
        self.streams: dict[str, dict[str, float]] = {}

    def get(self, session: requests.Session, stream: str, url: str, **kwargs: Any) -> requests.Response:
        return self.send(session, stream, "GET", url, **kwargs)

    def send(
        self, session: requests.Session, stream: str, method: str, url: str, **kw: Any
    ) -> requests.Response:
        row = self.streams.setdefault(stream, {"requests": 0, "bytes": 0, "seconds": 0.0})
        start = time.perf_counter()
        response = session.request(method, url, timeout=REQUEST_TIMEOUT, **kw)
        response.raise_for_status()
        row["seconds"] += time.perf_counter() - start
        row["requests"] += 1
        row["bytes"] += len(response.content)
        return response


def _bare_salesforce(settings: Any, meter: _Meter) -> None:
    from ltvsync.connectors.salesforce import SalesforceSource
    from ltvsync.connectors.salesforce_soql import count_soql, select_soql

    sf = settings.salesforce
    # The connector's exact field lists (describe-validated); planned before the clock starts.
    source = SalesforceSource(sf, base_currency=settings.ltv.base_currency)
    plans = {name: source._plan(name) for name in ("contacts", "opportunities")}
    session = requests.Session()
    # As build_session does: REQUESTS_CA_BUNDLE in the environment would otherwise override verify.
    session.trust_env = False
    session.verify = sf.ca_bundle
    session.headers["Authorization"] = f"Bearer {sf.session_id.get_secret_value()}"
    api = f"{sf.instance_url.rstrip('/')}/services/data/v{sf.api_version}"
    start = time.perf_counter()
    for stream, plan in plans.items():
        counted = meter.get(session, stream, f"{api}/query", params={"q": count_soql(plan.object_name)})
        if counted.json()["totalSize"] > sf.bulk_backfill_threshold:
            soql = select_soql(plan.object_name, plan.fields, None, ordered=False)
            job = meter.send(
                session, stream, "POST", f"{api}/jobs/query", json={"operation": "query", "query": soql}
            )
            job_url = f"{api}/jobs/query/{job.json()['id']}"
            while meter.get(session, stream, job_url).json()["state"] != "JobComplete":
                time.sleep(0.05)
            locator = ""
            while locator != "null":
                params = {"maxRecords": BULK_QUERY_PAGE} | ({"locator": locator} if locator else {})
                locator = meter.get(session, stream, f"{job_url}/results", params=params).headers[
                    "Sforce-Locator"
                ]
        else:
            soql = select_soql(plan.object_name, plan.fields, None)
            page = meter.get(session, stream, f"{api}/queryAll", params={"q": soql}).json()
            while not page.get("done", True):
                page = meter.get(session, stream, sf.instance_url.rstrip("/") + page["nextRecordsUrl"]).json()
    meter.streams["salesforce_total_s"] = {"seconds": time.perf_counter() - start}


def _bare_mixpanel(settings: Any, meter: _Meter) -> None:
    mp = settings.mixpanel
    session = requests.Session()
    session.auth = (mp.api_secret.get_secret_value(), "")
    api = mp.export_url.rstrip("/") + "/2.0"
    day, last = date.fromisoformat(mp.start_date), datetime.now(UTC).date()
    while day <= last:
        window_end = min(day + timedelta(days=MIXPANEL_EXPORT_WINDOW_DAYS - 1), last)
        window = {"from_date": day.isoformat(), "to_date": window_end.isoformat()}
        meter.get(session, "events", f"{api}/export", params=window)
        day = window_end + timedelta(days=1)
    engage = mp.api_url.rstrip("/") + "/2.0/engage"
    params: dict[str, Any] = {"output_properties": json.dumps(["$email", "$name", "$created", "$last_seen"])}
    page_number = 0
    while True:
        body = meter.get(session, "profiles", engage, params=params).json()
        if not body["results"] or (page_number + 1) * body["page_size"] >= body["total"]:
            return
        page_number += 1
        params |= {"session_id": body["session_id"], "page": page_number}


def _bare_zendesk(settings: Any, meter: _Meter) -> None:
    zd = settings.zendesk
    session = requests.Session()
    session.auth = (f"{zd.email}/token", zd.api_token.get_secret_value())
    for stream in ("users", "tickets"):
        url = f"{zd.base_url.rstrip('/')}/api/v2/incremental/{stream}/cursor.json"
        params: dict[str, Any] | None = {"per_page": zd.per_page, "start_time": zd.start_time}
        if stream == "tickets":
            params = (params or {}) | {"include": "metric_sets"}
        while True:
            body = meter.get(session, stream, url, params=params).json()
            if body.get("end_of_stream", True) or not body.get("after_url"):
                break
            url, params = body["after_url"], None


def worker_bare(config: str) -> dict[str, Any]:
    settings = _settings(config, "sqlite://")
    meter = _Meter()
    _bare_salesforce(settings, meter)  # times itself, after the untimed describe/planning
    walls = {"salesforce": meter.streams.pop("salesforce_total_s")["seconds"]}
    for name, read in (("mixpanel", _bare_mixpanel), ("zendesk", _bare_zendesk)):
        start = time.perf_counter()
        read(settings, meter)
        walls[name] = time.perf_counter() - start
    return {
        "wall_s": sum(walls.values()),
        "walls": walls,
        "streams": meter.streams,
        "requests": sum(int(r["requests"]) for r in meter.streams.values()),
        "bytes": sum(int(r["bytes"]) for r in meter.streams.values()),
        "peak_rss_mb": _peak_rss_mb(),
    }


# -- orchestration -----------------------------------------------------------------------------------


class LoadSampler:
    """Samples the 1-minute load average while the benchmark runs (the machine is shared)."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(LOAD_SAMPLE_SECONDS):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:
        self.samples.append(os.getloadavg()[0])
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> str:
        return f"{min(self.samples):.1f}-{max(self.samples):.1f}" if self.samples else "n/a"


def start_sandbox(customers: int, seed: int, workdir: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    command = [sys.executable, "-m", "ltvsync.cli", "sandbox", "serve", "--customers", str(customers)]
    command += ["--seed", str(seed), "--json", "--no-rate-limits", "--config-out", f"{workdir}/sandbox.toml"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=workdir)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait()
        raise SystemExit(f"sandbox serve exited with {proc.returncode} before printing its JSON line")
    return proc, json.loads(line)


def stop_sandbox(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def drop_postgres() -> None:
    """The benchmark database holds a million rows nobody needs afterwards."""
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {PG_BENCH_DB} WITH (FORCE)")


def fresh_postgres() -> str | None:
    """Drop and create the benchmark's own database; None when Postgres is not reachable."""
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {PG_BENCH_DB} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {PG_BENCH_DB}")
            row = conn.execute("SHOW server_version").fetchone()
            return str(row[0]) if row else "?"
    except Exception as exc:  # unreachable or no rights: the SQLite figures still stand
        print(f"postgres unavailable ({type(exc).__name__}); skipping it", file=sys.stderr)
        return None


def run_worker(*args: str) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), *args]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"worker {args[:2]} failed with exit code {done.returncode}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def environment() -> dict[str, str]:
    versions = ", ".join(
        f"{name} {metadata.version(name)}"
        for name in ("SQLAlchemy", "requests", "simple-salesforce", "mixpanel-utils", "psycopg")
    )
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "uname": platform.uname().system + " " + " ".join(os.uname()[1:]),
        "nproc": str(os.cpu_count()),
        "python": platform.python_version(),
        "versions": f"{versions}, SQLite {sqlite3.sqlite_version}",
    }


def markdown(figures: dict[str, Any]) -> str:
    lines = [
        "| store | records | wall s | records/s | bare read s | pull ÷ bare | peak RSS MB | API calls |",
        "|---|---|---|---|---|---|---|---|",
    ]
    bare = min(b["wall_s"] for b in figures["bare"])
    for store, pull in figures["pull"].items():
        lines.append(
            f"| {store} | {pull['records']:,} | {pull['wall_s']:.1f} "
            f"| {pull['records'] / pull['wall_s']:,.0f} | {bare:.1f} | {pull['wall_s'] / bare:.1f}x "
            f"| {pull['peak_rss_mb']:,.0f} | {pull['api_calls']} |"
        )
    lines += ["", "| stream | records | pages | API calls | " + " | ".join(f"{s} s" for s in figures["pull"])]
    lines[-1] += " | bare read s (requests, MB) |"
    lines.append("|---|---|---|---|" + "---|" * len(figures["pull"]) + "---|")
    first = next(iter(figures["pull"].values()))
    bare_streams = min(figures["bare"], key=lambda b: b["wall_s"])["streams"]
    for i, stream in enumerate(first["streams"]):
        seconds = " | ".join(f"{p['streams'][i]['seconds']:.1f}" for p in figures["pull"].values())
        b = bare_streams.get(stream["stream"], {"seconds": 0, "requests": 0, "bytes": 0})
        lines.append(
            f"| {stream['source']}.{stream['stream']} | {stream['records']:,} | {stream['pages']} "
            f"| {stream['api_calls']} | {seconds} "
            f"| {b['seconds']:.1f} ({b['requests']}, {b['bytes'] / 1e6:.0f}) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--store", choices=("both", "sqlite", "postgres"), default="both")
    parser.add_argument("--worker", choices=("pull", "bare"), help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--store-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "pull":
        print(json.dumps(worker_pull(args.config, args.store_url)))
        return
    if args.worker == "bare":
        print(json.dumps(worker_bare(args.config)))
        return

    figures: dict[str, Any] = {"env": environment(), "customers": args.customers, "pull": {}, "bare": []}
    with tempfile.TemporaryDirectory() as tmp, LoadSampler() as load:
        started = time.perf_counter()
        proc, info = start_sandbox(args.customers, args.seed, tmp)
        figures["sandbox_start_s"] = round(time.perf_counter() - started, 1)
        try:
            config = info["config"]
            figures["bare"].append(run_worker("--worker", "bare", "--config", config))
            if args.store in ("both", "sqlite"):
                url = f"sqlite:///{tmp}/pull.db"
                figures["pull"]["SQLite"] = run_worker(
                    "--worker", "pull", "--config", config, "--store-url", url
                )
            if args.store in ("both", "postgres"):
                server = fresh_postgres()
                if server is not None:
                    figures["env"]["versions"] += f", PostgreSQL {server}"
                    try:
                        pull = run_worker("--worker", "pull", "--config", config, "--store-url", PG_STORE_URL)
                    finally:
                        drop_postgres()
                    figures["pull"]["Postgres"] = pull
            figures["bare"].append(run_worker("--worker", "bare", "--config", config))
        finally:
            stop_sandbox(proc)
    figures["load_average"] = load.summary()
    print(json.dumps(figures, indent=2))
    print()
    print(markdown(figures))


if __name__ == "__main__":
    main()
