"""The values the status page, the HTTP API and ``/metrics`` exchange, and pure helpers over them.

Frozen dataclasses (FastAPI serialises them as JSON as they are) plus the parsing and binning that
needs no database: tags as stored in ``customer_metrics.tags``, timestamps inside cursors, and the
LTV histogram.  ``ltvsync.core.status_queries`` fills them from the store.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

DEFAULT_HISTOGRAM_BINS = 20
MAX_HISTOGRAM_BINS = 200
# Bins span [0, this quantile]; the rest goes to an overflow bin so one whale can't flatten the chart.
HISTOGRAM_TOP_QUANTILE = 0.99


@dataclass(frozen=True)
class RunView:
    id: int
    trigger: str
    status: str
    started_at: datetime | None
    finished_at: datetime | None
    duration_seconds: float | None
    counts: Any
    report: Any
    error: str | None


@dataclass(frozen=True)
class StreamLag:
    connector: str
    stream: str
    cursor: str | None
    updated_at: datetime | None
    # Data freshness: now minus the cursor's own timestamp when the cursor holds one, else minus
    # updated_at.  A source with a re-read window (Mixpanel's lag_days) always shows that window.
    lag_seconds: float | None
    lag_basis: str
    # Sync freshness: now minus updated_at, i.e. since the pipeline last committed this stream.
    # Alerts use this one: it grows only when syncing stalls, not when the source is quiet.
    age_seconds: float | None = None


@dataclass(frozen=True)
class CustomerView:
    id: int
    email: str | None
    name: str | None
    customer_since: datetime | None
    first_purchase_at: datetime | None
    metrics: dict[str, Any] | None
    tags: tuple[str, ...]


@dataclass(frozen=True)
class HistogramBin:
    low: float
    high: float
    count: int


@dataclass(frozen=True)
class LtvHistogram:
    total: int
    bins: tuple[HistogramBin, ...]
    # Customers above the last bin's upper edge.
    overflow: int
    overflow_max: float | None


@dataclass(frozen=True)
class TagPoint:
    day: date
    count: int


@dataclass(frozen=True)
class TagSeries:
    tag: str
    points: tuple[TagPoint, ...]


@dataclass(frozen=True)
class CohortRow:
    cohort: str
    size: int
    # retention[k]: share of the cohort that purchased in month cohort + k.
    retention: tuple[float, ...]
    avg_ltv: float | None
    revenue_per_customer: float | None


@dataclass(frozen=True)
class CohortMatrix:
    period: str
    rows: tuple[CohortRow, ...]


def parse_tags(raw: str | None) -> tuple[str, ...]:
    """Tags as stored in ``customer_metrics.tags``: a JSON list or a comma-separated string."""
    if not raw:
        return ()
    text = raw.strip()
    if text.startswith("["):
        try:
            loaded = json.loads(text)
        except ValueError:
            loaded = None
        if isinstance(loaded, list):
            return tuple(str(tag) for tag in loaded if str(tag).strip())
    return tuple(part.strip() for part in text.replace(";", ",").split(",") if part.strip())


def cursor_time(cursor: str | None) -> datetime | None:
    """The timestamp a cursor holds, if any: ISO text, epoch seconds, or a JSON object containing one."""
    if not cursor:
        return None
    text = cursor.strip()
    if text.startswith("{"):
        try:
            loaded = json.loads(text)
        except ValueError:
            return None
        if isinstance(loaded, dict):
            for value in loaded.values():
                found = cursor_time(str(value)) if isinstance(value, str | int | float) else None
                if found is not None:
                    return found
        return None
    if text.isdigit() and len(text) in (10, 13):
        seconds = int(text) / (1000 if len(text) == 13 else 1)
        return datetime.fromtimestamp(seconds, UTC)
    # Keyset cursors pair the timestamp with a tie-breaker id ("<timestamp>|<Id>", Salesforce).
    text = text.split("|", 1)[0]
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def histogram(values: list[float], bins: int = DEFAULT_HISTOGRAM_BINS) -> LtvHistogram:
    """Equal-width bins from min(0, lowest) to the top quantile; values above go to ``overflow``."""
    bins = min(max(1, bins), MAX_HISTOGRAM_BINS)
    finite = sorted(v for v in values if math.isfinite(v))
    if not finite:
        return LtvHistogram(0, (), 0, None)
    low = min(0.0, finite[0])
    top = finite[min(len(finite) - 1, int(HISTOGRAM_TOP_QUANTILE * len(finite)))]
    high = top if top > low else low + 1.0
    width = (high - low) / bins
    counts = [0] * bins
    overflow = 0
    for v in finite:
        if v > high:
            overflow += 1
        else:
            counts[min(bins - 1, int((v - low) / width))] += 1
    edges = [HistogramBin(low + i * width, low + (i + 1) * width, counts[i]) for i in range(bins)]
    return LtvHistogram(len(finite), tuple(edges), overflow, finite[-1] if overflow else None)
