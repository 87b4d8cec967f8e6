"""Mixpanel emulator against the unmodified mixpanel-utils 2.2.7 client and raw urllib requests."""

from __future__ import annotations

import base64
import gzip
import json
import math
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import pytest
from mixpanel_utils import MixpanelUtils

from ltvsync.sandbox.http import Knobs
from ltvsync.sandbox.mixpanel import MixpanelEmulator
from ltvsync.sandbox.ratelimit import SlidingWindow
from ltvsync.sandbox.world import World, generate_world

AS_OF = datetime(2025, 6, 1, tzinfo=UTC)
SECRET = "sandbox-secret"


@pytest.fixture(scope="module")
def world() -> World:
    return generate_world(600, seed=5, as_of=AS_OF)


@pytest.fixture
def emulator(world: World) -> Iterator[MixpanelEmulator]:
    emu = MixpanelEmulator(world.mixpanel_events, world.mixpanel_profiles, Knobs(rate_limits=False))
    emu.start()
    yield emu
    emu.stop()


def client_for(emu: MixpanelEmulator, secret: str = SECRET) -> MixpanelUtils:
    client = MixpanelUtils(secret, read_pool_size=3, max_retries=1)
    # API-REFERENCE §2.1: no base-URL parameter; the hosts are instance attributes.
    client.raw_api = f"{emu.base_url}/api"
    client.formatted_api = f"{emu.base_url}/api"
    client.import_api = emu.base_url
    return client


def raw_get(
    emu: MixpanelEmulator, path: str, params: dict[str, str], secret: str = SECRET, **headers: str
) -> Any:
    request = urllib.request.Request(f"{emu.base_url}{path}?{urlencode(params)}")
    request.add_header("Authorization", "Basic " + base64.b64encode(f"{secret}:".encode()).decode())
    for key, value in headers.items():
        request.add_header(key.replace("_", "-"), value)
    return urllib.request.urlopen(request, timeout=10)


def _day(ev: dict[str, Any]) -> str:
    return datetime.fromtimestamp(ev["properties"]["time"], UTC).date().isoformat()


def test_export_returns_exactly_the_events_of_the_inclusive_utc_date_range(
    emulator: MixpanelEmulator, world: World
) -> None:
    got = client_for(emulator).query_export({"from_date": "2025-03-01", "to_date": "2025-03-31"})
    expected = [ev for ev in world.mixpanel_events if "2025-03-01" <= _day(ev) <= "2025-03-31"]
    assert len(expected) > 100
    assert sorted(json.dumps(e, sort_keys=True) for e in got) == sorted(
        json.dumps(e, sort_keys=True) for e in expected
    )
    # Duplicate deliveries are served as-is: exports are not de-duplicated (API-REFERENCE §2.3).
    ids = [e["properties"]["$insert_id"] for e in got]
    assert len(ids) - len(set(ids)) == sum(
        1 for d in world.truth.dirt if d.kind == "duplicate_event" and d.id in set(ids)
    )


def test_single_day_and_event_filter(emulator: MixpanelEmulator, world: World) -> None:
    client = client_for(emulator)
    day = _day(world.mixpanel_events[len(world.mixpanel_events) // 2])
    got = client.query_export({"from_date": day, "to_date": day, "event": ["Login", "Referral"]})
    expected = [e for e in world.mixpanel_events if _day(e) == day and e["event"] in ("Login", "Referral")]
    assert len(got) == len(expected) and {e["event"] for e in got} <= {"Login", "Referral"}
    assert client.query_export({"from_date": "2030-01-01", "to_date": "2030-01-02"}) == []


def test_gzip_only_when_asked(emulator: MixpanelEmulator) -> None:
    params = {"from_date": "2025-01-01", "to_date": "2025-05-31"}
    plain = raw_get(emulator, "/api/2.0/export", params)
    assert plain.headers.get("Content-Encoding") is None
    body = plain.read()
    zipped = raw_get(emulator, "/api/2.0/export", params, Accept_Encoding="gzip")
    assert zipped.headers.get("Content-Encoding") == "gzip"
    assert gzip.decompress(zipped.read()) == body
    via_client = client_for(emulator).query_export(params, add_gzip_header=True)
    assert len(via_client) == len(body.strip().split(b"\n"))


def test_time_in_ms_and_limit(emulator: MixpanelEmulator) -> None:
    params = {"from_date": "2025-01-01", "to_date": "2025-05-31", "limit": "5", "time_in_ms": "true"}
    lines = raw_get(emulator, "/api/2.0/export", params).read().decode().strip().split("\n")
    assert len(lines) == 5
    assert all(json.loads(line)["properties"]["time"] > 10**12 for line in lines)


def test_engage_pages_concurrently_to_every_profile(emulator: MixpanelEmulator, world: World) -> None:
    profiles = client_for(emulator).query_engage({"page_size": 50})
    assert len(profiles) == len(world.mixpanel_profiles)
    assert {p["$distinct_id"] for p in profiles} == {p["$distinct_id"] for p in world.mixpanel_profiles}
    assert emulator.count("engage") == math.ceil(len(world.mixpanel_profiles) / 50)


def test_engage_first_page_carries_paging_fields_and_output_properties(emulator: MixpanelEmulator) -> None:
    first = json.load(raw_get(emulator, "/api/2.0/engage", {"page_size": "10"}))
    assert {"page", "page_size", "session_id", "status", "total", "results"} <= set(first)
    assert first["page"] == 0 and len(first["results"]) == 10
    second = json.load(
        raw_get(
            emulator,
            "/api/2.0/engage",
            {
                "page_size": "10",
                "page": "1",
                "session_id": first["session_id"],
                "output_properties": '["$email"]',
            },
        )
    )
    assert second["total"] == first["total"] and len(second["results"]) == 10
    assert all(set(p["$properties"]) <= {"$email"} for p in second["results"])
    assert {p["$distinct_id"] for p in first["results"]}.isdisjoint(
        p["$distinct_id"] for p in second["results"]
    )


def test_engage_post_form_on_the_documented_query_path(emulator: MixpanelEmulator, world: World) -> None:
    wanted = [p["$distinct_id"] for p in world.mixpanel_profiles[:3]]
    request = urllib.request.Request(
        f"{emulator.base_url}/api/query/engage",
        data=urlencode({"distinct_ids": json.dumps(wanted)}).encode(),
        method="POST",
    )
    request.add_header("Authorization", "Basic " + base64.b64encode(b"svc-user:" + SECRET.encode()).decode())
    page = json.load(urllib.request.urlopen(request, timeout=10))
    assert sorted(p["$distinct_id"] for p in page["results"]) == sorted(wanted)


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/api/2.0/export", {"to_date": "2025-01-01"}, 400),
        ("/api/2.0/export", {"from_date": "2025-02-30", "to_date": "2025-03-01"}, 400),
        ("/api/2.0/export", {"from_date": "2025-03-02", "to_date": "2025-03-01"}, 400),
        ("/api/2.0/export", {"from_date": "2025-03-01", "to_date": "2025-03-01", "event": "Login"}, 400),
        ("/api/2.0/engage", {"session_id": "no-such-session", "page": "1"}, 400),
    ],
)
def test_bad_requests_get_mixpanel_errors(
    emulator: MixpanelEmulator, path: str, params: dict[str, str], status: int
) -> None:
    with pytest.raises(urllib.error.HTTPError) as info:
        raw_get(emulator, path, params)
    assert info.value.code == status
    assert "error" in json.loads(info.value.read())


