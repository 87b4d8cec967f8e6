"""The daemon's HTTP API: sync-now, runs, customers, chart data, Prometheus metrics, status page.

Every route needs ``Authorization: Bearer <server.token>`` except ``GET /healthz`` and the status
page's static shell (``/`` and ``/static/*``), which holds no data: the page reads the token from
the URL *fragment* (``/#token=...``, never sent to the server, so never in access logs) or from a
prompt, keeps it in ``sessionStorage``, and sends it as a bearer header on each API call.

FastAPI's Swagger/ReDoc pages are off (they load assets from a CDN); ``/openapi.json`` is served
behind the token.  Relies on the FastAPI docs ("Security - HTTP Bearer", "Dependencies in path
operation decorators", "Static Files") and Starlette's middleware docs.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import SQLAlchemyError

from ltvsync import __version__
from ltvsync.core.errors import ConfigError
from ltvsync.core.status_values import (
    MAX_HISTOGRAM_BINS,
    CohortMatrix,
    CustomerView,
    LtvHistogram,
    RunView,
    StreamLag,
    TagSeries,
)
from ltvsync.scheduler import CycleNotStartedError, DaemonStatus
from ltvsync.server import metrics
from ltvsync.server.queries import DaemonControl, StatusQueries

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
MAX_RUNS_PAGE = 200
# The page may only talk to this origin and load nothing inline or from elsewhere.
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'"
)
PUBLIC_PATHS = frozenset({"/healthz", "/"})


@dataclass(frozen=True)
class SyncAccepted:
    run_id: int
    # True when a cycle was already running and this request joined it instead of starting one.
    joined: bool


@dataclass(frozen=True)
class Health:
    status: str
    scheduler_running: bool
    cycle_running: bool


@dataclass(frozen=True)
class StatusView:
    daemon: DaemonStatus
    streams: list[StreamLag]
    latest_run: RunView | None


def create_app(daemon: DaemonControl, queries: StatusQueries, token: str) -> FastAPI:
    """The API bound to one daemon and one store.  ``token`` is required (from ``server.token``)."""
    if not token:
        raise ConfigError("server.token is empty: set it (or LTVSYNC_SERVER__TOKEN) to serve the API")
    expected = token.encode("utf-8")
    bearer = HTTPBearer(auto_error=False, description="server.token from ltvsync.toml")

    # A default-value dependency, not Annotated: with postponed annotations FastAPI evaluates
    # annotations in module globals, where this closure's ``bearer`` does not exist.
    def require_token(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        given = credentials.credentials.encode("utf-8") if credentials is not None else b""
        # Constant-time comparison: the token must not leak through response timing.
        if not given or not hmac.compare_digest(given, expected):
            raise HTTPException(
                401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"}
            )

    app = FastAPI(
        title="ltvsync",
        version=__version__,
        description="Customer-lifetime-value sync daemon API.",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.middleware("http")(_access_log)
    app.add_exception_handler(SQLAlchemyError, _store_unavailable)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/healthz", tags=["public"])
    def healthz() -> Health:
        """Liveness: the process answers.  No token needed."""
        state = daemon.status()
        return Health("ok", state.scheduler_running, state.cycle_running)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Content-Security-Policy": PAGE_CSP})

    # Per-route dependencies rather than an APIRouter: routes stay flat in ``app.routes``, which the
    # tests walk to prove that every one of them but the public ones demands the token.
    guard = [Depends(require_token)]

    @app.get("/openapi.json", dependencies=guard, include_in_schema=False)
    def openapi() -> dict[str, Any]:
        return app.openapi()

    @app.get("/metrics", dependencies=guard, tags=["monitoring"], response_class=Response)
    def prometheus() -> Response:
        """Prometheus text exposition (scrape with ``authorization: {credentials: <token>}``)."""
        families = metrics.collect(
            queries.run_counts(),
            metrics.last_finished(queries.runs(limit=20)),
            queries.stream_lag(),
            daemon.status(),
        )
        return Response(metrics.render(families), media_type=metrics.CONTENT_TYPE)

    @app.post("/api/sync", dependencies=guard, tags=["runs"], status_code=202)
    def sync_now(full_refresh: bool = False) -> SyncAccepted:
        """Start a cycle now, or join the running one; returns once its run row exists."""
        try:
            ticket = daemon.submit_cycle("full_refresh" if full_refresh else "manual")
        except CycleNotStartedError as exc:
            raise HTTPException(409, str(exc)) from None
        return SyncAccepted(ticket.run_id, ticket.joined)

    @app.get("/api/runs", dependencies=guard, tags=["runs"])
    def runs(limit: Annotated[int, Query(ge=1, le=MAX_RUNS_PAGE)] = 20) -> list[RunView]:
        return queries.runs(limit)

    @app.get("/api/runs/{run_id}", dependencies=guard, tags=["runs"])
    def run(run_id: int) -> RunView:
        found = queries.run(run_id)
        if found is None:
            raise HTTPException(404, f"no run {run_id}")
        return found

    @app.get("/api/status", dependencies=guard, tags=["runs"])
    def status() -> StatusView:
        latest = queries.runs(limit=1)
        return StatusView(daemon.status(), queries.stream_lag(), latest[0] if latest else None)

    @app.get("/api/customers/{email}", dependencies=guard, tags=["customers"])
    def customer(email: str) -> CustomerView:
        found = queries.customer(email)
        if found is None:
            raise HTTPException(404, "no customer with that email")
        return found

    @app.get("/api/charts/ltv-distribution", dependencies=guard, tags=["charts"])
    def ltv_distribution(bins: Annotated[int, Query(ge=1, le=MAX_HISTOGRAM_BINS)] = 20) -> LtvHistogram:
        return queries.ltv_distribution(bins)

    @app.get("/api/charts/tag-counts", dependencies=guard, tags=["charts"])
    def tag_counts() -> list[TagSeries]:
        return queries.tag_counts()

    @app.get("/api/charts/cohorts", dependencies=guard, tags=["charts"])
    def cohorts(max_cohorts: Annotated[int, Query(ge=1, le=120)] = 24) -> CohortMatrix:
        return queries.cohorts(max_cohorts)

    return app


async def _access_log(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    # The route template, not the URL: paths and queries carry e-mail addresses; tokens travel in
    # headers, which are never logged.
    started = time.monotonic()
    response = await call_next(request)
    elapsed_ms = (time.monotonic() - started) * 1000
    route = request.scope.get("route")
    path = getattr(route, "path", None) or "(unmatched)"
    if path.startswith("/api/") or path == "/metrics":
        # Customer data and run state: never kept by browsers or proxies.
        response.headers["Cache-Control"] = "no-store"
    log.info("%s %s %d %.1fms", request.method, path, response.status_code, elapsed_ms)
    return response


async def _store_unavailable(request: Request, exc: Exception) -> Response:
    # The class name only: driver messages can quote SQL parameters (customer data).
    log.error("store error on %s: %s", request.url.path, exc.__class__.__name__)
    return JSONResponse({"detail": "store unavailable"}, status_code=503)
