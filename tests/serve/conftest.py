"""The Serve tier: real Ray Serve with the real router, gate, clean-room, planner and comparison
deployments, and the FakeEngine behind the engine deployment (seconds, no model). Every test here is
marked ``serve``; ``serve_url``/``app_config`` are the fake app's, so a test reads the same in both tiers."""

from __future__ import annotations

from typing import Any

import pytest

APP = "rmn-fake"


@pytest.fixture(scope="session")
def serve_url(fake_url: str) -> str:
    return fake_url


@pytest.fixture(scope="session")
def app_config(fake_config: Any) -> Any:
    return fake_config


@pytest.fixture(scope="session")
def registry(fake_registry: dict[str, Any]) -> Any:
    """A test-side handle on the Serve tier's registry (directory or S3, as parametrised)."""
    return fake_registry["registry"]