def test_wrong_secret_is_401_and_the_client_gets_nothing(emulator: MixpanelEmulator) -> None:
    with pytest.raises(urllib.error.HTTPError) as info:
        raw_get(
            emulator, "/api/2.0/export", {"from_date": "2025-01-01", "to_date": "2025-01-02"}, secret="nope"
        )
    assert info.value.code == 401
    # mixpanel-utils 2.2.7 does not raise on 4xx: request() returns None (API-REFERENCE §2.6).
    assert client_for(emulator, "nope").request(f"{emulator.base_url}/api", ["export"], {}) is None


def test_export_rate_limits_per_second_and_per_hour(world: World) -> None:
    # Real windows (1 s, 1 h): a scaled-down 1 s window could expire between requests on a busy machine.
    emu = MixpanelEmulator(world.mixpanel_events[:50], world.mixpanel_profiles, Knobs())
    emu.start()
    params = {"from_date": "2025-01-01", "to_date": "2025-01-01"}
    try:
        statuses = []
        for _ in range(4):
            try:
                statuses.append(raw_get(emu, "/api/2.0/export", params).status)
            except urllib.error.HTTPError as exc:
                statuses.append(exc.code)
                retry_after = float(exc.headers["Retry-After"])
        assert statuses == [200, 200, 200, 429]
        assert 0 < retry_after <= 1.0
        time.sleep(retry_after + 0.02)
        assert raw_get(emu, "/api/2.0/export", params).status == 200
        # The hourly budget (60) is independent of the per-second one.
        emu.export_per_second = SlidingWindow(10**6, 1.0)
        for _ in range(60 - 4):
            raw_get(emu, "/api/2.0/export", params)
        with pytest.raises(urllib.error.HTTPError) as info:
            raw_get(emu, "/api/2.0/export", params)
        assert info.value.code == 429
        emu.knobs.rate_limits = False
        assert raw_get(emu, "/api/2.0/export", params).status == 200
    finally:
        emu.stop()


def test_added_events_are_exported(emulator: MixpanelEmulator) -> None:
    late = {
        "event": "Login",
        "properties": {
            "time": int(datetime(2025, 5, 30, 12, tzinfo=UTC).timestamp()),
            "distinct_id": "u_x",
            "$insert_id": "f" * 32,
        },
    }
    emulator.add_events([late])
    got = client_for(emulator).query_export({"from_date": "2025-05-30", "to_date": "2025-05-30"})
    assert late in got


def test_admin_http_route_adds_events_and_is_exempt_from_faults(world: World) -> None:
    emu = MixpanelEmulator([], [], Knobs(fault_rate=1.0, rate_limits=False))
    emu.start()
    try:
        event = {
            "event": "Login",
            "properties": {"time": 1_740_000_000, "distinct_id": "u_1", "$insert_id": "a" * 32},
        }
        request = urllib.request.Request(
            f"{emu.base_url}/admin/events", data=json.dumps([event]).encode(), method="POST"
        )
        assert json.load(urllib.request.urlopen(request, timeout=10))["added"] == 1
        assert emu.events == [event]
    finally:
        emu.stop()
