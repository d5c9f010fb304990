"""The Ray Serve ingress deployment that serves the gateway app (bound by :func:`serving.app.build_app`)."""

from __future__ import annotations

from typing import Any

from ray import serve

from serving.config import AppConfig
from serving.gateway.app import api
from serving.gateway.state import Gateway
from serving.node import node_name


@serve.ingress(api)
class Router:
    """One router replica: the gateway app over the engine, clean-room and comparison handles."""

    def __init__(self, engine: Any, config: AppConfig, cleanroom: Any = None, comparison: Any = None) -> None:
        self.gateway = Gateway(config, engine, cleanroom, comparison, node=node_name())
