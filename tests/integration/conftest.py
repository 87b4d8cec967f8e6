"""Fixtures for end-to-end tests: a sandbox world served over loopback and a cycle against it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ltvsync.assemble import build_cycle
from ltvsync.core.pipeline import Cycle
from ltvsync.core.store import Store
from ltvsync.sandbox.http import Knobs
from ltvsync.sandbox.runner import Sandbox
from tests.integration.helpers import FAST_RETRY, sandbox_settings, small_world


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    # Rate-limit windows and "changed in the last minute" exclusions scaled down a thousandfold.
    with Sandbox(world=small_world(), knobs=Knobs(time_scale=0.001, seed=3)) as sb:
        yield sb


@pytest.fixture
def cycle(sandbox: Sandbox, store: Store, store_url: str) -> Cycle:
    return build_cycle(sandbox_settings(sandbox, store_url), store, retry=FAST_RETRY)
