"""One sync cycle: pull every source → resolve identities → compute LTV, tags, cohorts → push.

The pipeline receives its sources and destinations as objects (built from configuration by the
CLI or the scheduler), so the core knows no vendor.  The cycle holds the single-runner lock
(Postgres advisory lock / SQLite file lock) for its whole duration, records a ``sync_run`` row
when it starts and its report when it ends, and never lets one failing stream or destination
stop the others: their errors are in the report, and the next cycle is the outer retry.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ltvsync.config.settings import Settings
from ltvsync.core.compute import ComputeReport, compute_ltv
from ltvsync.core.currency import CurrencyTable
from ltvsync.core.errors import ConfigError, LockHeldError, LtvsyncError
from ltvsync.core.lock import cycle_lock
from ltvsync.core.pull import SourceLike, StreamReport, pull_source
from ltvsync.core.push import (
    Desired,
    DestinationLike,
    DestinationReport,
    ItemFactory,
    execute_push,
    plan_push,
)
from ltvsync.core.store import Store

log = logging.getLogger(__name__)

STAGES = ("pull", "compute", "push")


class PushTarget:
    """A destination plus how the pipeline gets its desired values and builds its items."""

    def __init__(
        self,
        destination: DestinationLike,
        desired: Callable[[Any], list[Desired]],
        make_item: ItemFactory,
        *,
        edit_policy: str = "overwrite",
        check: Callable[[], None] | None = None,
        bulk_threshold: Callable[[int], bool] | None = None,
    ) -> None:
        self.destination = destination
        self.desired = desired
        self.make_item = make_item
        self.edit_policy = edit_policy
        self.check = check
        self.bulk_threshold = bulk_threshold

    @property
    def name(self) -> str:
        return self.destination.name


@dataclass
class CycleOptions:
    stages: tuple[str, ...] = STAGES
    sources: tuple[str, ...] | None = None  # None: every enabled source
    full_refresh: bool = False
    dry_run: bool = False
    retry_failed: bool = False
    as_of: datetime | None = None
    refit_model: bool = False  # the weekly full refresh refits; other cycles re-score


@dataclass
class SyncReport:
    run_id: int
    trigger: str
    status: str = "running"
    started_at: str = ""
    finished_at: str | None = None
    seconds: float = 0.0
    streams: list[dict[str, Any]] = field(default_factory=list)
    identities: dict[str, Any] = field(default_factory=dict)
    compute: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, Any] = field(default_factory=dict)
    cohorts: dict[str, Any] = field(default_factory=dict)
    destinations: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """The headline numbers kept in the run row's ``counts``."""
        return {
            "records": sum(int(s.get("records", 0)) for s in self.streams),
            "rejections": sum(int(s.get("rejections", 0)) for s in self.streams),
            "pull_api_calls": sum(int(s.get("api_calls", 0)) for s in self.streams),
            "customers": int(self.compute.get("customers", 0) or 0),
            "pushed": sum(int(d.get("ok", 0)) for d in self.destinations),
            "push_failed": sum(int(d.get("failed", 0)) for d in self.destinations),
            "push_api_calls": sum(int(d.get("api_calls", 0)) for d in self.destinations),
        }

    def as_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["counts"] = self.counts()
        return data


# Extra compute steps (tags, cohorts) register here so this module does not depend on them.
ComputeHook = Callable[[Store, Any, Settings, datetime, "SyncReport"], None]


@dataclass
class Cycle:
    """Everything one cycle needs, assembled by a face (CLI, scheduler) from configuration."""

    settings: Settings
    store: Store
    sources: Sequence[SourceLike] = ()
    targets: Sequence[PushTarget] = ()
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    compute_hooks: Sequence[ComputeHook] = ()
    secrets: Iterable[str] = ()
    # Sources and destinations whose check() passed: checked once per process, not per cycle,
    # so a steady-state cycle spends no API calls on probes.
    checked: set[str] = field(default_factory=set)

    def check_once(self, name: str, check: Callable[[], None] | None) -> None:
        if check is None or name in self.checked:
            return
        check()
        self.checked.add(name)

    def redact(self, message: str) -> str:
        for secret in self.secrets:
            if secret and len(secret) >= 4:
                message = message.replace(secret, "********")
        return message


def run_cycle(
    cycle: Cycle,
    *,
    trigger: str = "manual",
    options: CycleOptions | None = None,
    stop: threading.Event | None = None,
    on_started: Callable[[int], None] | None = None,
    progress: Callable[[str, Any], None] | None = None,
    lock: bool = True,
) -> SyncReport:
    """Run one cycle under the single-runner lock and return (and store) its report."""
    opts = options or CycleOptions()
    store = cycle.store
    if lock:
        try:
            with cycle_lock(store):
                return _run_locked(cycle, trigger, opts, stop, on_started, progress)
        except LockHeldError:
            raise LockHeldError(
                "another ltvsync cycle is running on this store; wait for it or use `ltvsync sync-now`"
            ) from None
    return _run_locked(cycle, trigger, opts, stop, on_started, progress)


