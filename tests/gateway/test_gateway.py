"""The gateway without Ray: status codes, error bodies, headers, SSE framing, admission and retry decisions."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from ray.exceptions import ActorDiedError
from ray.serve.exceptions import BackPressureError

from serving.gateway.timing import parse_server_timing
from tests.gateway.conftest import GatewayFactory
from tests.gateway.fakes import FakeEngineHandle
from tests.tenants import ADMIN, auth

MSG = [{"role": "user", "content": "plan a coffee campaign"}]


def chat_body(model: str = "base", **kw: Any) -> dict[str, Any]:
    return {"model": model, "messages": MSG, "max_tokens": 6, "temperature": 0, **kw}


def assert_openai_error(r: Any, status: int, err_type: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["type"] == err_type and err["code"] == status and err["message"]
    return dict(err)


async def test_a_stack_is_resolved_pinned_and_routed_by_its_model_id(gateway_app: GatewayFactory) -> None:
    client, gw, engine = gateway_app()
    r = await client.post("/v1/chat/completions", json=chat_body("base:auto"), headers=auth("brand_x"))
    assert r.status_code == 200, r.text
    assert r.headers["x-rmn-model"].startswith("base:rm@1") and "brand_x@1" in r.headers["x-rmn-model"]
    assert r.headers["x-rmn-replica"] == "fake-replica" and len(r.headers["x-rmn-composite"]) > 8
    assert engine.calls[-1][0] == r.headers["x-rmn-model"]  # routed by the pinned stack as multiplexed id
    assert r.json()["choices"][0]["message"]["content"]
    assert gw.usage.counted  # components counted for usage
    hops = parse_server_timing(r.headers["server-timing"])  # where the time went, each hop inside the next
    assert set(hops) == {"queue", "load", "engine", "call", "router"}, hops
    assert 0 <= hops["engine"] <= hops["call"] <= hops["router"] and hops["router"] > 0, (
        hops
    )  # engine: < 0.05 ms


async def test_refusals_answer_in_openai_shape_with_their_headers(gateway_app: GatewayFactory) -> None:
    client, _, engine = gateway_app()
    r = await client.post("/v1/chat/completions", json=chat_body())
    assert_openai_error(r, 401, "authentication_error")
    assert r.headers["www-authenticate"] == "Bearer"
    r = await client.post("/v1/chat/completions", content=b"{not json", headers=ADMIN)
    assert "not valid JSON" in assert_openai_error(r, 400, "invalid_request_error")["message"]
    r = await client.post("/v1/chat/completions", json=chat_body("other-base"), headers=ADMIN)
    assert_openai_error(r, 404, "not_found_error")
    r = await client.post("/v1/chat/completions", json=chat_body("base:brand_y"), headers=auth("brand_x"))
    assert "brand_y" in assert_openai_error(r, 403, "permission_error")["message"]
    r = await client.post("/v1/chat/completions", json=chat_body("base:no_such"), headers=ADMIN)
    assert_openai_error(r, 404, "not_found_error")
    assert engine.calls == []  # nothing refused reached an engine


async def test_the_rate_limit_answers_429_with_retry_after(gateway_app: GatewayFactory) -> None:
    client, _, _ = gateway_app()
    statuses = []
    for _ in range(3):  # the 'limited' tenant may send 2 a minute
        r = await client.get("/v1/models", headers=auth("limited"))
        statuses.append(r.status_code)
    assert statuses == [200, 200, 429]
    assert_openai_error(r, 429, "rate_limit_error")
    assert int(r.headers["retry-after"]) >= 1


async def test_sse_framing_and_the_usage_chunk(gateway_app: GatewayFactory) -> None:
    client, _, _ = gateway_app()

    async def events(**kw: Any) -> list[str]:
        async with client.stream(
            "POST", "/v1/chat/completions", json=chat_body(stream=True, **kw), headers=ADMIN
        ) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            text = "".join([chunk async for chunk in r.aiter_text()])
        assert text.endswith("data: [DONE]\n\n")
        return [e for e in text.split("\n\n") if e]

    plain = await events()
    assert all(e.startswith("data: ") for e in plain) and not any('"usage"' in e for e in plain)
    with_usage = await events(stream_options={"include_usage": True})
    assert json.loads(with_usage[-2].removeprefix("data: "))["usage"]["completion_tokens"] == 6


async def test_a_stream_that_breaks_ends_with_an_error_event(gateway_app: GatewayFactory) -> None:
    client, _, _ = gateway_app()
    body = chat_body(stream=True, messages=[{"role": "user", "content": "FAKE_BREAK now"}])
    async with client.stream("POST", "/v1/chat/completions", json=body, headers=ADMIN) as r:
        assert r.status_code == 200
        events = [e for e in "".join([c async for c in r.aiter_text()]).split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    err = json.loads(events[-2].removeprefix("data: "))["error"]
    assert err["type"] == "server_error" and "mid-stream" in err["message"]


async def test_a_lost_replica_is_retried_once_then_answered_503(
    gateway_app: GatewayFactory, gateway_config: Any
) -> None:
    lost_first = FakeEngineHandle(gateway_config, fault=lambda n, *_: ActorDiedError() if n == 1 else None)
    client, gw, engine = gateway_app(engine=lost_first)
    r = await client.post("/v1/chat/completions", json=chat_body(), headers=ADMIN)
    assert r.status_code == 200 and len(engine.calls) == 2
    assert engine.calls[1][1]["request_id"].endswith("-retry")
    always_lost = FakeEngineHandle(gateway_config, fault=lambda *_: ActorDiedError())
    client, gw, engine = gateway_app(engine=always_lost)
    r = await client.post("/v1/chat/completions", json=chat_body(), headers=ADMIN)
    assert "was lost" in assert_openai_error(r, 503, "service_unavailable")["message"]
    assert r.headers["retry-after"] == "2" and len(engine.calls) == 2
    assert all(c.cancelled for c in engine.open)
    assert gw.scheduler is not None and gw.scheduler.inflight == 0  # the lease came back


async def test_the_attempt_on_a_lost_replica_is_not_taken_for_the_engines_service_time(
    gateway_app: GatewayFactory, gateway_config: Any
) -> None:
    """Ray tells a lost replica only after a while (0.5 s here, seconds in a cluster); that wait is left out of the
    admission's service-time fit, or one replica's death would stretch every wait estimate and shed healthy
    traffic for a while."""
    slow_loss = FakeEngineHandle(
        gateway_config, fault=lambda n, *_: ActorDiedError() if n == 1 else None, fault_after_s=0.5
    )
    client, gw, engine = gateway_app(engine=slow_loss)
    assert gw.scheduler is not None
    before = gw.scheduler.model.predict(10)
    r = await client.post("/v1/chat/completions", json=chat_body(), headers=ADMIN)
    assert r.status_code == 200 and len(engine.calls) == 2
    assert gw.scheduler.overrun == 1.0, gw.scheduler.overrun  # 1.6 when the lost 0.5 s counted
    assert gw.scheduler.model.predict(10) <= before


async def test_a_full_engine_queue_requeues_once_then_answers_503(
    gateway_app: GatewayFactory, gateway_config: Any
) -> None:
    full = FakeEngineHandle(
        gateway_config, fault=lambda *_: BackPressureError(num_queued_requests=1, max_queued_requests=1)
    )
    client, gw, engine = gateway_app(engine=full)
    r = await client.post("/v1/chat/completions", json=chat_body(), headers=ADMIN)
    assert "overloaded" in assert_openai_error(r, 503, "service_unavailable")["message"]
    assert r.headers["retry-after"] == "1" and len(engine.calls) == 2
    assert gw.scheduler is not None and gw.scheduler.inflight == 0


async def test_admission_sheds_at_once_beyond_the_queue(
    gateway_app: GatewayFactory, gateway_config: Any
) -> None:
    """One slot, a queue of one: the third concurrent request is shed with 503 + Retry-After at once."""
    client, _gw, _ = gateway_app(
        admission={"slots": 1, "max_queue": 1},
        engine=FakeEngineHandle(gateway_config, token_delay_s=0.2),
    )
    bodies = [chat_body(max_tokens=4) for _ in range(3)]
    results = await asyncio.gather(
        *[client.post("/v1/chat/completions", json=b, headers=ADMIN) for b in bodies]
    )
    statuses = sorted(r.status_code for r in results)
    assert statuses == [200, 200, 503], [r.text for r in results]
    shed = next(r for r in results if r.status_code == 503)
    assert_openai_error(shed, 503, "service_unavailable")
    assert int(shed.headers["retry-after"]) >= 1


async def test_past_the_deadline_answers_504(gateway_app: GatewayFactory, gateway_config: Any) -> None:
    slow = FakeEngineHandle(gateway_config, token_delay_s=5.0)
    client, _gw, engine = gateway_app(engine=slow, http={"request_timeout_s": 1})
    r = await client.post("/v1/chat/completions", json=chat_body(max_tokens=3), headers=ADMIN)
    assert_openai_error(r, 504, "timeout")
    assert engine.open[0].cancelled


async def test_one_configured_engine_handle_per_model_id(gateway_app: GatewayFactory) -> None:
    client, _, engine = gateway_app()
    for _ in range(5):
        for model in ("base", "base:rm", "base:acme"):
            r = await client.post("/v1/chat/completions", json=chat_body(model), headers=ADMIN)
            assert r.status_code == 200
    assert sorted(engine.options_calls) == ["", "base:acme@1", "base:rm@1"]


async def test_data_routes_validate_bodies_and_say_what_is_not_configured(
    gateway_app: GatewayFactory,
) -> None:
    client, _, _ = gateway_app()
    r = await client.post(
        "/v1/harmonize", json={"fields": ["Customer ID", "Txn-Date"]}, headers=auth("brand_x")
    )
    assert r.status_code == 200 and r.json()["mapping"]
    for body in (
        {"fields": []},
        {"fields": ["a", "a"]},
        {"fields": ["x"], "more": 1},
        {"fields": ["x" * 65]},
    ):
        r = await client.post("/v1/harmonize", json=body, headers=auth("brand_x"))
        assert_openai_error(r, 400, "invalid_request_error")
    r = await client.post("/v1/harmonize", json={"fields": ["a"]})
    assert_openai_error(r, 401, "authentication_error")  # who asks comes before what is asked
    r = await client.post(
        "/v1/governance/check", json={"lines": ["Fresh coffee, every morning."]}, headers=ADMIN
    )
    assert r.status_code == 200 and len(r.json()["verdicts"]) == 1
    r = await client.post("/v1/cleanroom/query", json={}, headers=ADMIN)
    assert_openai_error(r, 404, "not_found_error")  # no clean-room handle on this gateway


async def test_the_chosen_task_and_its_confidence_are_in_the_headers(gateway_app: GatewayFactory) -> None:
    client, _, _ = gateway_app()
    body = {
        **chat_body("base:auto"),
        "messages": [{"role": "user", "content": "Write three taglines for spring"}],
    }
    r = await client.post("/v1/chat/completions", json=body, headers=auth("brand_x"))
    assert r.status_code == 200, r.text
    assert r.headers["x-rmn-task"] == "creative" and 0.6 <= float(r.headers["x-rmn-task-confidence"]) <= 1
    assert "task_creative@1" in r.headers["x-rmn-model"]
    told = {**body, "federation": {"task": "planning"}}
    r = await client.post("/v1/chat/completions", json={**told, "model": "base"}, headers=auth("brand_x"))
    assert r.headers["x-rmn-task"] == "planning" and "x-rmn-task-confidence" not in r.headers
    graph = await client.post("/v1/federation/resolve", json=body, headers=auth("brand_x"))
    assert graph.json()["task"] == "creative" and graph.json()["task_confidence"] >= 0.6


async def test_every_answer_names_its_composition_and_explains_it_when_asked(
    gateway_app: GatewayFactory,
) -> None:
    client, _, _ = gateway_app()
    body = chat_body("base:auto", federation={"task": "planning", "explain": True})
    r = await client.post("/v1/chat/completions", json=body, headers=auth("brand_x"))
    assert r.status_code == 200, r.text
    layers = [x.split("=")[0] for x in r.headers["x-rmn-composition"].split(",")]
    assert layers == ["industry", "retailer", "manufacturer", "task"]
    assert "task=task_planning@1*1" in r.headers["x-rmn-composition"]
    graph = r.json()["rmn_composition"]
    assert graph["composite_id"] == r.headers["x-rmn-composite"] and len(graph["components"]) == 4
    plain = await client.post("/v1/chat/completions", json=chat_body("base:auto"), headers=auth("brand_x"))
    assert "rmn_composition" not in plain.json() and plain.headers["x-rmn-composition"]


class _LostRoom:
    """A clean-room handle whose replica is lost for the first ``lost`` calls, then answers."""

    def __init__(self, lost: int) -> None:
        self.lost, self.calls = lost, 0
        self.query = self

    def remote(self, *args: Any) -> Any:
        from serving.replies import Reply

        self.calls += 1
        lost = self.calls <= self.lost

        async def answer() -> Reply:
            if lost:
                raise ActorDiedError()
            return Reply(200, {"cells": [], "stored_answer": True})

        return answer()


async def test_a_lost_clean_room_replica_is_retried_once_then_answered_503(
    gateway_app: GatewayFactory,
) -> None:
    """A clean-room call that meets a replica Serve has not yet dropped (killed, draining) runs once more on a
    live one; lost twice, the client gets 503 with Retry-After, never a 500."""
    client, gw, _ = gateway_app()
    gw.cleanroom = room = _LostRoom(lost=1)
    body = {"retailer": "shopco", "query": {"metrics": ["revenue"]}}
    r = await client.post("/v1/cleanroom/query", json=body, headers=ADMIN)
    assert r.status_code == 200 and r.json()["stored_answer"] and room.calls == 2, r.text
    gw.cleanroom = room = _LostRoom(lost=5)
    r = await client.post("/v1/cleanroom/query", json=body, headers=ADMIN)
    assert "was lost" in assert_openai_error(r, 503, "service_unavailable")["message"]
    assert r.headers["retry-after"] == "2" and room.calls == 2
