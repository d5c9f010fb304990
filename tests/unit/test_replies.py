"""How engine answers are read (:func:`serving.replies.whole`), on the FakeEngine: the same helper the GPU test
reads vLLM's answers with."""

from __future__ import annotations

import asyncio

import pytest

from serving.replies import Body, Head, whole
from tests.conftest import fake_engine


def test_whole_reads_a_non_streaming_answer_and_refuses_anything_else() -> None:
    from serving.config import EngineConfig, ModelConfig

    engine = fake_engine()(ModelConfig(path="/nonexistent"), EngineConfig())

    async def run() -> None:
        await engine.start()
        head, body = await whole(
            engine.handle("completion", {"model": "base", "prompt": "coffee", "max_tokens": 4})
        )
        assert head.status == 200 and body["choices"][0]["text"]
        stream = engine.handle(
            "completion", {"model": "base", "prompt": "coffee", "max_tokens": 4, "stream": True}
        )
        with pytest.raises(ValueError, match="expected a Head then one Body"):
            await whole(stream)

        async def items(*xs):  # type: ignore[no-untyped-def]
            for x in xs:
                yield x

        with pytest.raises(ValueError, match=r"got \['Body', 'Head'\]"):
            await whole(items(Body({}), Head(200, False)))

    asyncio.run(run())
