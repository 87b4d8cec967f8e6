"""RFM summary of a transaction log: per customer frequency, recency, age ``T`` and monetary value.

This is the input of the BG/NBD and Gamma-Gamma models (Fader, Hardie & Lee 2005, section 2;
Fader & Hardie 2013), computed with the conventions of the CDNOW data sets the papers use:
purchases on the same UTC day are one transaction (amounts summed), ``frequency`` counts REPEAT
transactions, times are measured from each customer's first transaction. Vectorized with
``np.unique``/``bincount``: no Python loop over rows except converting Python datetimes.

Pure: the observation end is an argument; no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

try:
    import threadpoolctl
except ImportError:  # optional: only makes the model fits faster
    threadpoolctl = None

FloatArray = NDArray[np.float64]
TimeUnit = Literal["week", "day"]

MICROS_PER_DAY = 86_400_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MICROSECOND = timedelta(microseconds=1)
DAYS_PER_UNIT: dict[str, float] = {"week": 7.0, "day": 1.0}
# Integer-valued columns below this bound are factorized by counting instead of sorting.
MAX_COUNTING_VALUE = 10_000_000


def as_float(values: ArrayLike) -> FloatArray:
    """Any array-like as a float64 numpy array (at least one-dimensional)."""
    return np.atleast_1d(np.asarray(values, dtype=np.float64))


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Run the block with BLAS limited to one thread (needs ``threadpoolctl``; no-op without it).

    Why: the fits make thousands of tiny BLAS calls (L-BFGS-B's 4x4 algebra); OpenBLAS wakes its
    thread pool for them, which measured 3x slower for a 1M-customer fit on a busy 2-core host.
    This is a process-wide setting restored on exit, not environment or configuration.
    """
    if threadpoolctl is None:
        yield
        return
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        yield


def factorize(values: FloatArray) -> tuple[FloatArray, NDArray[np.int64]]:
    """Sorted unique values and each value's index into them.

    Small non-negative integers (counts of purchases, the common case) take a counting path,
    which is ~40x faster than the sort ``np.unique`` does.
    """
    if values.size and values.min() >= 0 and values.max() < MAX_COUNTING_VALUE:
        as_int = values.astype(np.int64)
        if np.array_equal(as_int, values):
            present = np.bincount(as_int) > 0
            rank = np.cumsum(present) - 1
            return np.flatnonzero(present).astype(np.float64), rank[as_int]
    unique, inverse = np.unique(values, return_inverse=True)
    return unique, inverse.reshape(-1).astype(np.int64)


def group_rows(*columns: FloatArray) -> tuple[tuple[FloatArray, ...], FloatArray]:
    """Unique rows of equal-length columns (sorted) and how many times each occurs (the weights).

    Model likelihoods only depend on a customer's summary, so fitting on unique rows with weights
    gives the same optimum with far fewer evaluations when histories repeat (day-level data).
    Each column is factorized and the codes packed into one int64 key, so only one integer sort
    remains (twice as fast as ``np.lexsort`` on the float columns); lexsort when codes overflow.
    """
    if columns[0].size == 0:
        return tuple(c.copy() for c in columns), np.zeros(0)
    if len(columns) == 1:
        # One column: a plain sort is enough (no inverse indices needed).
        unique, counts = np.unique(columns[0], return_counts=True)
        return (unique,), counts.astype(np.float64)
    factors = [factorize(c) for c in columns]
    if float(np.prod([float(u.size) for u, _ in factors])) < 2.0**62:
        key = np.zeros(columns[0].size, dtype=np.int64)
        for unique, codes in factors:
            key = key * unique.size + codes
        keys, counts = np.unique(key, return_counts=True)
        decoded: list[FloatArray] = []
        for unique, _ in reversed(factors):
            keys, code = np.divmod(keys, unique.size)
            decoded.append(unique[code])
        return tuple(reversed(decoded)), counts.astype(np.float64)
    order = np.lexsort(columns[::-1])
    ordered = [c[order] for c in columns]
    change = np.zeros(ordered[0].size, dtype=bool)
    change[0] = True
    for col in ordered:
        change[1:] |= col[1:] != col[:-1]
    starts = np.flatnonzero(change)
    counts_ = np.diff(np.append(starts, ordered[0].size)).astype(np.float64)
    return tuple(col[starts] for col in ordered), counts_


@dataclass(frozen=True, slots=True)
class RfmSummary:
    """One entry per customer with at least one purchase on or before the observation end.

    ``frequency``: repeat transactions (distinct purchase days minus one). ``recency``: time of the
    last transaction since the first. ``T``: first transaction to the observation end.
    ``monetary_value``: mean value of the REPEAT transactions (0 when there are none), so the first
    purchase, which the models treat as the start of the relationship, is left out.
    Times are in ``unit`` ("week" = 7 days, fractional; or "day").
    """

    customer_ids: NDArray[np.generic]
    frequency: FloatArray
    recency: FloatArray
    T: FloatArray
    monetary_value: FloatArray
    unit: str

    def __len__(self) -> int:
        return int(self.customer_ids.size)


