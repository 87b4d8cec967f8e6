"""The HTTP API over fakes: authentication on every route, OpenAPI completeness, and each endpoint."""

from __future__ import annotations

import logging

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import Mount

from ltvsync.core.errors import ConfigError
from ltvsync.scheduler import CycleNotStartedError, CycleTicket
from ltvsync.server.app import PUBLIC_PATHS, create_app

from .conftest import TOKEN
from .fakes import FakeDaemon, FakeQueries

DUMMY_PARAMS = {"run_id": "1", "email": "ada@example.com"}


def _concrete(path: str) -> str:
    for name, value in DUMMY_PARAMS.items():
        path = path.replace("{" + name + "}", value)
    assert "{" not in path, f"add a dummy value for {path}"
    return path


def _api_routes(app: FastAPI) -> list[tuple[str, str]]:
    return [
        (method, route.path)
        for route in app.routes
        if isinstance(route, APIRoute)
        for method in sorted(route.methods or ())
    ]


def test_every_route_but_the_public_ones_needs_the_token(app: FastAPI, client: TestClient) -> None:
    routes = _api_routes(app)
    assert len(routes) >= 10
    for method, path in routes:
        url = _concrete(path)
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            response = client.request(method, url, headers=headers)
            if path in PUBLIC_PATHS:
                assert response.status_code == 200, (method, path)
            else:
                assert response.status_code == 401, (method, path, headers)
                assert response.headers["www-authenticate"] == "Bearer"
                assert TOKEN not in response.text


def test_openapi_documents_exactly_the_api_routes(
    app: FastAPI, client: TestClient, auth: dict[str, str]
) -> None:
    schema = client.get("/openapi.json", headers=auth).json()
    documented = {(method.upper(), path) for path, ops in schema["paths"].items() for method in ops}
    in_schema = {(m, p) for m, p in _api_routes(app) if p not in ("/", "/openapi.json")}
    assert documented == in_schema
    # Everything else that answers is deliberately public or meta: the page shell and its assets.
    others = {getattr(r, "path", None) for r in app.routes if not isinstance(r, APIRoute)}
    assert others == {"/static"}
    assert all(isinstance(r, Mount) for r in app.routes if not isinstance(r, APIRoute))
    assert "bearer" in str(schema["components"]["securitySchemes"]).lower()


def test_no_cdn_docs_pages(client: TestClient) -> None:
    assert client.get("/docs").status_code == 404
    assert client.get("/redoc").status_code == 404


def test_sync_now_starts_then_joins(client: TestClient, auth: dict[str, str], daemon: FakeDaemon) -> None:
    first = client.post("/api/sync", headers=auth)
    second = client.post("/api/sync", headers=auth)
    assert first.status_code == 202
    assert first.json() == {"run_id": 3, "joined": False}
    assert second.json() == {"run_id": 3, "joined": True}
    assert client.post("/api/sync?full_refresh=true", headers=auth).json()["joined"] is True
    assert daemon.submitted == ["manual", "manual", "full_refresh"]
    assert client.get("/api/runs/3", headers=auth).json()["status"] == "running"


def test_sync_now_that_cannot_start_is_a_conflict(queries: FakeQueries, auth: dict[str, str]) -> None:
    class Refusing(FakeDaemon):
        def submit_cycle(self, trigger: str = "manual", timeout: float = 60.0) -> CycleTicket:
            raise CycleNotStartedError("the manual cycle did not start (LockHeldError: held elsewhere)")

    client = TestClient(create_app(Refusing(queries), queries, TOKEN))
    response = client.post("/api/sync", headers=auth)
    assert response.status_code == 409
    assert "LockHeldError" in response.json()["detail"]


def test_runs_and_run_by_id(client: TestClient, auth: dict[str, str]) -> None:
    runs = client.get("/api/runs?limit=1", headers=auth).json()
    assert [r["id"] for r in runs] == [2]
    assert runs[0]["duration_seconds"] == 42.5
    assert runs[0]["started_at"].endswith(("Z", "+00:00"))
    assert client.get("/api/runs/1", headers=auth).json()["status"] == "failed"
    assert client.get("/api/runs/999", headers=auth).status_code == 404
    assert client.get("/api/runs/not-a-number", headers=auth).status_code == 422
    assert client.get("/api/runs?limit=0", headers=auth).status_code == 422


