"""Fake deployment handles for the gateway tier: the same calls the gateway makes on Serve's handles
(``options(...)``, ``method.remote(...)``, async iteration, ``cancel()``), answered in-process."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from serving.config import AppConfig
from serving.engines.fake import FakeEngine
from serving.replies import EngineItem, Head

Fault = Callable[[int, str, dict[str, Any]], BaseException | None]
"""(call number, multiplexed model id, body) -> an exception the call raises before its first item, or None."""


class FakeCall:
    """A streaming handle call: an async iterator over the engine's items, cancellable."""

    def __init__(
        self, items: AsyncIterator[EngineItem], fault: BaseException | None, fault_after_s: float = 0.0
    ) -> None:
        self._items, self._fault, self._fault_after_s = items, fault, fault_after_s
        self.cancelled = False

    def __aiter__(self) -> FakeCall:
        return self

    async def __anext__(self) -> EngineItem:
        if self._fault is not None:
            await asyncio.sleep(self._fault_after_s)  # Ray takes a while to tell a lost replica
            raise self._fault
        return await self._items.__anext__()

    def cancel(self) -> None:
        self.cancelled = True


class _Remote:
    def __init__(self, fn: Callable[..., Any]) -> None:
        self.remote = fn


class FakeEngineHandle:
    """The engine deployment: :class:`FakeEngine` behind ``options(multiplexed_model_id=...)``, with the
    replica and adapter stamped on the head; ``fault`` makes chosen calls fail as Ray would."""

    def __init__(
        self,
        config: AppConfig,
        fault: Fault | None = None,
        replica: str = "fake-replica",
        token_delay_s: float = 0.0,
        fault_after_s: float = 0.0,
    ) -> None:
        self.engine = FakeEngine(config.model, config.engine, token_delay_s)
        self.fault = fault
        self.fault_after_s = fault_after_s
        self.replica = replica
        self.calls: list[tuple[str, dict[str, Any]]] = []  # (model id, body) per generate call
        self.options_calls: list[str] = []
        self.open: list[FakeCall] = []
        self._adapter_dir = Path(tempfile.mkdtemp(prefix="fake-adapter-"))
        (self._adapter_dir / "adapter_config.json").write_text("{}")
        self.stats = _Remote(self._stats)
        self.register_adapter = _Remote(self._register)

    def options(self, stream: bool = False, multiplexed_model_id: str = "") -> Any:
        self.options_calls.append(multiplexed_model_id)
        return _Bound(self, multiplexed_model_id)

    async def _stats(self) -> dict[str, Any]:
        return {"replica": self.replica}

    async def _register(self, files: dict[str, bytes], fields: dict[str, Any]) -> Any:
        raise NotImplementedError("the gateway tier does not register adapters")

    def generate(self, lora_name: str, kind: str, body: dict[str, Any]) -> FakeCall:
        self.calls.append((lora_name, body))
        fault = self.fault(len(self.calls), lora_name, body) if self.fault else None
        return FakeCall(self._items(lora_name, kind, body), fault, self.fault_after_s)

    async def _items(self, lora_name: str, kind: str, body: dict[str, Any]) -> AsyncIterator[EngineItem]:
        entered = time.monotonic()
        if lora_name:
            await self.engine.add_adapter(lora_name, str(self._adapter_dir))
            body = {**body, "model": lora_name}
        async for item in self.engine.handle(kind, body):  # type: ignore[arg-type]
            if isinstance(item, Head):
                item = item.at(self.replica, lora_name or None, engine_s=time.monotonic() - entered)
            yield item


class _Bound:
    def __init__(self, handle: FakeEngineHandle, lora_name: str) -> None:
        self.generate = _Remote(lambda kind, body: self._call(handle, lora_name, kind, body))

    @staticmethod
    def _call(handle: FakeEngineHandle, lora_name: str, kind: str, body: dict[str, Any]) -> FakeCall:
        call = handle.generate(lora_name, kind, body)
        handle.open.append(call)
        return call


class FakeUsage:
    """The usage counter without Ray: counts in memory."""

    def __init__(self) -> None:
        self.counted: list[tuple[str, str]] = []

    def count(self, versions: list[tuple[str, str]]) -> None:
        self.counted += versions

    async def read(self, adapter_ids: list[str]) -> dict[str, dict[str, Any]]:
        return {}
