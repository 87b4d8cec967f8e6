"""The daemon's scheduling and sync-now semantics, driven by a fake cycle that blocks on an Event."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from apscheduler.triggers.interval import IntervalTrigger

from ltvsync.config.settings import ScheduleSettings
from ltvsync.core.errors import LockHeldError
from ltvsync.scheduler import (
    CYCLE_JOB_ID,
    FULL_REFRESH_JOB_ID,
    CycleNotStartedError,
    Daemon,
    crontab_trigger,
    cycle_trigger,
)


class FakeCycle:
    """Records every call; blocks inside the cycle (after the run row exists) until released."""

    def __init__(self, *, block: bool = True, fail_before_start: BaseException | None = None) -> None:
        self.release = threading.Event()
        if not block:
            self.release.set()
        self.entered = threading.Event()
        self.calls: list[tuple[str, int]] = []
        self.concurrent = 0
        self.max_concurrent = 0
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.fail_before_start = fail_before_start

    def __call__(self, trigger: str, on_started: Callable[[int], None]) -> int:
        if self.fail_before_start is not None:
            raise self.fail_before_start
        with self._lock:
            run_id = next(self._ids)
            self.calls.append((trigger, run_id))
            self.concurrent += 1
            self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            on_started(run_id)
            self.entered.set()
            assert self.release.wait(10), "test never released the cycle"
            return run_id
        finally:
            with self._lock:
                self.concurrent -= 1


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    made: list[Daemon] = []
    yield made
    for daemon in made:
        daemon.shutdown(timeout=5)


def _wait_until(predicate: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_sync_now_during_a_running_cycle_joins_it(daemons: list[Daemon]) -> None:
    cycle = FakeCycle()
    daemon = Daemon(cycle, ScheduleSettings(enabled=False))
    daemons.append(daemon)
    daemon.start()

    first = daemon.submit_cycle("manual")
    second = daemon.submit_cycle("manual")
    third = daemon.request_cycle("manual")

    assert first.joined is False
    assert second.joined is True
    assert second.run_id == first.run_id == third
    assert daemon.status().cycle_running is True
    assert daemon.status().current_run_id == first.run_id
    cycle.release.set()
    _wait_until(lambda: not daemon.status().cycle_running)
    assert cycle.calls == [("manual", first.run_id)]
    assert daemon.status().last_run_id == first.run_id

    # The guard is released afterwards: the next request starts a new run.
    again = daemon.submit_cycle("manual")
    assert again.joined is False and again.run_id != first.run_id


def test_scheduled_cycles_fire_and_never_overlap_a_manual_one(daemons: list[Daemon]) -> None:
    cycle = FakeCycle(block=False)
    daemon = Daemon(
        cycle,
        ScheduleSettings(enabled=True, misfire_grace_seconds=5),
        trigger=IntervalTrigger(seconds=0.2, timezone=UTC),
    )
    daemons.append(daemon)
    daemon.start()
    assert {job.id for job in daemon.status().jobs} == {CYCLE_JOB_ID, FULL_REFRESH_JOB_ID}
    _wait_until(lambda: sum(1 for trigger, _ in cycle.calls if trigger == "schedule") >= 2)

    # Hold a manual cycle open across several ticks: scheduled runs must skip, not overlap.
    cycle.release.clear()
    ticket = daemon.submit_cycle("manual")
    count_during = len(cycle.calls)
    time.sleep(0.7)
    assert len(cycle.calls) == count_during
    assert cycle.max_concurrent == 1
    cycle.release.set()
    _wait_until(lambda: len(cycle.calls) > count_during)
    assert ("manual", ticket.run_id) in cycle.calls


def test_run_cycle_runs_inline_for_the_cli(daemons: list[Daemon]) -> None:
    cycle = FakeCycle(block=False)
    daemon = Daemon(cycle, ScheduleSettings(enabled=False))
    daemons.append(daemon)
    assert daemon.run_cycle("full_refresh") == 1
    assert cycle.calls == [("full_refresh", 1)]


def test_a_cycle_that_cannot_start_is_reported_not_hung(daemons: list[Daemon]) -> None:
    ended: list[tuple[int | None, BaseException | None]] = []
    cycle = FakeCycle(fail_before_start=LockHeldError("another ltvsync process holds the lock"))
    daemon = Daemon(cycle, ScheduleSettings(enabled=False), on_cycle_end=lambda r, e: ended.append((r, e)))
    daemons.append(daemon)
    with pytest.raises(CycleNotStartedError, match="LockHeldError"):
        daemon.submit_cycle("manual", timeout=5)
    _wait_until(lambda: len(ended) == 1)
    assert ended[0][0] is None and isinstance(ended[0][1], LockHeldError)
    # Another replica holding the lock is routine, not an error to show on the status page.
    assert daemon.status().last_error is None


def test_a_cycle_that_raises_is_recorded_as_the_last_error(daemons: list[Daemon]) -> None:
    daemon = Daemon(FakeCycle(fail_before_start=RuntimeError("db gone")), ScheduleSettings(enabled=False))
    daemons.append(daemon)
    assert daemon.run_cycle("manual") is None
    assert daemon.status().last_error == "RuntimeError: db gone"


def test_interval_schedule_runs_once_at_start_up_cron_does_not(daemons: list[Daemon]) -> None:
    cycle = FakeCycle(block=False)
    daemon = Daemon(cycle, ScheduleSettings(enabled=True, interval_minutes=600))
    daemons.append(daemon)
    daemon.start()
    _wait_until(lambda: cycle.calls == [("schedule", 1)])
    jobs = {job.id: job.next_run_at for job in daemon.status().jobs}
    next_cycle = jobs[CYCLE_JOB_ID]
    assert next_cycle is not None and next_cycle > datetime.now(UTC) + timedelta(minutes=590)

    cron_cycle = FakeCycle(block=False)
    cron_daemon = Daemon(cron_cycle, ScheduleSettings(enabled=True, cron="0 0 1 1 *"))
    daemons.append(cron_daemon)
    cron_daemon.start()
    time.sleep(0.3)
    assert cron_cycle.calls == []


def test_shutdown_raises_stop_flag_and_waits_for_the_running_cycle(daemons: list[Daemon]) -> None:
    cycle = FakeCycle()
    daemon = Daemon(cycle, ScheduleSettings(enabled=True, cron="0 0 1 1 *"))
    daemon.start()
    daemon.submit_cycle("manual")
    assert daemon.shutdown(timeout=0.2) is False  # still blocked: bounded, not forever
    assert daemon.stop_event.is_set()
    threading.Timer(0.1, cycle.release.set).start()
    assert daemon.shutdown(timeout=5) is True
    with pytest.raises(CycleNotStartedError, match="shutting down"):
        daemon.submit_cycle("manual")
    assert cycle.calls == [("manual", 1)]


def test_cycle_end_hook_failure_does_not_break_the_daemon(daemons: list[Daemon]) -> None:
    def broken_hook(run_id: int | None, error: BaseException | None) -> None:
        raise RuntimeError("webhook down")

    daemon = Daemon(FakeCycle(block=False), ScheduleSettings(enabled=False), on_cycle_end=broken_hook)
    daemons.append(daemon)
    assert daemon.run_cycle("manual") == 1
    assert daemon.run_cycle("manual") == 2


def test_crontab_weekdays_keep_crontab_numbering() -> None:
    # "0 3 * * 1" is Monday 03:00 in crontab; APScheduler 3.x alone would read 1 as Tuesday.
    trigger = crontab_trigger("0 3 * * 1")
    after = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)  # a Friday
    fire = trigger.get_next_fire_time(None, after)
    assert fire == datetime(2026, 12, 7, 3, 0, tzinfo=UTC)
    assert fire.strftime("%A") == "Monday"
    sunday = crontab_trigger("30 1 * * 0").get_next_fire_time(None, after)
    assert sunday is not None and sunday.strftime("%A %H:%M") == "Sunday 01:30"
    weekend = crontab_trigger("0 0 * * 6-7")
    fires = [weekend.get_next_fire_time(None, after)]
    assert fires[0] is not None and fires[0].strftime("%A") == "Saturday"


def test_bad_cron_is_refused() -> None:
    with pytest.raises(ValueError):
        crontab_trigger("0 3 * *")
    with pytest.raises(ValueError):
        crontab_trigger("0 3 * * 9")


def test_cycle_trigger_prefers_cron_over_interval() -> None:
    after = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    by_cron = cycle_trigger(ScheduleSettings(cron="15 * * * *")).get_next_fire_time(None, after)
    assert by_cron == datetime(2026, 12, 4, 12, 15, tzinfo=UTC)
    interval = cycle_trigger(ScheduleSettings(interval_minutes=7))
    assert isinstance(interval, IntervalTrigger) and interval.interval.total_seconds() == 420