def test_customer_lookup(client: TestClient, auth: dict[str, str]) -> None:
    response = client.get("/api/customers/Ada@Example.com", headers=auth)
    assert response.headers["cache-control"] == "no-store"
    found = response.json()
    assert found["tags"] == ["vip"] and found["metrics"]["ltv_simple"] == 321.5
    missing = client.get("/api/customers/nobody@example.com", headers=auth)
    assert missing.status_code == 404 and "nobody" not in missing.text


def test_chart_endpoints(client: TestClient, auth: dict[str, str]) -> None:
    hist = client.get("/api/charts/ltv-distribution?bins=5", headers=auth).json()
    assert len(hist["bins"]) == 5 and hist["overflow"] == 2
    assert client.get("/api/charts/ltv-distribution?bins=100000", headers=auth).status_code == 422
    tags = client.get("/api/charts/tag-counts", headers=auth).json()
    assert {s["tag"] for s in tags} == {"vip", "churn_risk"} and tags[0]["points"][0]["day"] == "2026-11-01"
    cohorts = client.get("/api/charts/cohorts?max_cohorts=2", headers=auth).json()
    assert [r["cohort"] for r in cohorts["rows"]] == ["2026-10", "2026-11"]


def test_status_and_health(client: TestClient, auth: dict[str, str]) -> None:
    assert client.get("/healthz").json() == {
        "status": "ok",
        "scheduler_running": True,
        "cycle_running": False,
    }
    status = client.get("/api/status", headers=auth).json()
    assert status["latest_run"]["id"] == 2
    assert [s["stream"] for s in status["streams"]] == ["contacts", "tickets"]
    assert status["daemon"]["jobs"][0]["id"] == "ltvsync-cycle"


def test_metrics_exposition(client: TestClient, auth: dict[str, str]) -> None:
    response = client.get("/metrics", headers=auth)
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = set(response.text.splitlines())
    assert 'ltvsync_runs_total{status="failed"} 1' in lines
    assert 'ltvsync_runs_total{status="ok"} 1' in lines
    assert "ltvsync_last_run_duration_seconds 42.5" in lines
    assert 'ltvsync_last_run_records_loaded{source="mixpanel",stream="events"} 900' in lines
    assert 'ltvsync_last_run_records_loaded{source="salesforce",stream="opportunities"} 0' in lines
    # Source and destination calls of the same connector add up.
    assert 'ltvsync_last_run_api_calls{connector="salesforce"} 14' in lines
    assert 'ltvsync_last_run_api_calls{connector="mixpanel"} 2' in lines
    assert 'ltvsync_last_run_rejections{source="mixpanel",stream="events"} 3' in lines
    assert not any("broken" in line for line in lines)
    assert 'ltvsync_cursor_lag_seconds{connector="zendesk",stream="tickets"} 7200' in lines
    assert 'ltvsync_stream_sync_age_seconds{connector="salesforce",stream="contacts"} 60' in lines
    assert "ltvsync_cycle_running 0" in lines
    assert "# TYPE ltvsync_runs_total counter" in lines


def test_page_shell_is_public_and_locked_down(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert 'src="/static/status.js"' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN
    assert client.get("/static/status.js").status_code == 200
    assert client.get("/static/status.css").status_code == 200


def test_empty_token_is_refused(daemon: FakeDaemon, queries: FakeQueries) -> None:
    with pytest.raises(ConfigError, match=r"server\.token"):
        create_app(daemon, queries, "")


def test_access_log_never_shows_emails_or_tokens(
    client: TestClient, auth: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="ltvsync.server.app"):
        client.get("/api/customers/ada@example.com?x=1", headers=auth)
        client.get("/api/runs", headers={"Authorization": "Bearer guess-" + TOKEN})
    text = caplog.text
    assert "GET /api/customers/{email} 200" in text
    assert "ada@example.com" not in text and TOKEN not in text
