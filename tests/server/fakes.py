"""Fakes of the daemon and the status queries for the server tests (no store, no scheduler)."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

from ltvsync.core.status_values import (
    CohortMatrix,
    CohortRow,
    CustomerView,
    HistogramBin,
    LtvHistogram,
    RunView,
    StreamLag,
    TagPoint,
    TagSeries,
)
from ltvsync.scheduler import CycleTicket, DaemonStatus, JobInfo

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
# The shape ``SyncReport.as_dict()`` stores in ``sync_run.report`` (trimmed).
PIPELINE_REPORT: dict[str, object] = {
    "status": "ok",
    "streams": [
        {"source": "salesforce", "stream": "contacts", "records": 120, "rejections": 0, "api_calls": 9},
        {"source": "salesforce", "stream": "opportunities", "records": 0, "rejections": 0, "api_calls": 2},
        {"source": "mixpanel", "stream": "events", "records": 900, "rejections": 3, "api_calls": 2},
        {"source": "broken"},
        "not-a-mapping",
    ],
    "destinations": [{"destination": "salesforce", "ok": 40, "api_calls": 3}],
}


def finished_run(
    run_id: int,
    status: str = "ok",
    counts: dict[str, int] | None = None,
    report: dict[str, object] | None = None,
) -> RunView:
    return RunView(
        id=run_id,
        trigger="schedule",
        status=status,
        started_at=T0 + timedelta(hours=run_id),
        finished_at=T0 + timedelta(hours=run_id, seconds=42.5),
        duration_seconds=42.5,
        counts=counts or {},
        report=report,
        error=None if status == "ok" else "TransientError: 503 from Zendesk",
    )


class FakeQueries:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.run_rows: dict[int, RunView] = {
            1: finished_run(1, "failed"),
            2: finished_run(2, counts={"records": 1020, "rejections": 3}, report=PIPELINE_REPORT),
        }
        self.lags = [
            StreamLag("salesforce", "contacts", "2026-12-04T08:00:00Z", T0, 3600.0, "cursor", 60.0),
            StreamLag("zendesk", "tickets", "opaque", T0, 7200.0, "updated_at", 7200.0),
        ]

    def add_run(self, run: RunView) -> None:
        with self.lock:
            self.run_rows[run.id] = run

    def finish(self, run_id: int, status: str = "ok") -> None:
        with self.lock:
            run = self.run_rows[run_id]
            self.run_rows[run_id] = replace(
                run, status=status, finished_at=T0 + timedelta(days=1), duration_seconds=3.0
            )

    def runs(self, limit: int = 20) -> list[RunView]:
        with self.lock:
            return [self.run_rows[k] for k in sorted(self.run_rows, reverse=True)][:limit]

    def run(self, run_id: int) -> RunView | None:
        with self.lock:
            return self.run_rows.get(run_id)

    def run_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for run in self.runs(1000):
            counts[run.status] = counts.get(run.status, 0) + 1
        return counts

    def stream_lag(self) -> list[StreamLag]:
        return list(self.lags)

    def customer(self, email: str) -> CustomerView | None:
        if email.lower() != "ada@example.com":
            return None
        return CustomerView(7, "ada@example.com", "Ada", T0, T0, {"ltv_simple": 321.5, "orders": 4}, ("vip",))

    def ltv_distribution(self, bins: int = 20) -> LtvHistogram:
        edges = tuple(HistogramBin(i * 50.0, (i + 1) * 50.0, (i * 7) % 11 + 1) for i in range(bins))
        return LtvHistogram(sum(b.count for b in edges) + 2, edges, 2, 9000.0)

    def tag_counts(self) -> list[TagSeries]:
        days = [date(2026, 11, d) for d in (1, 8, 15, 22, 29)]
        return [
            TagSeries("vip", tuple(TagPoint(d, 10 + i) for i, d in enumerate(days))),
            TagSeries("churn_risk", tuple(TagPoint(d, 30 - 3 * i) for i, d in enumerate(days))),
        ]

    def cohorts(self, max_cohorts: int = 24) -> CohortMatrix:
        rows = tuple(
            CohortRow(
                f"2026-{m:02d}", 100 + m, tuple(1.0 / (k + 1) for k in range(13 - m)), 200.0 + 10 * m, 80.0
            )
            for m in range(7, 12)
        )
        return CohortMatrix("month", rows[-max_cohorts:])


class FakeDaemon:
    """Starts a fake run in ``queries`` on submit; joins while one is unfinished."""

    def __init__(self, queries: FakeQueries, *, finish_after: float | None = 0.5) -> None:
        self.queries = queries
        self.finish_after = finish_after
        self.submitted: list[str] = []
        self.current: int | None = None
        self._lock = threading.Lock()

    def submit_cycle(self, trigger: str = "manual", timeout: float = 60.0) -> CycleTicket:
        with self._lock:
            self.submitted.append(trigger)
            if self.current is not None:
                return CycleTicket(self.current, True)
            run_id = max(self.queries.run_rows) + 1
            self.queries.add_run(
                RunView(run_id, trigger, "running", T0 + timedelta(days=1), None, None, {}, None, None)
            )
            self.current = run_id
        if self.finish_after is not None:
            threading.Timer(self.finish_after, self.complete).start()
        return CycleTicket(run_id, False)

    def complete(self, status: str = "ok") -> None:
        with self._lock:
            if self.current is not None:
                self.queries.finish(self.current, status)
                self.current = None

    def status(self) -> DaemonStatus:
        return DaemonStatus(
            scheduler_running=True,
            cycle_running=self.current is not None,
            current_run_id=self.current,
            current_trigger="manual" if self.current else None,
            current_started_at=None,
            last_run_id=2,
            last_error=None,
            jobs=(JobInfo("ltvsync-cycle", T0 + timedelta(hours=1)),),
        )