def _run_locked(
    cycle: Cycle,
    trigger: str,
    opts: CycleOptions,
    stop: threading.Event | None,
    on_started: Callable[[int], None] | None,
    progress: Callable[[str, Any], None] | None,
) -> SyncReport:
    store = cycle.store
    started = time.monotonic()
    run_id = store.start_run(trigger)
    report = SyncReport(run_id, trigger, started_at=cycle.clock().isoformat())
    if on_started is not None:
        on_started(run_id)
    as_of = opts.as_of or end_of_day(cycle.clock())
    try:
        if "pull" in opts.stages:
            _pull(cycle, opts, report, run_id, stop, progress)
        stopped = stop is not None and stop.is_set()
        if "compute" in opts.stages and not stopped:
            refit = opts.refit_model or opts.full_refresh or trigger == "full_refresh"
            _compute(cycle, report, as_of, progress, refit=refit)
        if "push" in opts.stages and not stopped and not (stop is not None and stop.is_set()):
            _push(cycle, opts, report, stop, progress)
        report.status = _status(report, stop)
    except Exception as exc:  # the run row must always be closed, with a secret-free reason
        report.status = "failed"
        report.errors.append(cycle.redact(f"{type(exc).__name__}: {exc}"))
        log.exception("cycle %d failed", run_id)
    report.seconds = round(time.monotonic() - started, 3)
    report.finished_at = cycle.clock().isoformat()
    error = "; ".join(report.errors) or None
    store.finish_run(run_id, report.status, report.counts(), report.as_dict(), error)
    return report


def end_of_day(moment: datetime) -> datetime:
    """The end of ``moment``'s UTC day: the default ``as_of`` of a computation.

    Values computed at a day's granularity stay identical between cycles of the same day when no
    data changed, so an unchanged customer costs no push; a purchase made today still counts.
    """
    day = moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day + timedelta(days=1)


def _status(report: SyncReport, stop: threading.Event | None) -> str:
    if stop is not None and stop.is_set():
        return "stopped"
    failed_streams = any(s.get("status") == "failed" for s in report.streams)
    failed_push = any(d.get("error") or d.get("failed") for d in report.destinations)
    if report.errors or failed_streams or failed_push:
        return "partial"
    return "ok"


def _pull(
    cycle: Cycle,
    opts: CycleOptions,
    report: SyncReport,
    run_id: int,
    stop: threading.Event | None,
    progress: Callable[[str, Any], None] | None,
) -> None:
    ltv = cycle.settings.ltv
    fx = CurrencyTable.from_floats(ltv.base_currency, ltv.fx_rates)
    for source in cycle.sources:
        if opts.sources and source.name not in opts.sources:
            continue
        check = getattr(source, "check", None)
        try:
            cycle.check_once(f"source:{source.name}", check if callable(check) else None)
        except (ConfigError, LtvsyncError) as exc:
            report.streams.append(
                StreamReport(source.name, "*", status="failed", error=cycle.redact(str(exc))).as_dict()
            )
            report.errors.append(cycle.redact(f"{source.name}: {exc}"))
            continue

        def _progress(rep: StreamReport) -> None:
            if progress is not None:
                progress("pull", rep)

        reports = pull_source(
            cycle.store,
            source,
            fx=fx,
            run_id=run_id,
            full_refresh=opts.full_refresh,
            stop=stop,
            progress=_progress,
            redact=cycle.redact,
        )
        report.streams.extend(r.as_dict() for r in reports)
        if stop is not None and stop.is_set():
            break


def _compute(
    cycle: Cycle,
    report: SyncReport,
    as_of: datetime,
    progress: Callable[[str, Any], None] | None,
    *,
    refit: bool = False,
) -> None:
    from ltvsync.core.identity import resolve_identities  # identity is the compute stage's first step

    store = cycle.store
    with store.transaction() as conn:
        ident = resolve_identities(store, conn)
    report.identities = _as_dict(ident)
    if progress is not None:
        progress("identities", report.identities)
    with store.transaction() as conn:
        result: ComputeReport = compute_ltv(store, conn, cycle.settings.ltv, as_of, refit=refit)
    report.compute = result.as_dict()
    if progress is not None:
        progress("compute", report.compute)
    for hook in cycle.compute_hooks:
        with store.transaction() as conn:
            hook(store, conn, cycle.settings, as_of, report)


def _push(
    cycle: Cycle,
    opts: CycleOptions,
    report: SyncReport,
    stop: threading.Event | None,
    progress: Callable[[str, Any], None] | None,
) -> None:
    store = cycle.store
    now = cycle.clock()
    for target in cycle.targets:
        dest_report = DestinationReport(target.name, dry_run=opts.dry_run)
        try:
            cycle.check_once(f"destination:{target.name}", target.check)
            with store.engine.connect() as conn:
                desired = target.desired(conn)
                state = store.get_push_state(conn, target.name)
            plan = plan_push(
                target.name,
                desired,
                state,
                now=now,
                edit_policy=target.edit_policy,
                make_item=target.make_item,
                report=dest_report,
                retry_failed=opts.retry_failed,
            )
            if not opts.dry_run and plan.items:
                use_bulk = bool(target.bulk_threshold and target.bulk_threshold(len(plan.items)))

                def _progress(rep: DestinationReport) -> None:
                    if progress is not None:
                        progress("push", rep)

                execute_push(
                    store,
                    target.destination,
                    plan,
                    state,
                    dest_report,
                    now=now,
                    stop=stop,
                    use_bulk=use_bulk,
                    progress=_progress,
                )
        except LtvsyncError as exc:
            dest_report.error = cycle.redact(f"{type(exc).__name__}: {exc}")
            report.errors.append(f"{target.name}: {dest_report.error}")
        report.destinations.append(dest_report.as_dict(max_changes=None if opts.dry_run else 200))


def _as_dict(value: object) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    if is_dataclass(value) and not isinstance(value, type):
        return dict(asdict(value))
    return {"value": str(value)}
