"""The gateway tier: the gateway's FastAPI app over fake deployment handles, in-process (no Ray cluster),
driven through httpx's ASGI transport. Seconds for the whole tier."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway.fakes import FakeEngineHandle, FakeUsage


@pytest.fixture(scope="session")
def gateway_config(tiny_model: Path, registry_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The Serve tier's FakeEngine app config (tests/conftest.py) on the session's directory registry."""
    from tests.conftest import make_app_config

    return make_app_config(tiny_model, registry_root, tmp_path_factory, engine="fake")


GatewayFactory = Callable[..., Any]


@pytest.fixture
async def gateway_app(gateway_config: Any) -> AsyncIterator[GatewayFactory]:
    """``make(**config_updates, engine=FakeEngineHandle | None)`` -> (httpx client, gateway state, engine)."""
    from serving.gateway.app import make_api
    from serving.gateway.state import Gateway

    clients: list[httpx.AsyncClient] = []

    def make(
        engine: FakeEngineHandle | None = None, **updates: Any
    ) -> tuple[httpx.AsyncClient, Gateway, Any]:
        cfg = gateway_config
        for section, values in updates.items():
            cfg = cfg.model_copy(update={section: getattr(cfg, section).model_copy(update=values)})
        engine = engine or FakeEngineHandle(cfg)
        gw = Gateway(cfg, engine, usage=FakeUsage())  # type: ignore[arg-type]
        api = make_api()
        api.state.gateway = gw
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=api), base_url="http://gateway", timeout=30
        )
        clients.append(client)
        return client, gw, engine

    yield make
    for c in clients:
        await c.aclose()
