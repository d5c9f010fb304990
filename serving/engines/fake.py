"""A deterministic stand-in for vLLM, for the fast test tiers (passed to :func:`serving.app.build_app` as ``engine_cls``).

No model and no tokenizer: words stand for tokens. The answer to a request is ``max_tokens`` words
picked by sha256 of (model name, prompt), so different adapters give different text and the same
request always the same text. It speaks the engine protocol exactly as :class:`VLLMEngine` does: OpenAI
bodies and SSE chunks, usage, ``stream_options.include_usage``, 400 for malformed requests and for
prompts past ``max_model_len``, 404 for an adapter that is not loaded, ``response_format`` json_schema
answered by a JSON object that matches the schema's enums and required keys. Adapters are added and
removed like vLLM's (the PEFT directory must exist and hold ``adapter_config.json``).

Faults for tests: ``token_delay_s`` paces the words (deadlines, overload); a prompt that
contains ``FAKE_FAIL`` makes :meth:`handle` raise after the head, as a crashing engine would; ``FAKE_BREAK``
makes a stream raise after its first chunk (a failure mid-stream); ``FAKE_LOST`` raises Ray's
``ActorUnavailableError`` before anything is sent, as a replica that is draining or unreachable does (the router
retries such a request once on another replica).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from federation.errors import InvalidRequest
from serving.engines.config import EngineConfig, ModelConfig
from serving.engines.protocol import Kind
from serving.errors import Relayed, error_items
from serving.replies import Body, EngineItem, Head

FAKE_FAIL = "FAKE_FAIL"
FAKE_BREAK = "FAKE_BREAK"
FAKE_LOST = "FAKE_LOST"
_WORDS = (
    "ad",
    "shelf",
    "brand",
    "promo",
    "basket",
    "coupon",
    "aisle",
    "sale",
    "cart",
    "store",
    "price",
    "deal",
)


def _words(seed: str, n: int) -> list[str]:
    out: list[str] = []
    counter = 0
    while len(out) < n:
        digest = hashlib.sha256(f"{seed}\x00{counter}".encode()).digest()
        out.extend(_WORDS[b % len(_WORDS)] for b in digest)
        counter += 1
    return out[:n]


def _prompt_text(kind: Kind, body: dict[str, Any]) -> str | None:
    """The prompt as text, or None when the body has no valid prompt/messages."""
    if kind == "completion":
        prompt = body.get("prompt")
        return prompt if isinstance(prompt, str) else None
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    parts = []
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            return None
        content = m.get("content")
        parts.append(f"{m['role']}: {content if isinstance(content, str) else json.dumps(content)}")
    return "\n".join(parts)


def _from_schema(schema: dict[str, Any], words: list[str]) -> Any:
    """A value matching a (simple) JSON schema: enums take their first value, strings the words."""
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        return {k: _from_schema(props.get(k, {}), words) for k in schema.get("required", list(props))}
    if kind == "array":
        return [_from_schema(schema.get("items", {}), words)]
    if kind in ("integer", "number"):
        return 0
    if kind == "boolean":
        return False
    text = " ".join(words)
    return text[: schema["maxLength"]] if "maxLength" in schema else text


class FakeEngine:
    """Implements :class:`serving.engines.protocol.Engine` without a model (see the module docstring)."""

    def __init__(self, model: ModelConfig, engine: EngineConfig, token_delay_s: float = 0.0) -> None:
        self._served = model.served_name
        self._max_len = engine.max_model_len or 2048
        self._delay = token_delay_s
        self._adapters: dict[str, str] = {}
        self._alive = False

    async def start(self) -> None:
        """Nothing to load."""
        self._alive = True

    def loaded_adapters(self) -> list[str]:
        """Adapter names added so far (and not removed)."""
        return sorted(self._adapters)

    async def add_adapter(self, lora_name: str, path: str) -> None:
        """Register ``lora_name`` if ``path`` is a PEFT directory; RuntimeError otherwise."""
        if not (Path(path) / "adapter_config.json").is_file():
            raise RuntimeError(f"loading adapter {lora_name!r} failed: no adapter_config.json in {path}")
        self._adapters.setdefault(lora_name, path)

    async def remove_adapter(self, lora_name: str) -> None:
        """Forget ``lora_name``."""
        self._adapters.pop(lora_name, None)

    def _check(self, kind: Kind, body: dict[str, Any]) -> tuple[list[EngineItem], str, int]:
        """(error items or [], prompt text, max_tokens)."""
        model = body.get("model")
        if model != self._served and model not in self._adapters:
            # vLLM's own answer for an unknown model (status and type are vLLM's, relayed as they are)
            return error_items(Relayed(f"The model `{model}` does not exist.", 404, "NotFoundError")), "", 0
        prompt = _prompt_text(kind, body)
        if prompt is None:
            field = "prompt" if kind == "completion" else "messages"
            return (
                error_items(InvalidRequest(f"invalid request: {field}: a non-empty {field} is required")),
                "",
                0,
            )
        max_tokens = body.get("max_tokens", 16)
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            return error_items(InvalidRequest("invalid request: max_tokens: must be an integer >= 1")), "", 0
        temperature = body.get("temperature", 1.0)
        if not isinstance(temperature, int | float) or isinstance(temperature, bool) or temperature < 0:
            return error_items(InvalidRequest("invalid request: temperature: must be a number >= 0")), "", 0
        prompt_tokens = len(prompt.split())
        if prompt_tokens + max_tokens > self._max_len:
            message = (
                f"This model's maximum context length is {self._max_len} tokens. However, you requested "
                f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in "
                "the completion)."
            )
            return error_items(InvalidRequest(message)), "", 0
        return [], prompt, max_tokens

    async def handle(self, kind: Kind, body: dict[str, Any]) -> AsyncIterator[EngineItem]:
        """Answer one request (protocol of :class:`serving.engines.protocol.Engine`)."""
        errors, prompt, max_tokens = self._check(kind, body)
        if errors:
            for item in errors:
                yield item
            return
        if FAKE_LOST in prompt:
            from ray.exceptions import ActorUnavailableError

            raise ActorUnavailableError("fake engine replica unavailable (FAKE_LOST in the prompt)", None)
        model = str(body["model"])
        words = _words(f"{model}\x00{prompt}", max_tokens)
        fmt = body.get("response_format") or {}
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema") or {}
            words = json.dumps(_from_schema(schema, words[:8]), separators=(",", ":")).split(" ")
        rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
        created = int(time.time())
        usage = {
            "prompt_tokens": len(prompt.split()),
            "completion_tokens": len(words),
            "total_tokens": len(prompt.split()) + len(words),
        }
        obj = "chat.completion" if kind == "chat" else "text_completion"
        if not body.get("stream"):
            yield Head(200, False)
            if FAKE_FAIL in prompt:
                raise RuntimeError("fake engine failure (FAKE_FAIL in the prompt)")
            await asyncio.sleep(self._delay * len(words))
            text = " ".join(words)
            choice: dict[str, Any] = (
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
                if kind == "chat"
                else {"index": 0, "text": text, "finish_reason": "length"}
            )
            out = {
                "id": rid,
                "object": obj,
                "created": created,
                "model": model,
                "choices": [choice],
                "usage": usage,
            }
            yield Body(out)
            return
        yield Head(200, True)
        if FAKE_FAIL in prompt:
            raise RuntimeError("fake engine failure (FAKE_FAIL in the prompt)")
        head = {"id": rid, "created": created, "model": model}
        async for chunk in self._chunks(kind, words, prompt, head, usage if _wants_usage(body) else None):
            yield chunk

    async def _chunks(
        self, kind: Kind, words: list[str], prompt: str, head: dict[str, Any], usage: dict[str, int] | None
    ) -> AsyncIterator[str]:
        """The SSE chunks of a streamed answer (``usage``: the final usage-only chunk, when asked for)."""
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
        for i, word in enumerate(words):
            await asyncio.sleep(self._delay)
            if i == 1 and FAKE_BREAK in prompt:
                raise RuntimeError("fake engine failure mid-stream (FAKE_BREAK in the prompt)")
            piece = word if i == 0 else f" {word}"
            last = i == len(words) - 1
            if kind == "chat":
                delta: dict[str, Any] = {"content": piece} if i else {"role": "assistant", "content": piece}
                choice = {"index": 0, "delta": delta, "finish_reason": "length" if last else None}
            else:
                choice = {"index": 0, "text": piece, "finish_reason": "length" if last else None}
            yield f"data: {json.dumps({**head, 'object': obj, 'choices': [choice]}, separators=(',', ':'))}\n\n"
        if usage is not None:
            tail = {**head, "object": obj, "choices": [], "usage": usage}
            yield f"data: {json.dumps(tail, separators=(',', ':'))}\n\n"
        yield "data: [DONE]\n\n"

    async def numerics(self) -> dict[str, Any]:
        """No model, no LoRA arithmetic."""
        return {"device": "fake", "cpu_lora": None}

    async def check_health(self) -> None:
        """Healthy until shut down."""
        if not self._alive:
            raise RuntimeError("fake engine is not running")

    def shutdown(self) -> None:
        """Stop answering health checks."""
        self._alive = False


def _wants_usage(body: dict[str, Any]) -> bool:
    return bool((body.get("stream_options") or {}).get("include_usage"))
