"""Fixtures for end-to-end tests: a sandbox world served over loopback and a cycle against it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from ltvsync.assemble import build_cycle
from ltvsync.config.settings import Settings
from ltvsync.core.pipeline import Cycle
from ltvsync.core.retry import RetryPolicy
from ltvsync.core.store import Store
from ltvsync.sandbox.http import Knobs
from ltvsync.sandbox.runner import Sandbox
from ltvsync.sandbox.world import World, generate_world

# A world fixed in time, so counts derived from it are reproducible.
WORLD_AS_OF = datetime(2026, 11, 1, tzinfo=UTC)
# Retries that honour the sandbox's (scaled-down) Retry-After without slowing the suite.
FAST_RETRY = RetryPolicy(max_attempts=10, initial_wait=0.01, max_wait=0.2, max_retry_after=0.5)


def small_world(n: int = 250, seed: int = 11) -> World:
    return generate_world(n_customers=n, seed=seed, as_of=WORLD_AS_OF)


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    # Rate-limit windows and "changed in the last minute" exclusions scaled down a thousandfold.
    with Sandbox(world=small_world(), knobs=Knobs(time_scale=0.001, seed=3)) as sb:
        yield sb


def sandbox_settings(sb: Sandbox, store_url: str) -> Settings:
    settings = sb.settings(store_url=store_url)
    # The sandbox org has multi-currency on: read each opportunity's CurrencyIsoCode.
    settings.salesforce.currency_field = "CurrencyIsoCode"
    return settings


@pytest.fixture
def cycle(sandbox: Sandbox, store: Store, store_url: str) -> Cycle:
    return build_cycle(sandbox_settings(sandbox, store_url), store, retry=FAST_RETRY)
