"""CLI command ``ltvsync sandbox serve``: run the four API emulators over a synthetic world.

Prints each service's base URL, writes a ready configuration pointing at them, and serves until
interrupted (Ctrl-C or SIGTERM).  With ``--json`` the first output line is one JSON object (flushed at
once) naming, per service, the base URL, the accepted credentials and (Salesforce) the CA bundle, so
scripts can start the sandbox and read where it is.  Relies on Typer sub-apps
(https://typer.tiangolo.com/tutorial/subcommands/).
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

sandbox_app = typer.Typer(
    help="Local emulators of Salesforce, Mixpanel, Zendesk and Airtable.", no_args_is_help=True
)


@sandbox_app.command("serve")
def serve(
    customers: Annotated[
        int, typer.Option("--customers", min=1, help="Customers in the synthetic world.")
    ] = 2000,
    seed: Annotated[int, typer.Option("--seed", help="World seed: the same seed gives the same world.")] = 0,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="Print one JSON object (URLs, credentials, CA bundle) as the first line."
        ),
    ] = False,
    config_out: Annotated[
        Path,
        typer.Option("--config-out", dir_okay=False, help="Where to write a config pointing at the sandbox."),
    ] = Path("ltvsync-sandbox.toml"),
    store_url: Annotated[
        str, typer.Option("--store-url", help="Store URL written into the generated config.")
    ] = "sqlite:///ltvsync-sandbox.db",
    time_scale: Annotated[
        float,
        typer.Option("--time-scale", min=0.0, help="Multiplies rate-limit windows (0.01 = 100x faster)."),
    ] = 1.0,
    rate_limits: Annotated[
        bool,
        typer.Option("--rate-limits/--no-rate-limits", help="Enforce the vendors' documented rate limits."),
    ] = True,
    fault_rate: Annotated[
        float,
        typer.Option("--fault-rate", min=0.0, max=1.0, help="Share of requests that fail (5xx/drop/429)."),
    ] = 0.0,
) -> None:
    """Serve the emulators until interrupted; write a ready config to --config-out."""
    from ltvsync.sandbox.http import Knobs
    from ltvsync.sandbox.runner import Sandbox

    started = time.perf_counter()
    knobs = Knobs(fault_rate=fault_rate, time_scale=time_scale, rate_limits=rate_limits, seed=seed)
    sandbox = Sandbox(n_customers=customers, seed=seed, knobs=knobs).start()
    try:
        written = sandbox.write_config(config_out, store_url=store_url)
        info = sandbox.describe()
        if as_json:
            document = {
                **info,
                "config": str(written.resolve()),
                "customers": customers,
                "seed": seed,
                "as_of": sandbox.world.as_of.isoformat(),
                "startup_seconds": round(time.perf_counter() - started, 3),
                "peak_rss_mb": _peak_rss_mb(),
            }
            sys.stdout.write(json.dumps(document) + "\n")
            sys.stdout.flush()
        else:
            _print_table(info, written, time.perf_counter() - started)
        _wait_for_interrupt()
    finally:
        sandbox.stop()


def _peak_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    # ru_maxrss is KiB on Linux, bytes on macOS.
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale, 1)


def _print_table(info: dict[str, dict[str, object]], config: Path, seconds: float) -> None:
    console = Console()
    table = Table(title=f"ltvsync sandbox (started in {seconds:.1f}s)")
    table.add_column("service")
    table.add_column("base URL")
    table.add_column("credentials")
    for service, values in info.items():
        creds = ", ".join(f"{k}={v}" for k, v in values.items() if k != "base_url")
        table.add_row(service, str(values["base_url"]), creds)
    console.print(table)
    console.print(f"Config written to {config}; run `ltvsync sync --config {config}`. Ctrl-C stops.")


def _wait_for_interrupt() -> None:
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, _on_signal)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def register(app: typer.Typer) -> None:
    """Attach this module's commands to app."""
    app.add_typer(sandbox_app, name="sandbox")
