"""CLI commands: ``ltvsync serve`` (scheduler + HTTP API in one process) and ``ltvsync sync-now``.

``serve`` builds everything once from configuration, runs the APScheduler daemon in background
threads and uvicorn in the main thread, and on SIGTERM/SIGINT raises the cycle's stop flag (the
pipeline finishes its current batch), stops the HTTP server and waits a bounded time for the
cycle.  ``sync-now`` asks a running daemon for a cycle over HTTP and follows it to the end.

Relies on uvicorn's programmatic API (``uvicorn.Config`` / ``uvicorn.Server``, "Settings" docs:
``timeout_graceful_shutdown``) and on the ``requests`` user guide (timeouts, ConnectionError).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import requests
import typer

from ltvsync.commands.common import ConfigOption, console, fail, load_or_exit
from ltvsync.config.settings import ServerSettings, Settings
from ltvsync.core.errors import ConfigError, LtvsyncError
from ltvsync.scheduler import CycleFn

if TYPE_CHECKING:  # imported lazily at run time: the CLI starts fast for every other command
    import uvicorn

    from ltvsync.core.store import Store

log = logging.getLogger("ltvsync.serve")

# How long SIGTERM waits for the running cycle to stop at a batch boundary.  The systemd unit's
# TimeoutStopSec is set above this so systemd never SIGKILLs a cycle that is wrapping up.
SHUTDOWN_TIMEOUT_SECONDS = 60.0
HTTP_GRACE_SECONDS = 5
# The daemon answers POST /api/sync once the run row exists (it waits up to 60 s for that).
SYNC_REQUEST_TIMEOUT_SECONDS = 90.0
POLL_SECONDS = 1.0
EXIT_FAILED = 1
EXIT_PARTIAL = 3
EXIT_LOCKED = 4
_LOOPBACK_FOR_WILDCARD = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}
_STATUS_EXIT = {"ok": 0, "noop": 0, "failed": EXIT_FAILED}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers (``server.log_format = "json"``)."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def configure_logging(log_format: str, level: int = logging.INFO) -> None:
    """Log to stdout (systemd/journald and Docker collect it), plain or JSON, timestamps in UTC."""
    handler = logging.StreamHandler(sys.stdout)
    formatter: logging.Formatter
    if log_format == "json":
        formatter = JsonFormatter()
    else:
        formatter = logging.Formatter("%(asctime)sZ %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn's own loggers propagate to ours; its access log is off (ours logs route templates).
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


def daemon_url(server: ServerSettings) -> str:
    """Where ``sync-now`` finds the daemon: its bind address, with a wildcard turned into loopback."""
    host = _LOOPBACK_FOR_WILDCARD.get(server.host, server.host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{server.port}"


def make_cycle_fn(settings: Settings, stop: threading.Event) -> tuple[CycleFn, Store]:
    """The daemon's cycle (the pipeline, which takes the cross-process lock itself) and its store."""
    from ltvsync.assemble import build_cycle
    from ltvsync.core.pipeline import CycleOptions, run_cycle

    cycle = build_cycle(settings)

    def run(trigger: str, on_started: Callable[[int], None]) -> int:
        options = CycleOptions(full_refresh=trigger == "full_refresh")
        report = run_cycle(cycle, trigger=trigger, options=options, stop=stop, on_started=on_started)
        return report.run_id

    return run, cycle.store


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT; return the process exit status."""
    import uvicorn

    from ltvsync.core.status_queries import SqlStatusQueries
    from ltvsync.scheduler import Daemon
    from ltvsync.server.alerts import AlertNotifier, AlertThresholds, alert_hook
    from ltvsync.server.app import create_app

    server_cfg = settings.server
    if server_cfg.token is None or not server_cfg.token.get_secret_value():
        raise ConfigError(
            "server.token is not set: the API needs a bearer token (or set LTVSYNC_SERVER__TOKEN)"
        )
    stop = threading.Event()
    cycle_fn, store = make_cycle_fn(settings, stop)
    queries = SqlStatusQueries(store.engine)
    hook = None
    if server_cfg.alert_webhook:
        thresholds = AlertThresholds(
            server_cfg.alert_rejections_threshold, server_cfg.alert_lag_minutes * 60.0
        )
        hook = alert_hook(AlertNotifier(server_cfg.alert_webhook), queries, thresholds)
    daemon = Daemon(cycle_fn, settings.schedule, stop_event=stop, on_cycle_end=hook)
    app = create_app(daemon, queries, server_cfg.token.get_secret_value())
    config = uvicorn.Config(
        app,
        host=host or server_cfg.host,
        port=server_cfg.port if port is None else port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=HTTP_GRACE_SECONDS,
    )
    http = _stopping_server(config, stop)
    # uvicorn restores the handlers it found and re-raises the signal once it has stopped; with
    # the default handlers that would kill the process before the cycle is waited for below.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    daemon.start()
    log.info("ltvsync daemon starting: API on %s:%s, store %s", config.host, config.port, store.url)
    try:
        http.run()
    finally:
        if not http.started:
            log.error("the HTTP server did not start (see the error above); stopping the scheduler")
        stop.set()
        finished = daemon.shutdown(SHUTDOWN_TIMEOUT_SECONDS)
        store.close()
        log.info("ltvsync daemon stopped%s", "" if finished else " (a cycle was still running)")
    return 0 if finished and http.started else EXIT_FAILED


def _stopping_server(config: uvicorn.Config, stop: threading.Event) -> uvicorn.Server:
    """A uvicorn server that raises the cycle stop flag the moment a stop signal arrives."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            log.info("signal %d: stopping (the running cycle finishes its current batch)", sig)
            stop.set()
            super().handle_exit(sig, frame)

    return Server(config)


