"""The shared HTTP helper: classification table, exception mapping, one retried GET, throttle."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import requests
import responses
from responses.registries import OrderedRegistry

from ltvsync.connectors.http import (
    Throttle,
    error_for_status,
    get_json,
    map_exceptions,
    parse_retry_after,
)
from ltvsync.core.errors import AuthError, ConfigError, LtvsyncError, RecordError, TransientError
from ltvsync.core.retry import RetryPolicy

URL = "http://127.0.0.1:9997/api/thing.json"


@pytest.mark.parametrize(
    ("status", "write", "expected"),
    [
        (429, False, TransientError),
        (500, False, TransientError),
        (503, True, TransientError),
        (599, False, TransientError),
        (401, False, AuthError),
        (403, True, AuthError),
        (404, False, ConfigError),
        (400, False, ConfigError),
        (422, False, ConfigError),
        (400, True, RecordError),
        (422, True, RecordError),
        (418, False, ConfigError),
        (418, True, RecordError),
    ],
)
def test_status_table(status: int, write: bool, expected: type[LtvsyncError]) -> None:
    error = error_for_status(status, what="op", write=write)
    assert type(error) is expected
    assert f"HTTP {status}" in str(error)


def test_transient_carries_retry_after_and_body_excerpt_is_bounded() -> None:
    error = error_for_status(429, what="op", detail="x" * 5000, retry_after=12.0)
    assert isinstance(error, TransientError) and error.retry_after == 12.0
    assert len(str(error)) < 400


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("7", 7.0),
        (" 2.5 ", 2.5),
        ("-3", 0.0),
        ("Fri, 04 Dec 2026 20:00:30 GMT", 30.0),
        ("Fri, 04 Dec 2026 19:59:00 GMT", 0.0),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    now = datetime(2026, 12, 4, 20, 0, 0, tzinfo=UTC)
    assert parse_retry_after(header, now=now) == expected


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (requests.exceptions.ConnectionError("refused"), TransientError),
        (requests.exceptions.ReadTimeout("slow"), TransientError),
        (requests.exceptions.RetryError("too many 429"), TransientError),
        (requests.exceptions.SSLError("bad cert"), ConfigError),
        (requests.exceptions.InvalidURL("nope"), ConfigError),
        (requests.exceptions.MissingSchema("nope"), ConfigError),
    ],
)
def test_map_exceptions_transport(exc: Exception, expected: type[LtvsyncError]) -> None:
    with pytest.raises(expected) as info, map_exceptions("op"):
        raise exc
    assert info.value.__cause__ is exc


def test_map_exceptions_http_error_uses_status_table() -> None:
    response = requests.Response()
    response.status_code = 403
    response._content = b'{"error": "forbidden"}'
    response.headers["Authorization"] = "Bearer leaked?"
    with pytest.raises(AuthError) as info, map_exceptions("op"):
        raise requests.HTTPError("403", response=response)
    assert "forbidden" in str(info.value) and "leaked" not in str(info.value)


def test_map_exceptions_leaves_other_errors_alone() -> None:
    with pytest.raises(KeyError), map_exceptions("op"):
        raise KeyError("x")


@responses.activate(registry=OrderedRegistry, assert_all_requests_are_fired=True)
def test_get_json_retries_transient_then_succeeds_and_counts_attempts() -> None:
    responses.get(URL, status=503)
    responses.get(URL, body=requests.exceptions.ConnectionError("reset"))
    responses.get(URL, status=429, headers={"Retry-After": "0"})
    responses.get(URL, json={"ok": True})
    attempts: list[int] = []
    body = get_json(
        requests.Session(), URL, {"a": 1}, RetryPolicy.no_wait(), before_each=lambda: attempts.append(1)
    )
    assert body == {"ok": True}
    assert len(attempts) == 4


@responses.activate(assert_all_requests_are_fired=True)
def test_get_json_config_errors_are_not_retried_and_hide_query() -> None:
    rsp = responses.get(URL, status=404, json={"error": "RecordNotFound"})
    with pytest.raises(ConfigError) as info:
        get_json(requests.Session(), URL, {"token": "s3cret"}, RetryPolicy.no_wait())
    assert rsp.call_count == 1
    assert "s3cret" not in str(info.value) and "/api/thing.json" in str(info.value)


@responses.activate(assert_all_requests_are_fired=True)
def test_get_json_non_json_body_is_transient() -> None:
    rsp = responses.get(URL, body="<html>proxy error</html>")
    with pytest.raises(TransientError, match="not JSON"):
        get_json(requests.Session(), URL, None, RetryPolicy.no_wait(max_attempts=2))
    assert rsp.call_count == 2


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_throttle_rate_and_burst() -> None:
    clock = Clock()
    throttle = Throttle(5.0, burst=2, clock=clock, sleep=clock.sleep)
    instants = []
    for _ in range(12):
        throttle.acquire()
        instants.append(clock.now)
    # Two immediately (burst), then one every 0.2 s.
    assert instants[:2] == [100.0, 100.0]
    assert instants[2:] == pytest.approx([100.0 + 0.2 * k for k in range(1, 11)])


def test_throttle_refills_while_idle() -> None:
    clock = Clock()
    throttle = Throttle(1.0, clock=clock, sleep=clock.sleep)
    throttle.acquire()
    clock.now += 10  # idle long enough: the next request needs no wait
    before = clock.now
    throttle.acquire()
    assert clock.now == before


def test_throttle_rejects_nonpositive_rate() -> None:
    with pytest.raises(ConfigError):
        Throttle(0)
