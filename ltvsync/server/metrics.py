"""Render ``/metrics`` in the Prometheus text exposition format (version 0.0.4).

Everything is derived from the store on each scrape (runs by status, the last finished run's
counts, cursor lag), so replicas and restarts agree and nothing is kept in process memory.
Relies on the Prometheus "Exposition formats" page: ``# HELP`` / ``# TYPE`` lines, label-value
escaping of backslash, double quote and newline.

Per-stream and per-connector figures come from the last finished run's ``report`` as the pipeline
stores it (``SyncReport.as_dict()``): ``streams`` is a list of ``{source, stream, records,
rejections, api_calls, ...}`` and ``destinations`` a list of ``{destination, api_calls, ...}``.
Entries that do not have that shape are skipped, never fatal.

The endpoint needs the API token; a Prometheus scrape job passes it as a bearer credential::

    - job_name: ltvsync
      authorization: {type: Bearer, credentials_file: /etc/prometheus/ltvsync.token}
      static_configs: [{targets: ["127.0.0.1:8765"]}]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ltvsync.core.status_values import RunView, StreamLag
from ltvsync.scheduler import DaemonStatus

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Sample:
    labels: tuple[tuple[str, str], ...]
    value: float


@dataclass(frozen=True)
class Family:
    name: str
    kind: str  # "counter" | "gauge"
    help: str
    samples: tuple[Sample, ...]


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _format_value(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def render(families: Iterable[Family]) -> str:
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {family.help}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for sample in family.samples:
            labels = ",".join(f'{key}="{escape_label(val)}"' for key, val in sample.labels)
            name = f"{family.name}{{{labels}}}" if labels else family.name
            lines.append(f"{name} {_format_value(sample.value)}")
    return "\n".join(lines) + "\n"


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _entries(report: object, key: str) -> list[Mapping[str, object]]:
    items = report.get(key) if isinstance(report, Mapping) else None
    return [item for item in items if isinstance(item, Mapping)] if isinstance(items, list) else []


def _per_stream(report: object, field: str) -> tuple[Sample, ...]:
    samples = []
    for item in _entries(report, "streams"):
        value = _number(item.get(field))
        if value is not None:
            labels = (("source", str(item.get("source", ""))), ("stream", str(item.get("stream", ""))))
            samples.append(Sample(labels, value))
    return tuple(samples)


def _api_calls(report: object) -> tuple[Sample, ...]:
    totals: dict[str, float] = {}
    for key, name_field in (("streams", "source"), ("destinations", "destination")):
        for item in _entries(report, key):
            value = _number(item.get("api_calls"))
            if value is not None:
                name = str(item.get(name_field, ""))
                totals[name] = totals.get(name, 0.0) + value
    return tuple(Sample((("connector", name),), value) for name, value in sorted(totals.items()))


def collect(
    run_counts: Mapping[str, int],
    last_finished: RunView | None,
    lags: Iterable[StreamLag],
    daemon: DaemonStatus,
) -> list[Family]:
    report = last_finished.report if last_finished is not None else None
    duration = last_finished.duration_seconds if last_finished is not None else None
    return [
        Family(
            "ltvsync_runs_total",
            "counter",
            "Sync runs recorded in the store, by status.",
            tuple(Sample((("status", s),), float(n)) for s, n in sorted(run_counts.items())),
        ),
        Family(
            "ltvsync_last_run_duration_seconds",
            "gauge",
            "Wall-clock duration of the last finished run.",
            (Sample((), duration),) if duration is not None else (),
        ),
        Family(
            "ltvsync_last_run_records_loaded",
            "gauge",
            "Records loaded per stream by the last finished run.",
            _per_stream(report, "records"),
        ),
        Family(
            "ltvsync_last_run_api_calls",
            "gauge",
            "API calls per connector (sources and destinations) made by the last finished run.",
            _api_calls(report),
        ),
        Family(
            "ltvsync_last_run_rejections",
            "gauge",
            "Payloads rejected (quarantined) per stream by the last finished run.",
            _per_stream(report, "rejections"),
        ),
        Family(
            "ltvsync_cursor_lag_seconds",
            "gauge",
            "Age of each stream's cursor (now minus the cursor's timestamp, else its last update).",
            tuple(
                Sample((("connector", lag.connector), ("stream", lag.stream)), lag.lag_seconds)
                for lag in lags
                if lag.lag_seconds is not None
            ),
        ),
        Family(
            "ltvsync_stream_sync_age_seconds",
            "gauge",
            "Seconds since the pipeline last committed each stream's cursor.",
            tuple(
                Sample((("connector", lag.connector), ("stream", lag.stream)), lag.age_seconds)
                for lag in lags
                if lag.age_seconds is not None
            ),
        ),
        Family(
            "ltvsync_cycle_running",
            "gauge",
            "1 while a cycle runs in this process.",
            (Sample((), 1.0 if daemon.cycle_running else 0.0),),
        ),
    ]


def last_finished(runs: Iterable[RunView]) -> RunView | None:
    return next((run for run in runs if run.finished_at is not None), None)