def sync_now(url: str, token: str, *, wait: bool, full_refresh: bool) -> int:
    """Ask the daemon at ``url`` for a cycle; print the run id or follow it to the end."""
    headers = {"Authorization": f"Bearer {token}"}
    session = requests.Session()
    try:
        response = session.post(
            f"{url}/api/sync",
            params={"full_refresh": "true"} if full_refresh else None,
            headers=headers,
            timeout=SYNC_REQUEST_TIMEOUT_SECONDS,
        )
    except requests.ConnectionError:
        fail(
            f"no ltvsync daemon answers at {url}. Start one with `ltvsync serve`, "
            "or run a cycle inline with `ltvsync sync`.",
            code=EXIT_FAILED,
        )
    except requests.RequestException as exc:
        fail(f"asking the daemon at {url} failed: {exc.__class__.__name__}", code=EXIT_FAILED)
    _check(response, url)
    ticket = response.json()
    run_id = int(ticket["run_id"])
    if not wait:
        typer.echo(run_id)
        return 0
    joined = " (joined the cycle already running)" if ticket.get("joined") else ""
    console.print(f"Run #{run_id} started{joined}; waiting for it to finish…", highlight=False)
    while True:
        try:
            response = session.get(f"{url}/api/runs/{run_id}", headers=headers, timeout=30)
        except requests.RequestException:
            fail(f"lost the daemon at {url} while run #{run_id} was running", code=EXIT_FAILED)
        _check(response, url)
        run = response.json()
        if run.get("finished_at"):
            break
        time.sleep(POLL_SECONDS)
    status = str(run.get("status"))
    seconds = run.get("duration_seconds")
    took = f" in {seconds:.1f} s" if isinstance(seconds, int | float) else ""
    console.print(f"Run #{run_id} finished: {status}{took}", highlight=False)
    if run.get("error"):
        console.print(f"  {run['error']}", highlight=False, markup=False)
    return _STATUS_EXIT.get(status, EXIT_PARTIAL)


def _check(response: requests.Response, url: str) -> None:
    if response.status_code == 401:
        fail(f"the daemon at {url} refused the token: use server.token (or --token)", code=EXIT_FAILED)
    if response.status_code == 409:
        fail(_detail(response), code=EXIT_LOCKED)
    if response.status_code >= 400:
        fail(f"the daemon at {url} answered {response.status_code}: {_detail(response)}", code=EXIT_FAILED)


def _detail(response: requests.Response) -> str:
    try:
        return str(response.json().get("detail", response.reason))
    except ValueError:
        return str(response.reason)


def register(app: typer.Typer) -> None:
    """Attach ``serve`` and ``sync-now`` to ``app``."""

    @app.command("serve")
    def serve_command(
        config: ConfigOption = None,
        host: Annotated[str | None, typer.Option(help="Bind address (default: server.host).")] = None,
        port: Annotated[int | None, typer.Option(help="Port (default: server.port).")] = None,
    ) -> None:
        """Run the daemon: scheduled cycles, HTTP API, metrics and status page, until SIGTERM."""
        settings = load_or_exit(config)
        configure_logging(settings.server.log_format)
        try:
            code = serve(settings, host, port)
        except ConfigError as exc:
            fail(str(exc))
        except LtvsyncError as exc:
            fail(str(exc), code=EXIT_FAILED)
        raise typer.Exit(code)

    @app.command("sync-now")
    def sync_now_command(
        config: ConfigOption = None,
        url: Annotated[str | None, typer.Option(help="Daemon URL (default: from server.host/port).")] = None,
        token: Annotated[
            str | None, typer.Option(help="API token (default: server.token).", show_default=False)
        ] = None,
        no_wait: Annotated[
            bool, typer.Option("--no-wait", help="Print the run id and return at once.")
        ] = False,
        full_refresh: Annotated[bool, typer.Option("--full-refresh", help="Re-read every stream.")] = False,
    ) -> None:
        """Ask the running daemon for a cycle now (joins one already running) and follow it."""
        settings = load_or_exit(config)
        secret = token or (settings.server.token.get_secret_value() if settings.server.token else "")
        if not secret:
            fail("no API token: set server.token (or LTVSYNC_SERVER__TOKEN), or pass --token")
        target = (url or daemon_url(settings.server)).rstrip("/")
        raise typer.Exit(sync_now(target, secret, wait=not no_wait, full_refresh=full_refresh))
