"""RFM summary: definitions on hand-made logs, agreement with a plain-Python reference, edge cases."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest

from ltvsync.core.rfm import group_rows, rfm_summary

END = datetime(2024, 3, 31, 23, 0, tzinfo=UTC)


def at(day: int, hour: int = 12) -> datetime:
    return datetime(2024, 1, 1, hour, tzinfo=UTC) + timedelta(days=day)


def reference(ids, timestamps, amounts, end: datetime, unit_days: float) -> dict:
    """The definitions, one customer at a time."""
    per_day: dict[object, dict[object, float]] = defaultdict(lambda: defaultdict(float))
    for cid, ts, amount in zip(ids, timestamps, amounts, strict=True):
        if ts <= end:
            per_day[cid][ts.astimezone(UTC).date()] += amount
    out = {}
    for cid, days in per_day.items():
        ordered = sorted(days)
        first, last = ordered[0], ordered[-1]
        freq = len(ordered) - 1
        repeat = [days[d] for d in ordered[1:]]
        out[cid] = (
            freq,
            (last - first).days / unit_days,
            (end.date() - first).days / unit_days,
            sum(repeat) / freq if freq else 0.0,
        )
    return out


def as_dict(summary) -> dict:
    return {
        cid: (f, r, t, m)
        for cid, f, r, t, m in zip(
            summary.customer_ids.tolist(),
            summary.frequency,
            summary.recency,
            summary.T,
            summary.monetary_value,
            strict=True,
        )
    }


def test_hand_made_log() -> None:
    ids = ["a", "a", "a", "a", "b", "c", "c"]
    times = [at(0), at(0, 18), at(14), at(28), at(10), at(7), at(200)]
    amounts = [10.0, 5.0, 20.0, 40.0, 99.0, 12.0, 1000.0]
    s = rfm_summary(ids, times, amounts, END)
    got = as_dict(s)
    # a: three distinct days (the two day-0 purchases are one transaction), repeat mean (20+40)/2.
    assert got["a"] == pytest.approx((2.0, 4.0, (90 - 0) / 7, 30.0))
    # b: a single purchase: no repeat, monetary 0.
    assert got["b"] == pytest.approx((0.0, 0.0, 80 / 7, 0.0))
    # c: the day-200 purchase is after the observation end and ignored.
    assert got["c"] == pytest.approx((0.0, 0.0, 83 / 7, 0.0))
    assert s.unit == "week" and len(s) == 3


def test_day_unit() -> None:
    s = rfm_summary([1, 1, 2], [at(0), at(3), at(5)], [1.0, 2.0, 3.0], END, unit="day")
    got = as_dict(s)
    assert got[1] == pytest.approx((1.0, 3.0, 90.0, 2.0))
    assert got[2] == pytest.approx((0.0, 0.0, 85.0, 0.0))


def test_agrees_with_plain_python_reference() -> None:
    rng = np.random.default_rng(0)
    n = 5000
    ids = rng.integers(0, 400, n)
    offsets = rng.uniform(0, 120 * 86400, n)
    times = [datetime(2024, 1, 1, tzinfo=UTC) + timedelta(seconds=float(s)) for s in offsets]
    amounts = np.round(rng.gamma(2.0, 20.0, n), 2)
    s = rfm_summary(ids, times, amounts, END)
    want = reference(ids.tolist(), times, amounts.tolist(), END, 7.0)
    got = as_dict(s)
    assert got.keys() == want.keys()
    for cid, values in want.items():
        assert got[cid] == pytest.approx(values, rel=1e-12, abs=1e-9)


def test_numpy_datetimes_equal_python_datetimes() -> None:
    times = [at(0), at(2, 23), at(9), at(9, 1)]
    as_np = np.array([t.replace(tzinfo=None) for t in times], dtype="datetime64[us]")
    a = rfm_summary([1, 1, 2, 2], times, [1.0, 2.0, 3.0, 4.0], END)
    b = rfm_summary(np.array([1, 1, 2, 2]), as_np, np.array([1.0, 2.0, 3.0, 4.0]), END)
    assert as_dict(a) == as_dict(b)


def test_other_time_zones_are_converted_to_utc_days() -> None:
    # 01:30 on 2 January at UTC+2 is 23:30 on 1 January UTC: the same UTC day as the first purchase.
    local = datetime(2024, 1, 2, 1, 30, tzinfo=timezone(timedelta(hours=2)))
    s = rfm_summary([1, 1, 1], [at(0, 8), local, at(3)], [1.0, 2.0, 4.0], END)
    assert s.frequency[0] == 1.0 and s.recency[0] == pytest.approx(3 / 7)
    assert s.monetary_value[0] == pytest.approx(4.0)


def test_refund_is_netted_within_its_day() -> None:
    s = rfm_summary([1, 1, 1], [at(0), at(5), at(5, 20)], [10.0, 30.0, -5.0], END)
    assert s.monetary_value[0] == pytest.approx(25.0)


@pytest.mark.parametrize(
    ("ids", "times", "amounts", "end", "message"),
    [
        ([1], [datetime(2024, 1, 1)], [1.0], END, "naive"),
        ([1], [at(0)], [1.0], datetime(2024, 3, 31), "observation_end"),
        ([1, 2], [at(0)], [1.0], END, "length"),
        ([1], [at(0)], [float("nan")], END, "finite"),
    ],
)
def test_caller_bugs_raise_value_error(ids, times, amounts, end, message) -> None:
    with pytest.raises(ValueError, match=message):
        rfm_summary(ids, times, amounts, end)


def test_unknown_unit_raises() -> None:
    with pytest.raises(ValueError, match="unit"):
        rfm_summary([1], [at(0)], [1.0], END, unit="month")  # type: ignore[arg-type]


def test_empty_and_all_after_end() -> None:
    assert len(rfm_summary([], [], [], END)) == 0
    assert len(rfm_summary([1], [at(200)], [1.0], END)) == 0


def test_group_rows_counts_duplicates() -> None:
    (x, y), w = group_rows(np.array([1.0, 2.0, 1.0, 1.0]), np.array([5.0, 5.0, 5.0, 6.0]))
    assert list(zip(x, y, w, strict=True)) == [(1.0, 5.0, 2.0), (1.0, 6.0, 1.0), (2.0, 5.0, 1.0)]


@pytest.mark.parametrize(
    "ids",
    [
        pytest.param([-5, -5, 7], id="negative-ints"),
        pytest.param([10**12, 10**12, 3], id="large-ints"),
        pytest.param(["x", "x", "y"], id="strings"),
    ],
)
def test_any_id_type_is_grouped(ids: list[object]) -> None:
    s = rfm_summary(ids, [at(0), at(7), at(3)], [1.0, 2.0, 3.0], END)
    got = as_dict(s)
    assert got[ids[0]] == pytest.approx((1.0, 1.0, 90 / 7, 2.0))
    assert got[ids[2]] == pytest.approx((0.0, 0.0, 87 / 7, 0.0))


def test_microsecond_boundary_at_observation_end() -> None:
    end = datetime(2024, 3, 31, 12, 0, 0, 500_000, tzinfo=UTC)
    on_time = end
    late = end + timedelta(microseconds=1)
    s = rfm_summary([1, 1, 1], [at(0), on_time, late], [1.0, 2.0, 4.0], end)
    assert s.frequency[0] == 1.0 and s.monetary_value[0] == 2.0