def _to_epoch_micros(timestamps: Sequence[datetime] | NDArray[np.generic]) -> NDArray[np.int64]:
    """Microseconds since the epoch; datetime64 values are taken as UTC, datetimes must be aware."""
    if isinstance(timestamps, np.ndarray) and np.issubdtype(timestamps.dtype, np.datetime64):
        return timestamps.astype("datetime64[us]").astype(np.int64).reshape(-1)
    out = np.empty(len(timestamps), dtype=np.int64)
    for i, ts in enumerate(timestamps):
        if ts.utcoffset() is None:
            raise ValueError(f"timestamp #{i} is naive; timestamps must be timezone-aware (UTC)")
        out[i] = (ts - EPOCH) // ONE_MICROSECOND
    return out


def _factorize_ids(ids: NDArray[np.generic]) -> tuple[NDArray[np.generic], NDArray[np.int64]]:
    """Sorted unique customer ids and each row's index into them (counting for small int ids)."""
    if (
        np.issubdtype(ids.dtype, np.integer)
        and ids.size
        and ids.min() >= 0
        and ids.max() < MAX_COUNTING_VALUE
    ):
        present = np.bincount(ids.astype(np.int64)) > 0
        rank = np.cumsum(present) - 1
        return np.flatnonzero(present).astype(ids.dtype), rank[ids]
    unique, inverse = np.unique(ids, return_inverse=True)
    return unique, inverse.reshape(-1).astype(np.int64)


def rfm_summary(
    customer_ids: Sequence[object] | NDArray[np.generic],
    timestamps: Sequence[datetime] | NDArray[np.generic],
    amounts: ArrayLike,
    observation_end: datetime,
    unit: TimeUnit = "week",
) -> RfmSummary:
    """Summarize a transaction log per customer (see :class:`RfmSummary` for the definitions).

    ``timestamps`` are timezone-aware datetimes or a numpy ``datetime64`` array read as UTC.
    Transactions after ``observation_end`` are ignored (they belong to a later period); days are
    UTC days and T counts whole days up to the observation end's day. Refunds (negative amounts)
    are netted within their day. Raises ``ValueError`` for mismatched lengths, naive datetimes,
    non-finite amounts or an unknown unit: these are caller bugs, not data to drop silently.
    """
    if unit not in DAYS_PER_UNIT:
        raise ValueError(f"unit must be one of {sorted(DAYS_PER_UNIT)}, got {unit!r}")
    if observation_end.utcoffset() is None:
        raise ValueError("observation_end must be timezone-aware (UTC)")
    ids = np.asarray(customer_ids)
    micros = _to_epoch_micros(timestamps)
    values = np.asarray(amounts, dtype=np.float64).reshape(-1)
    if not (ids.shape[0] == micros.size == values.size):
        raise ValueError(
            f"customer_ids, timestamps and amounts differ in length: {ids.shape[0]}, {micros.size}, "
            f"{values.size}"
        )
    if not np.all(np.isfinite(values)):
        raise ValueError("amounts must be finite numbers")
    end_micros = (observation_end - EPOCH) // ONE_MICROSECOND
    keep = micros <= end_micros
    if not keep.all():
        ids, micros, values = ids[keep], micros[keep], values[keep]
    per_unit = DAYS_PER_UNIT[unit]
    if ids.size == 0:
        empty = np.zeros(0)
        return RfmSummary(ids, empty, empty.copy(), empty.copy(), empty.copy(), unit)

    customers, code = _factorize_ids(ids)
    n = customers.size
    day = micros // MICROS_PER_DAY
    first_day_all = int(day.min())
    span = int(day.max()) - first_day_all + 1
    # One integer key per (customer, day); its sorted unique values are the transactions, in
    # customer then day order. A plain sort (no argsort): amounts are summed with bincount.
    # (Not np.unique: numpy 2.4 uses a hash table there, measured 10x slower at 10M rows.)
    key = np.sort(code * span + (day - first_day_all))
    txn_key = key[np.concatenate(([True], key[1:] != key[:-1]))]
    txn_customer = txn_key // span
    txn_day = txn_key % span + first_day_all
    n_txn = np.bincount(txn_customer, minlength=n)
    last_idx = np.cumsum(n_txn) - 1
    first_idx = last_idx - n_txn + 1
    first_day = txn_day[first_idx]
    frequency = (n_txn - 1).astype(np.float64)
    recency = (txn_day[last_idx] - first_day).astype(np.float64) / per_unit
    end_day = end_micros // MICROS_PER_DAY
    big_t = (end_day - first_day).astype(np.float64) / per_unit
    total = np.bincount(code, weights=values, minlength=n)
    first_amount = np.bincount(code, weights=np.where(day == first_day[code], values, 0.0), minlength=n)
    monetary = np.divide(total - first_amount, frequency, out=np.zeros(n), where=frequency > 0)
    return RfmSummary(customers, frequency, recency, big_t, monetary, unit)
