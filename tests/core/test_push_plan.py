"""The push stage's decisions, without any destination: what changed, what waits, what is protected."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ltvsync.core.push import (
    Desired,
    DestinationReport,
    FieldValue,
    backoff,
    edited_fields,
    plan_push,
    values_hash,
)
from ltvsync.core.store import PushStateRow

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)


def item(cid: int, target: str, values: Mapping[str, FieldValue], previous: Any) -> tuple[Any, ...]:
    return (cid, target, dict(values), previous)


def plan(desired: list[Desired], state: dict[int, PushStateRow], policy: str = "skip", **kw: Any) -> Any:
    report = DestinationReport("dest")
    result = plan_push(
        "dest", desired, state, now=NOW, edit_policy=policy, make_item=item, report=report, **kw
    )
    return result, report


def pushed(cid: int, values: Mapping[str, FieldValue], targets: tuple[str, ...] = ("t",)) -> PushStateRow:
    return PushStateRow("dest", cid, values_hash(values, targets), dict(values), NOW - timedelta(days=1))


def test_hash_ignores_the_volatile_timestamp_and_key_order_but_not_values_or_targets() -> None:
    a = values_hash({"ltv": 1.0, "tags": "x", "updated": "2026-01-01T00:00:00+00:00"}, ["t"])
    b = values_hash({"updated": "2026-02-01T00:00:00+00:00", "tags": "x", "ltv": 1.0}, ["t"])
    assert a == b
    assert a != values_hash({"ltv": 1.01, "tags": "x"}, ["t"])
    assert a != values_hash({"ltv": 1.0, "tags": "x"}, ["t", "u"])


def test_unchanged_customers_cost_nothing_and_changed_ones_are_planned() -> None:
    same = Desired(1, ("a",), {"ltv": 10.0}, "one@x")
    moved = Desired(2, ("b",), {"ltv": 20.0}, "two@x")
    new = Desired(3, ("c",), {"ltv": 5.0}, "three@x")
    state = {1: pushed(1, {"ltv": 10.0}, ("a",)), 2: pushed(2, {"ltv": 19.0}, ("b",))}
    result, report = plan([same, moved, new], state)
    assert [i[0] for i in result.items] == [2, 3]
    assert report.unchanged == 1 and report.planned == 2
    assert {(c.customer, c.field, c.old, c.new) for c in result.changes} == {
        ("two@x", "ltv", 19.0, 20.0),
        ("three@x", "ltv", None, 5.0),
    }


def test_a_failed_customer_waits_out_its_backoff_unless_retry_is_forced() -> None:
    want = Desired(1, ("a",), {"ltv": 10.0}, "one@x")
    failed = PushStateRow("dest", 1, None, None, None, "X: locked", 1, NOW + timedelta(minutes=1))
    result, report = plan([want], {1: failed})
    assert result.items == [] and report.deferred == 1
    forced, _ = plan([want], {1: failed}, retry_failed=True)
    assert len(forced.items) == 1
    due = PushStateRow("dest", 1, None, None, None, "X: locked", 1, NOW - timedelta(seconds=1))
    assert len(plan([want], {1: due})[0].items) == 1


def test_backoff_grows_and_is_capped() -> None:
    waits = [backoff(n) for n in range(1, 20)]
    assert waits == sorted(waits)
    assert waits[0] == timedelta(minutes=2) and waits[-1] == timedelta(hours=24)


def test_edit_detection_compares_what_we_wrote_with_what_is_there() -> None:
    assert edited_fields({"ltv": 10.0, "tags": "a;b"}, {"ltv": 10.001, "tags": "b;a"}) == []
    assert edited_fields({"ltv": 10.0}, {"ltv": 99.0}) == ["ltv"]
    assert edited_fields(None, {"ltv": 99.0}) == []  # never pushed: nothing of ours to protect
    assert edited_fields({"ltv": 10.0}, None) == []  # destination not read back


@pytest.mark.parametrize(
    ("policy", "planned", "sent_fields"),
    [("skip", 0, None), ("flag", 1, {"p_alive"}), ("overwrite", 1, {"ltv", "p_alive"})],
)
def test_edit_policies(policy: str, planned: int, sent_fields: set[str] | None) -> None:
    last = {"ltv": 10.0, "p_alive": 0.5}
    want = Desired(1, ("a",), {"ltv": 12.0, "p_alive": 0.4}, "one@x", remote={"ltv": 99.0, "p_alive": 0.5})
    result, report = plan([want], {1: pushed(1, last, ("a",))}, policy)
    assert len(result.items) == planned
    assert len(report.edits) == 1 and report.edits[0]["fields"] == ["ltv"]
    if sent_fields is not None:
        assert set(result.items[0][2]) == sent_fields


def test_a_customer_with_two_contacts_gets_one_item_per_contact() -> None:
    want = Desired(1, ("a", "b"), {"ltv": 3.0}, "one@x")
    result, _ = plan([want], {})
    assert [i[1] for i in result.items] == ["a", "b"]
    assert result.owners == [want, want]
