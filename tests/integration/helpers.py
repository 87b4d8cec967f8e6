"""Helpers shared by the end-to-end tests (importable, unlike conftest)."""

from __future__ import annotations

from datetime import UTC, datetime

from ltvsync.config.settings import Settings
from ltvsync.core.retry import RetryPolicy
from ltvsync.sandbox.runner import Sandbox
from ltvsync.sandbox.world import World, generate_world

# A world fixed in time, so counts derived from it are reproducible.
WORLD_AS_OF = datetime(2026, 11, 1, tzinfo=UTC)
# Retries that honour the sandbox's (scaled-down) Retry-After without slowing the suite.
FAST_RETRY = RetryPolicy(max_attempts=10, initial_wait=0.01, max_wait=0.2, max_retry_after=0.5)


def small_world(n: int = 250, seed: int = 11) -> World:
    return generate_world(n_customers=n, seed=seed, as_of=WORLD_AS_OF)


def sandbox_settings(sb: Sandbox, store_url: str) -> Settings:
    return sb.settings(store_url=store_url)
