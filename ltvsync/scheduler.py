"""APScheduler wiring for the daemon: the cycle schedule, the weekly full refresh, and sync-now.

Thin on purpose: the jobs call ``run_scheduled_cycle``, a plain function the CLI can call too.  One
cycle at a time in this process (an in-process guard: sync-now during a cycle *joins* it); across
processes the cycle itself holds ``ltvsync.core.lock.cycle_lock`` (``pipeline.run_cycle`` takes it),
and a held lock surfaces here as ``CycleNotStartedError`` (HTTP 409).

Relies on the APScheduler 3.x user guide (BackgroundScheduler; job options ``max_instances``,
``coalesce``, ``misfire_grace_time``, ``replace_existing``) and on its ``CronTrigger.from_crontab``
warning: 3.x numbers weekdays from Monday = 0 while crontab uses Sunday = 0, so crontab weekday
numbers are translated to names here before they reach APScheduler.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from ltvsync.config.settings import ScheduleSettings
from ltvsync.core.errors import LockHeldError, LtvsyncError

log = logging.getLogger(__name__)

# (trigger, on_started) -> run id.  Runs one whole cycle synchronously and calls on_started(run_id)
# as soon as the run row exists.
CycleFn = Callable[[str, Callable[[int], None]], int]
# Called after every cycle with its run id (None if it never started) and the error it raised.
CycleHook = Callable[[int | None, BaseException | None], None]

CYCLE_JOB_ID = "ltvsync-cycle"
FULL_REFRESH_JOB_ID = "ltvsync-full-refresh"
# How long sync-now waits for a cycle to create its run row before giving up.
START_TIMEOUT_SECONDS = 60.0
_CRON_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")


class CycleNotStartedError(LtvsyncError):
    """A requested cycle ended (or timed out) before its run row existed."""


@dataclass(frozen=True)
class CycleTicket:
    """What sync-now gets back: the run id and whether it joined a cycle already running."""

    run_id: int
    joined: bool


@dataclass(frozen=True)
class JobInfo:
    id: str
    next_run_at: datetime | None


@dataclass(frozen=True)
class DaemonStatus:
    scheduler_running: bool
    cycle_running: bool
    current_run_id: int | None
    current_trigger: str | None
    current_started_at: datetime | None
    last_run_id: int | None
    last_error: str | None
    jobs: tuple[JobInfo, ...]


class _Running:
    """One cycle in flight; the in-process guard holds at most one of these."""

    def __init__(self, trigger: str) -> None:
        self.trigger = trigger
        self.started_at = datetime.now(UTC)
        self.run_id: int | None = None
        self.error: BaseException | None = None
        # Set once the run row exists *or* the cycle ended without one, whichever comes first.
        self.settled = threading.Event()
        self.done = threading.Event()

    def wait_started(self, timeout: float) -> int:
        self.settled.wait(timeout)
        if self.run_id is not None:
            return self.run_id
        reason = f"{self.error.__class__.__name__}: {self.error}" if self.error else "timed out"
        raise CycleNotStartedError(f"the {self.trigger} cycle did not start ({reason})")


def crontab_trigger(expr: str) -> CronTrigger:
    """A CronTrigger from a standard 5-field crontab line, with crontab's weekday numbering."""
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"cron expression {expr!r} must have 5 fields")
    minute, hour, day, month, weekday = fields
    return CronTrigger(
        minute=minute,
        hour=hour,
        day=day,
        month=month,
        day_of_week=_crontab_weekdays(weekday),
        timezone=UTC,
    )


def _crontab_weekdays(field: str) -> str:
    if field in ("*", "?") or any(ch.isalpha() for ch in field):
        return field
    days: set[int] = set()
    for part in field.split(","):
        span, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if span == "*":
            low, high = 0, 6
        elif "-" in span:
            low_text, high_text = span.split("-", 1)
            low, high = int(low_text), int(high_text)
        else:
            low = high = int(span)
        if not (0 <= low <= 7 and 0 <= high <= 7 and low <= high):
            raise ValueError(f"bad crontab weekday field {field!r}")
        days.update(range(low, high + 1, step))
    return ",".join(dict.fromkeys(_CRON_WEEKDAYS[d] for d in sorted(days)))


def cycle_trigger(schedule: ScheduleSettings) -> BaseTrigger:
    """The regular cycle's trigger: ``cron`` if set, else every ``interval_minutes``."""
    if schedule.cron:
        return crontab_trigger(schedule.cron)
    return IntervalTrigger(minutes=schedule.interval_minutes, timezone=UTC)


def run_scheduled_cycle(daemon: Daemon, trigger: str) -> int | None:
    """The job body: run one cycle in this thread unless one is running already.  Returns the run id."""
    return daemon.run_cycle(trigger)


