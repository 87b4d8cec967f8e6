"""What the HTTP API needs from the rest of the daemon, as Protocols.

``StatusQueries`` is implemented over the store by ``ltvsync.core.status_queries.SqlStatusQueries``;
``DaemonControl`` by ``ltvsync.scheduler.Daemon``.  Tests pass fakes of either.
"""

from __future__ import annotations

from typing import Protocol

from ltvsync.core.status_values import (
    CohortMatrix,
    CustomerView,
    LtvHistogram,
    RunView,
    StreamLag,
    TagSeries,
)
from ltvsync.scheduler import CycleTicket, DaemonStatus


class StatusQueries(Protocol):
    """Read-only views of the store for the page, the API and /metrics."""

    def runs(self, limit: int = 20) -> list[RunView]: ...

    def run(self, run_id: int) -> RunView | None: ...

    def run_counts(self) -> dict[str, int]: ...

    def stream_lag(self) -> list[StreamLag]: ...

    def customer(self, email: str) -> CustomerView | None: ...

    def ltv_distribution(self, bins: int = 20) -> LtvHistogram: ...

    def tag_counts(self) -> list[TagSeries]: ...

    def cohorts(self, max_cohorts: int = 24) -> CohortMatrix: ...


class DaemonControl(Protocol):
    """The scheduler as the API drives it."""

    def submit_cycle(self, trigger: str = "manual", timeout: float = 60.0) -> CycleTicket: ...

    def status(self) -> DaemonStatus: ...
