"""Vendor id and timestamp formats for the synthetic world, vectorized where it matters.

Salesforce ids: 15 case-sensitive base-62 characters (3-character key prefix such as ``003`` for
Contact) plus a 3-character case-safe suffix (Salesforce Help "What is a Salesforce ID?"; the suffix
encodes which of each 5 characters are upper case).  Salesforce datetimes are
``YYYY-MM-DDTHH:MM:SS.000+0000`` (REST API JSON); Zendesk uses ISO-8601 with ``Z``; Mixpanel engage
``$created`` is ``YYYY-MM-DDTHH:MM:SS`` without a zone.
"""

from __future__ import annotations

import numpy as np

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SUFFIX = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
# Characters 4-9 of real ids encode the pod and a reserved zero run; a fixed value looks realistic.
_POD = "8d0000"


def _base62(value: int, width: int) -> str:
    out = []
    for _ in range(width):
        value, rem = divmod(value, 62)
        out.append(BASE62[rem])
    return "".join(reversed(out))


def case_safe_suffix(id15: str) -> str:
    """The 3-character suffix that turns a 15-character id into the case-insensitive 18-character id."""
    suffix = []
    for chunk in range(3):
        bits = sum(1 << i for i, ch in enumerate(id15[chunk * 5 : chunk * 5 + 5]) if "A" <= ch <= "Z")
        suffix.append(_SUFFIX[bits])
    return "".join(suffix)


def sf_id(prefix: str, number: int) -> str:
    """An 18-character Salesforce id with key ``prefix`` ("001", "003", "006") and serial ``number``."""
    id15 = prefix + _POD + _base62(number, 6)
    return id15 + case_safe_suffix(id15)


def sf_ids(prefix: str, count: int, start: int = 0) -> list[str]:
    """``[sf_id(prefix, start), ..., sf_id(prefix, start + count - 1)]`` computed in bulk with numpy."""
    numbers = np.arange(start, start + count, dtype=np.int64)
    digits = np.empty((count, 6), dtype=np.int64)
    for col in range(5, -1, -1):
        numbers, digits[:, col] = np.divmod(numbers, 62)
    chars = np.array(list(BASE62))[digits]
    head = prefix + _POD
    upper = (digits >= 10) & (digits < 36)
    # Chunks are id15[0:5], [5:10], [10:15]; the serial digits sit at positions 9..14.
    fixed = [
        sum(1 << i for i, ch in enumerate(head[c * 5 : c * 5 + 5]) if "A" <= ch <= "Z") for c in range(2)
    ]
    bits1 = fixed[1] | (upper[:, 0].astype(np.int64) << 4)
    bits2 = (upper[:, 1:].astype(np.int64) << np.arange(5)).sum(axis=1)
    suffix_chars = np.array(list(_SUFFIX))
    suffix = np.stack(
        [np.full(count, _SUFFIX[fixed[0]]), suffix_chars[bits1], suffix_chars[bits2]], axis=1
    ).astype("<U1")
    serials = np.ascontiguousarray(chars).view("<U6").ravel()
    tails = np.ascontiguousarray(suffix).view("<U3").ravel()
    return [head + str(a) + str(b) for a, b in zip(serials, tails, strict=True)]


def _seconds_strings(epoch: np.ndarray) -> list[str]:
    stamps = np.asarray(epoch, dtype=np.float64).astype("int64").astype("datetime64[s]")
    return list(np.datetime_as_string(stamps, unit="s"))


def sf_datetimes(epoch: np.ndarray) -> list[str]:
    """Epoch seconds → Salesforce REST datetimes (UTC, milliseconds always ``.000``)."""
    return [s + ".000+0000" for s in _seconds_strings(epoch)]


def iso_seconds(epoch: np.ndarray, zulu: bool = True) -> list[str]:
    """Epoch seconds → ``YYYY-MM-DDTHH:MM:SSZ`` (Zendesk) or without ``Z`` (Mixpanel ``$created``)."""
    tail = "Z" if zulu else ""
    return [s + tail for s in _seconds_strings(epoch)]


def insert_ids(rng: np.random.Generator, n: int) -> list[str]:
    """UUID-like 32-hex-character Mixpanel ``$insert_id`` values, deterministic for the generator."""
    raw = rng.bytes(16 * n).hex()
    return [raw[i * 32 : i * 32 + 32] for i in range(n)]
