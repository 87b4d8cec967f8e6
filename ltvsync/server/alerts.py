"""Alerting webhook: one JSON POST when a condition starts, and one when it clears.

Conditions, checked after every cycle: the cycle failed; the run rejected more payloads than
``server.alert_rejections_threshold``; some stream has not been synced (its cursor committed) for
more than ``server.alert_lag_minutes``.  That is sync freshness, not data freshness: a quiet source
or Mixpanel's re-read window must not raise an alert.
The body carries ``text`` as well, so a Slack or Mattermost "incoming webhook" URL works as is
(Slack API docs, "Sending messages using incoming webhooks").

The webhook URL is a secret (it authorises posting), so it never appears in logs or errors.  A POST
that fails leaves the state unchanged, so the change is sent again after the next cycle.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import requests

from ltvsync.core.errors import LockHeldError
from ltvsync.core.status_values import RunView, StreamLag
from ltvsync.scheduler import CycleHook
from ltvsync.server.queries import StatusQueries

log = logging.getLogger(__name__)

WEBHOOK_TIMEOUT_SECONDS = 10.0
# "partial": the run finished but a stream or a destination failed (see its report).
FAILED_STATUSES = frozenset({"failed", "partial"})
CYCLE_FAILED = "cycle_failed"
REJECTIONS = "rejections_over_threshold"
LAG = "lag_over_threshold"


@dataclass(frozen=True)
class AlertThresholds:
    rejections: int
    lag_seconds: float


def total_rejections(counts: object) -> int:
    """Rejections recorded in a run's counts (the pipeline's ``{"rejections": n, ...}``)."""
    raw = counts.get("rejections") if isinstance(counts, Mapping) else None
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return int(raw)
    return 0


def evaluate(
    run: RunView | None,
    error: BaseException | None,
    lags: Sequence[StreamLag],
    thresholds: AlertThresholds,
) -> dict[str, str]:
    """The conditions active after a cycle, each with a human-readable message.  Pure."""
    active: dict[str, str] = {}
    if run is not None and run.status in FAILED_STATUSES:
        active[CYCLE_FAILED] = f"sync run {run.id} {run.status}: {run.error or 'see its report'}"
    elif run is None and error is not None:
        active[CYCLE_FAILED] = f"sync cycle could not run: {error.__class__.__name__}: {error}"
    rejected = total_rejections(run.counts) if run is not None else 0
    if rejected > thresholds.rejections:
        active[REJECTIONS] = f"sync run {run.id if run else '?'} rejected {rejected} payloads"
    late = [
        f"{lag.connector}.{lag.stream} ({lag.age_seconds / 60:.0f} min)"
        for lag in lags
        if lag.age_seconds is not None and lag.age_seconds > thresholds.lag_seconds
    ]
    if late:
        active[LAG] = "streams not synced within the threshold: " + ", ".join(late)
    return active


class AlertNotifier:
    """Remembers which conditions are active and POSTs only the changes."""

    def __init__(
        self,
        url: str,
        *,
        session: requests.Session | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._url = url
        self._session = session or requests.Session()
        self._clock = clock or (lambda: datetime.now(UTC))
        self.active: dict[str, str] = {}

    def observe(self, conditions: Mapping[str, str], run_id: int | None = None) -> list[dict[str, object]]:
        """Send one message per condition that started or cleared; return the messages delivered."""
        sent: list[dict[str, object]] = []
        for key in sorted(set(conditions) - set(self.active)):
            body = self._body("alert", key, conditions[key], run_id)
            if self._post(body):
                self.active[key] = conditions[key]
                sent.append(body)
        for key in sorted(set(self.active) - set(conditions)):
            body = self._body("recovered", key, f"recovered: {self.active[key]}", run_id)
            if self._post(body):
                del self.active[key]
                sent.append(body)
        return sent

    def _body(self, event: str, key: str, message: str, run_id: int | None) -> dict[str, object]:
        prefix = "ltvsync ALERT" if event == "alert" else "ltvsync OK"
        return {
            "service": "ltvsync",
            "event": event,
            "condition": key,
            "message": message,
            "run_id": run_id,
            "at": self._clock().isoformat(),
            "text": f"{prefix}: {message}",
        }

    def _post(self, body: dict[str, object]) -> bool:
        try:
            response = self._session.post(self._url, json=body, timeout=WEBHOOK_TIMEOUT_SECONDS)
        except requests.RequestException as exc:
            log.warning(
                "alert webhook unreachable (%s); will retry after the next cycle", exc.__class__.__name__
            )
            return False
        if response.status_code >= 300:
            log.warning("alert webhook answered %d; will retry after the next cycle", response.status_code)
            return False
        return True


def alert_hook(notifier: AlertNotifier, queries: StatusQueries, thresholds: AlertThresholds) -> CycleHook:
    """The daemon's cycle-end hook: evaluate the conditions and notify the changes."""

    def on_cycle_end(run_id: int | None, error: BaseException | None) -> None:
        if run_id is None and isinstance(error, LockHeldError):
            return  # another replica is running the cycle: nothing failed
        run = queries.run(run_id) if run_id is not None else None
        notifier.observe(evaluate(run, error, queries.stream_lag(), thresholds), run_id)

    return on_cycle_end
