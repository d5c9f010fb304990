"""The engine seam: what the engine deployment needs of an inference engine.

Two implementations: :class:`serving.engines.vllm_engine.VLLMEngine` (vLLM ``AsyncLLM`` and vLLM's own
OpenAI layer) and :class:`serving.engines.fake.FakeEngine` (deterministic text, no model: the fast Serve
test tier). :func:`serving.engines.create_engine` makes vLLM's unless an ``engine_cls`` is given.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal, Protocol

from serving.replies import EngineItem

Kind = Literal["chat", "completion"]


class Engine(Protocol):
    """An OpenAI-speaking engine with runtime LoRA add/remove."""

    async def start(self) -> None:
        """Load the model; afterwards requests are served."""
        ...

    def loaded_adapters(self) -> list[str]:
        """Names of the adapters registered with the engine."""
        ...

    async def add_adapter(self, lora_name: str, path: str) -> None:
        """Load the PEFT directory ``path`` as ``lora_name`` (idempotent); RuntimeError when it fails."""
        ...

    async def remove_adapter(self, lora_name: str) -> None:
        """Forget ``lora_name`` (no-op when absent)."""
        ...

    def handle(self, kind: Kind, body: dict[str, object]) -> AsyncIterator[EngineItem]:
        """Answer one OpenAI request: a :class:`~serving.replies.Head`, then one
        :class:`~serving.replies.Body` or SSE chunks (``str``) ending with ``data: [DONE]``. Invalid
        requests are answered (4xx head + error body), never raised."""
        ...

    async def numerics(self) -> dict[str, Any]:
        """How the engine applies LoRA and what it claims about it (``cpu_lora``: the CPU wrapper's verdicts
        per layer shape, None elsewhere)."""
        ...

    async def check_health(self) -> None:
        """Raise when the engine can no longer serve (Serve then replaces the replica)."""
        ...

    def shutdown(self) -> None:
        """Release the engine's processes and memory."""
        ...
