from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from ltvsync.server.app import create_app

from .fakes import FakeDaemon, FakeQueries

TOKEN = "s3cret-test-token"


@pytest.fixture
def queries() -> FakeQueries:
    return FakeQueries()


@pytest.fixture
def daemon(queries: FakeQueries) -> FakeDaemon:
    return FakeDaemon(queries, finish_after=None)


@pytest.fixture
def app(daemon: FakeDaemon, queries: FakeQueries) -> FastAPI:
    return create_app(daemon, queries, TOKEN)


@pytest.fixture
def client(app: FastAPI) -> TestClient:
    return TestClient(app)


@pytest.fixture
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}