class Daemon:
    """Owns the scheduler, the in-process one-cycle guard and the stop flag the cycle may read."""

    def __init__(
        self,
        cycle: CycleFn,
        schedule: ScheduleSettings,
        *,
        stop_event: threading.Event | None = None,
        on_cycle_end: CycleHook | None = None,
        trigger: BaseTrigger | None = None,
    ) -> None:
        """``trigger`` overrides the cycle trigger built from ``schedule`` (embedding, sub-minute tests)."""
        self._cycle = cycle
        self._schedule = schedule
        self._trigger = trigger
        self._on_cycle_end = on_cycle_end
        self.stop_event = stop_event if stop_event is not None else threading.Event()
        self._scheduler = BackgroundScheduler(timezone=UTC)
        self._guard = threading.Lock()
        self._running: _Running | None = None
        self._last_run_id: int | None = None
        self._last_error: str | None = None

    def start(self) -> None:
        """Register the jobs (when the schedule is enabled) and start the scheduler thread."""
        if self._schedule.enabled:
            options = {
                "max_instances": 1,
                "coalesce": True,
                "misfire_grace_time": self._schedule.misfire_grace_seconds,
                "replace_existing": True,
            }
            trigger = self._trigger or cycle_trigger(self._schedule)
            # An interval schedule also runs once at start-up, so a restart never delays the next
            # sync by a whole interval; a cron schedule keeps to the times the operator chose.
            first: dict[str, datetime] = (
                {"next_run_time": datetime.now(UTC)} if isinstance(trigger, IntervalTrigger) else {}
            )
            self._scheduler.add_job(
                run_scheduled_cycle,
                trigger,
                args=[self, "schedule"],
                id=CYCLE_JOB_ID,
                **options,
                **first,
            )
            self._scheduler.add_job(
                run_scheduled_cycle,
                crontab_trigger(self._schedule.full_refresh_cron),
                args=[self, "full_refresh"],
                id=FULL_REFRESH_JOB_ID,
                **options,
            )
        self._scheduler.start()
        log.info("scheduler started (%d jobs)", len(self._scheduler.get_jobs()))

    def run_cycle(self, trigger: str) -> int | None:
        """Run a cycle in the calling thread; skip (returning the running run's id) if one is in flight."""
        with self._guard:
            running = self._running
            if running is None:
                running = self._claim(trigger)
                mine = True
            else:
                mine = False
        if not mine:
            log.info("%s cycle skipped: run %s is still running", trigger, running.run_id)
            return running.run_id
        self._execute(running)
        return running.run_id

    def submit_cycle(self, trigger: str = "manual", timeout: float = START_TIMEOUT_SECONDS) -> CycleTicket:
        """Start a cycle in a worker thread, or join the running one; return once its run row exists."""
        with self._guard:
            running = self._running
            joined = running is not None
            if running is None:
                if self.stop_event.is_set():
                    raise CycleNotStartedError("the daemon is shutting down")
                running = self._claim(trigger)
                worker = threading.Thread(
                    target=self._execute, args=(running,), name=f"ltvsync-{trigger}", daemon=True
                )
                worker.start()
        return CycleTicket(running.wait_started(timeout), joined)

    def request_cycle(self, trigger: str = "manual") -> int:
        """Sync-now: the run id of the cycle started (or already running)."""
        return self.submit_cycle(trigger).run_id

    def status(self) -> DaemonStatus:
        running = self._running
        jobs = tuple(
            JobInfo(job.id, getattr(job, "next_run_time", None)) for job in self._scheduler.get_jobs()
        )
        return DaemonStatus(
            scheduler_running=self._scheduler.running,
            cycle_running=running is not None,
            current_run_id=running.run_id if running else None,
            current_trigger=running.trigger if running else None,
            current_started_at=running.started_at if running else None,
            last_run_id=self._last_run_id,
            last_error=self._last_error,
            jobs=jobs,
        )

    def shutdown(self, timeout: float = 30.0) -> bool:
        """Stop scheduling, raise the stop flag, and wait up to ``timeout`` for the running cycle.

        Returns True if no cycle was left running.
        """
        self.stop_event.set()
        if self._scheduler.running:
            # wait=False: a running job is waited for below, with a bound, instead of forever.
            self._scheduler.shutdown(wait=False)
        running = self._running
        if running is None:
            return True
        finished = running.done.wait(timeout)
        if not finished:
            log.warning("shutdown: run %s still running after %.1fs", running.run_id, timeout)
        return finished

    def _claim(self, trigger: str) -> _Running:
        running = _Running(trigger)
        self._running = running
        return running

    def _execute(self, running: _Running) -> None:
        def on_started(run_id: int) -> None:
            running.run_id = run_id
            running.settled.set()

        try:
            run_id = self._cycle(running.trigger, on_started)
            if running.run_id is None:
                running.run_id = run_id
            self._last_error = None
            log.info("%s cycle finished: run %s", running.trigger, running.run_id)
        except LockHeldError as exc:
            # Another replica on the same store is running the cycle: routine, not a failure.
            running.error = exc
            log.info("%s cycle skipped: %s", running.trigger, exc)
        except Exception as exc:
            running.error = exc
            self._last_error = f"{exc.__class__.__name__}: {exc}"
            log.error("%s cycle failed: %s", running.trigger, self._last_error)
        finally:
            with self._guard:
                self._running = None
            self._last_run_id = running.run_id if running.run_id is not None else self._last_run_id
            running.settled.set()
            running.done.set()
            self._notify(running)

    def _notify(self, running: _Running) -> None:
        if self._on_cycle_end is None:
            return
        try:
            self._on_cycle_end(running.run_id, running.error)
        except Exception:
            # Alerting must never take the scheduler down with it.
            log.exception("cycle-end hook failed")
