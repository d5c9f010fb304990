"""Brand safety over HTTP (issue #28): verdicts per line under the brand's and retailer's policy, the review
queue (pending -> approved / rejected by a reviewer, once, with a reason), roles, audit, durability."""

from __future__ import annotations

import json

from serving.gateway.state import Gateway
from tests.gateway.conftest import GatewayFactory
from tests.gateway.test_gateway import assert_openai_error
from tests.tenants import ADMIN, auth

GARBLED = "Head: Fresh Fresh Brew SmolHeadL"
LINES = ["Start your morning with a smooth medium roast.", "The No. 1 coffee in America", GARBLED]


async def test_lines_get_verdicts_and_the_unclear_one_waits_for_a_reviewer(
    gateway_app: GatewayFactory,
) -> None:
    client, gw, _ = gateway_app()
    r = await client.post("/v1/governance/check", json={"lines": LINES}, headers=auth("brand_x"))
    assert r.status_code == 200, r.text
    ok, claim, garbled = r.json()["verdicts"]
    assert (ok["decision"], claim["decision"], garbled["decision"]) == ("ok", "rejected", "pending")
    assert "superlative" in claim["claims"] and "review_id" not in claim
    review_id = garbled["review_id"]

    # the submitter sees its line pending; another brand sees nothing of it; a reviewer sees it
    mine = (await client.get("/v1/governance/reviews", headers=auth("brand_x"))).json()["reviews"]
    # (earlier tests of the session may have left brand_x lines pending too: the registry's records are shared)
    assert review_id in [x["id"] for x in mine] and all(x["submitted_by"] == "brand_x" for x in mine), mine
    assert next(x for x in mine if x["id"] == review_id)["state"] == "pending"
    assert (await client.get("/v1/governance/reviews", headers=auth("brand_y"))).json()["reviews"] == []
    queue = await client.get("/v1/governance/reviews?state=pending", headers=auth("reviewer"))
    assert review_id in [x["id"] for x in queue.json()["reviews"]]

    # only a reviewer (or an admin) decides; a reason is required; a decision is final
    body = {"decision": "reject", "reason": "garbled: not publishable"}
    denied = await client.post(f"/v1/governance/reviews/{review_id}", json=body, headers=auth("brand_x"))
    assert_openai_error(denied, 403, "permission_error")
    for bad in ({"decision": "reject"}, {"decision": "maybe", "reason": "x"}, {**body, "more": 1}):
        r = await client.post(f"/v1/governance/reviews/{review_id}", json=bad, headers=auth("reviewer"))
        assert_openai_error(r, 400, "invalid_request_error")
    r = await client.post(f"/v1/governance/reviews/{review_id}", json=body, headers=auth("reviewer"))
    assert r.status_code == 200 and r.json()["state"] == "rejected" and r.json()["decided_by"] == "reviewer"
    again = await client.post(
        f"/v1/governance/reviews/{review_id}", json={"decision": "approve", "reason": "ok"}, headers=ADMIN
    )
    assert_openai_error(again, 409, "invalid_request_error")
    missing = await client.post("/v1/governance/reviews/rev-nope", json=body, headers=auth("reviewer"))
    assert_openai_error(missing, 404, "not_found_error")
    bad_state = await client.get("/v1/governance/reviews?state=done", headers=auth("reviewer"))
    assert_openai_error(bad_state, 400, "invalid_request_error")

    # audited, with who decided and why
    audit = [json.loads(x) for x in gw.cfg.federation.audit_log.read_text().splitlines()]
    decided = [a for a in audit if a.get("event") == "governance.review" and a["review"] == review_id]
    assert decided and decided[-1]["tenant"] == "reviewer" and decided[-1]["decision"] == "rejected"
    assert decided[-1]["reason"] == "garbled: not publishable" and decided[-1]["submitted_by"] == "brand_x"

    # the queue outlives this cluster: a new gateway over the same registry reads it back
    fresh = Gateway(gw.cfg, gw.engine)
    back = await fresh.reviews.call("list", None, "rejected")
    assert review_id in [x["id"] for x in back]


async def test_a_brand_checks_as_itself_under_its_retailers_policy(gateway_app: GatewayFactory) -> None:
    client, _, _ = gateway_app()
    r = await client.post(
        "/v1/governance/check", json={"lines": LINES[:1], "brand": "brand_y"}, headers=auth("brand_x")
    )
    assert_openai_error(r, 403, "permission_error")
    r = await client.post(
        "/v1/governance/check", json={"lines": LINES[:1], "retailer": "acme"}, headers=auth("brand_x")
    )
    assert r.status_code == 200 and r.json()["policy"]["max_chars"] == 90
    r = await client.post("/v1/governance/check", json={"lines": LINES[:1]})
    assert_openai_error(r, 401, "authentication_error")
