"""Alerting webhook: one POST per state change, a recovery message, retries after a failed POST."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from datetime import UTC, datetime

import pytest
import responses
from responses import matchers

from ltvsync.core.errors import LockHeldError, TransientError
from ltvsync.core.status_values import StreamLag
from ltvsync.server.alerts import (
    CYCLE_FAILED,
    LAG,
    REJECTIONS,
    AlertNotifier,
    AlertThresholds,
    alert_hook,
    evaluate,
    total_rejections,
)

from .fakes import FakeQueries, finished_run

URL = "https://hooks.example.test/services/T000/B000/secretpart"
AT = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
THRESHOLDS = AlertThresholds(rejections=10, lag_seconds=3 * 3600)


def _bodies(rsps: responses.RequestsMock) -> list[dict[str, object]]:
    return [json.loads(call.request.body or b"{}") for call in rsps.calls]


def test_evaluate_each_condition() -> None:
    ok = finished_run(5, "ok", counts={"records": 50, "rejections": 11})
    # Mixpanel-style: the cursor trails by its re-read window, but the stream was synced a minute ago.
    lag_ok = StreamLag("mp", "events", "2026-12-01", AT, 3 * 86400.0, "cursor", 60.0)
    lag_bad = StreamLag("zd", "tickets", None, AT, 4 * 3600.0, "updated_at", 4 * 3600.0)
    assert evaluate(finished_run(5, "ok"), None, [lag_ok], THRESHOLDS) == {}
    assert set(evaluate(ok, None, [lag_ok], THRESHOLDS)) == {REJECTIONS}
    assert set(evaluate(finished_run(6, "failed"), None, [lag_bad], THRESHOLDS)) == {CYCLE_FAILED, LAG}
    assert "zd.tickets (240 min)" in evaluate(None, None, [lag_bad], THRESHOLDS)[LAG]
    assert set(evaluate(None, TransientError("503"), [], THRESHOLDS)) == {CYCLE_FAILED}
    assert set(evaluate(finished_run(7, "partial"), None, [], THRESHOLDS)) == {CYCLE_FAILED}
    assert set(evaluate(finished_run(7, "stopped"), None, [], THRESHOLDS)) == set()
    assert total_rejections({"rejections": 12}) == 12
    assert total_rejections({"rejections": True}) == 0 and total_rejections(None) == 0


@responses.activate(assert_all_requests_are_fired=True)
def test_one_post_per_state_change_then_recovery() -> None:
    responses.post(URL, status=200)
    notifier = AlertNotifier(URL, clock=lambda: AT)

    notifier.observe({CYCLE_FAILED: "sync run 6 failed: boom"}, run_id=6)
    notifier.observe({CYCLE_FAILED: "sync run 7 failed: boom"}, run_id=7)  # still failing: silent
    notifier.observe({}, run_id=8)  # recovered
    notifier.observe({}, run_id=9)  # still fine: silent

    bodies = _bodies(responses.mock)
    assert [(b["event"], b["condition"], b["run_id"]) for b in bodies] == [
        ("alert", CYCLE_FAILED, 6),
        ("recovered", CYCLE_FAILED, 8),
    ]
    assert bodies[0]["text"] == "ltvsync ALERT: sync run 6 failed: boom"
    assert bodies[0]["at"] == "2026-12-04T12:00:00+00:00"
    assert str(bodies[1]["text"]).startswith("ltvsync OK: recovered: sync run 6 failed")


def test_failed_post_is_retried_and_url_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps, caplog.at_level(logging.WARNING):
        rsps.post(URL, status=500)
        rsps.post(
            URL, status=200, match=[matchers.json_params_matcher({"condition": LAG}, strict_match=False)]
        )
        notifier = AlertNotifier(URL)
        assert notifier.observe({LAG: "lag"}) == []
        assert notifier.active == {}
        assert len(notifier.observe({LAG: "lag"})) == 1
        assert notifier.active == {LAG: "lag"}
    assert "500" in caplog.text and "secretpart" not in caplog.text and "hooks.example" not in caplog.text


@responses.activate(assert_all_requests_are_fired=True)
def test_hook_reads_the_run_and_ignores_a_lock_held_elsewhere() -> None:
    responses.post(URL, status=204)
    queries = FakeQueries()
    queries.lags = [replace(lag, age_seconds=60.0) for lag in queries.lags]
    hook = alert_hook(AlertNotifier(URL), queries, THRESHOLDS)
    hook(None, LockHeldError("held by another replica"))
    assert len(responses.calls) == 0
    hook(1, None)  # run 1 failed in the fake store
    hook(2, None)  # run 2 ok, 3 rejections (under threshold)
    assert [(b["event"], b["condition"]) for b in _bodies(responses.mock)] == [
        ("alert", CYCLE_FAILED),
        ("recovered", CYCLE_FAILED),
    ]
