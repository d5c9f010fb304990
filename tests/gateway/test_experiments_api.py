"""Experiments over HTTP (issue #28 item 5): a tenant's experiment assigns requests by unit id, outcomes
reported by request id join the arm, pause/stop behave, and another tenant sees none of it."""

from __future__ import annotations

import json

from tests.gateway.conftest import GatewayFactory
from tests.gateway.test_gateway import assert_openai_error, chat_body
from tests.tenants import auth

SPEC = {
    "id": "tone",
    "arms": [
        {"name": "control", "model": "base:auto", "share": 0.5},
        {"name": "planning", "model": "base:rm+task_planning", "share": 0.5},
    ],
}


async def test_an_experiment_from_definition_to_results(gateway_app: GatewayFactory) -> None:
    client, gw, engine = gateway_app()
    x, y = auth("brand_x"), auth("brand_y")
    r = await client.post("/v1/experiments", json=SPEC, headers=x)
    assert r.status_code == 201, r.text
    assert_openai_error(
        await client.post("/v1/experiments", json=SPEC, headers=x), 409, "invalid_request_error"
    )
    bad = {**SPEC, "id": "bad", "arms": SPEC["arms"][:1]}
    assert_openai_error(
        await client.post("/v1/experiments", json=bad, headers=x), 400, "invalid_request_error"
    )

    arms: dict[str, str] = {}
    served: dict[str, str] = {}
    for i in range(40):
        body = chat_body("experiment:tone", user=f"shopper-{i % 20}")
        rid = f"req-{i}"  # the request id Serve's proxy would put in x-request-id (no proxy in this tier)
        r = await client.post("/v1/chat/completions", json=body, headers={**x, "x-request-id": rid})
        assert r.status_code == 200, r.text
        assert r.headers["x-rmn-experiment"] == "tone"
        arm = r.headers["x-rmn-arm"]
        assert arms.setdefault(f"shopper-{i % 20}", arm) == arm  # the same unit, the same arm
        served[arm] = r.headers["x-rmn-model"]
        if arm == "planning":
            await client.post("/v1/feedback", json={"request_id": rid, "outcome": "click"}, headers=x)
    assert set(arms.values()) == {"control", "planning"}
    assert "task_planning@1" in served["planning"] and engine.calls  # each arm served its own stack
    missing_user = await client.post("/v1/chat/completions", json=chat_body("experiment:tone"), headers=x)
    assert_openai_error(missing_user, 400, "invalid_request_error")

    result = (await client.get("/v1/experiments/tone", headers=x)).json()
    by_arm = {a["name"]: a for a in result["arms"]}
    assert sum(a["requests"] for a in by_arm.values()) == 40
    assert by_arm["planning"]["outcomes"]["click"]["count"] == by_arm["planning"]["requests"] > 0
    assert by_arm["control"]["outcomes"]["click"]["count"] == 0
    assert (
        "p_value" in by_arm["planning"]["outcomes"]["click"]
        and len(by_arm["control"]["outcomes"]["click"]["ci95"]) == 2
    )

    # another tenant: nothing of it exists
    assert_openai_error(await client.get("/v1/experiments/tone", headers=y), 404, "not_found_error")
    assert (await client.get("/v1/experiments", headers=y)).json()["experiments"] == []
    other = await client.post("/v1/chat/completions", json=chat_body("experiment:tone", user="u"), headers=y)
    assert_openai_error(other, 404, "not_found_error")
    assert_openai_error(await client.post("/v1/experiments/tone/stop", headers=y), 404, "not_found_error")

    # paused: everyone gets the control, uncounted; stopped: 410, results stay
    assert (await client.post("/v1/experiments/tone/pause", headers=x)).json()["state"] == "paused"
    r = await client.post(
        "/v1/chat/completions", json=chat_body("experiment:tone", user="shopper-1"), headers=x
    )
    assert r.headers["x-rmn-arm"] == "control"
    assert (
        sum(a["requests"] for a in (await client.get("/v1/experiments/tone", headers=x)).json()["arms"]) == 40
    )
    assert (await client.post("/v1/experiments/tone/stop", headers=x)).json()["state"] == "stopped"
    r = await client.post(
        "/v1/chat/completions", json=chat_body("experiment:tone", user="shopper-1"), headers=x
    )
    assert_openai_error(r, 410, "not_found_error")
    assert_openai_error(await client.post("/v1/experiments/tone/resume", headers=x), 410, "not_found_error")
    assert_openai_error(
        await client.post("/v1/experiments/tone/undo", headers=x), 400, "invalid_request_error"
    )
    events = [json.loads(a)["event"] for a in gw.cfg.federation.audit_log.read_text().splitlines()]
    assert {"experiment.create", "experiment.pause", "experiment.stop"} <= set(events)
