"""CLI command: ``ltvsync demo`` — the whole product against the local sandbox, no credentials.

Starts the four emulators over a synthetic world, points a configuration at them (store and
config live in a temporary working directory, never the current folder), then either runs one
cycle and prints its report (``--once``) or serves the daemon, triggers a cycle, prints the
summary and the status-page URL, and keeps serving until Ctrl-C.
"""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import requests
import typer
from pydantic import SecretStr
from rich.table import Table

from ltvsync.commands.common import console, err_console
from ltvsync.commands.report_view import live_progress, print_report
from ltvsync.config.settings import Settings

# Rate-limit penalties and Retry-After in the demo sandbox are scaled down this much, so a
# deliberately provoked 429 costs milliseconds, while the documented limits still apply.
DEMO_TIME_SCALE = 0.01


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def demo_settings(sandbox: Any, workdir: Path, port: int) -> Settings:
    """Settings pointing at the sandbox, with a store and a fresh API token in ``workdir``."""
    settings: Settings = sandbox.settings(store_url=f"sqlite:///{workdir / 'ltvsync.db'}")
    settings.server.port = port
    settings.server.token = SecretStr(secrets.token_urlsafe(24))
    return settings


def ltv_deciles(settings: Settings) -> list[float]:
    """Predicted-LTV deciles of the current customers (for the summary)."""
    import numpy as np
    from sqlalchemy import select

    from ltvsync.core import models as m
    from ltvsync.core.store import Store

    store = Store.open(settings.store.url, upgrade=False)
    try:
        with store.engine.connect() as conn:
            t = m.TABLES["customer_metrics"]
            values = [float(v) for (v,) in conn.execute(select(t.c.ltv_predicted)) if v is not None]
    finally:
        store.close()
    if not values:
        return []
    return [float(x) for x in np.percentile(values, [10, 25, 50, 75, 90, 99])]


def print_summary(report: dict[str, Any], deciles: list[float]) -> None:
    print_report(console, report)
    if deciles:
        table = Table(title="Predicted LTV distribution", title_justify="left")
        for label in ("p10", "p25", "median", "p75", "p90", "p99"):
            table.add_column(label, justify="right")
        table.add_row(*(f"{v:,.2f}" for v in deciles))
        console.print(table)


def run_once(customers: int, seed: int, as_json: bool) -> int:
    from ltvsync.assemble import build_cycle
    from ltvsync.core.pipeline import run_cycle
    from ltvsync.sandbox.http import Knobs
    from ltvsync.sandbox.runner import Sandbox

    workdir = Path(tempfile.mkdtemp(prefix="ltvsync-demo-"))
    try:
        with Sandbox(n_customers=customers, seed=seed, knobs=Knobs(time_scale=DEMO_TIME_SCALE)) as sb:
            settings = demo_settings(sb, workdir, _free_port())
            cycle = build_cycle(settings)
            with live_progress(err_console, not as_json and err_console.is_terminal) as progress:
                report = run_cycle(cycle, trigger="demo", progress=progress)
            cycle.store.close()
            data = report.as_dict()
            if as_json:
                typer.echo(json.dumps(data, default=str))
            else:
                print_summary(data, ltv_deciles(settings))
            return 0 if report.status == "ok" else 3
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_served(customers: int, seed: int, port: int) -> int:
    from ltvsync.commands.serve_cmd import configure_logging, serve
    from ltvsync.sandbox.http import Knobs
    from ltvsync.sandbox.runner import Sandbox

    workdir = Path(tempfile.mkdtemp(prefix="ltvsync-demo-"))
    console.print(f"Generating a world of {customers:,} customers and starting the sandbox…")
    with Sandbox(n_customers=customers, seed=seed, knobs=Knobs(time_scale=DEMO_TIME_SCALE)) as sb:
        settings = demo_settings(sb, workdir, port or _free_port())
        settings.schedule.enabled = False  # one cycle on request; the demo is not a production daemon
        token = settings.server.token.get_secret_value() if settings.server.token else ""
        url = f"http://127.0.0.1:{settings.server.port}"
        for name, base in sb.urls.items():
            console.print(f"  sandbox {name:<10} {base}")
        configure_logging("plain")
        threading.Thread(target=_trigger_and_report, args=(url, token, settings), daemon=True).start()
        try:
            return serve(settings)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def _trigger_and_report(url: str, token: str, settings: Settings) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/healthz", timeout=2).ok:
                break
        except requests.RequestException:
            time.sleep(0.2)
    run_id = requests.post(f"{url}/api/sync", headers=headers, timeout=90).json()["run_id"]
    while True:
        run = requests.get(f"{url}/api/runs/{run_id}", headers=headers, timeout=10).json()
        if run.get("status") not in ("running", None):
            break
        time.sleep(1.0)
    report = run.get("report") or {}
    print_summary(report, ltv_deciles(settings))
    console.print(f"\n[bold green]Status page:[/] {url}/#token={token}")
    console.print("Serving until Ctrl-C.")


def register(app: typer.Typer) -> None:
    """Attach this module's commands to ``app``."""

    @app.command("demo")
    def demo(
        customers: Annotated[
            int, typer.Option("--customers", help="Customers in the synthetic world.")
        ] = 2000,
        seed: Annotated[int, typer.Option("--seed", help="World seed (same seed, same world).")] = 0,
        once: Annotated[
            bool, typer.Option("--once", help="Run one cycle, print the report and exit.")
        ] = False,
        as_json: Annotated[
            bool, typer.Option("--json", help="With --once: print the report as JSON.")
        ] = False,
        port: Annotated[int, typer.Option("--port", help="HTTP port of the daemon (0: any free port).")] = 0,
    ) -> None:
        """Run ltvsync end to end against the local sandbox of all four APIs; no credentials needed."""
        if once:
            raise typer.Exit(run_once(customers, seed, as_json))
        raise typer.Exit(run_served(customers, seed, port))
