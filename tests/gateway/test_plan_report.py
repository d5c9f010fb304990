"""``POST /v1/plans/report`` (the UI's download): a comparison result the caller holds, rendered without planning
again; a body that is not a result is a 400 naming what is wrong; hostile names never reach a header."""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.gateway.conftest import GatewayFactory
from tests.gateway.test_gateway import assert_openai_error
from tests.tenants import auth


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    from planning.compare import CompareRequest
    from planning.workflow import compare_local
    from serving.demo.defaults import demo_config

    cfg = demo_config()
    assert cfg.comparison is not None
    with tempfile.TemporaryDirectory() as work:
        req = CompareRequest(budget=1000, manufacturer="brewmax", seed=7)
        return compare_local(cfg.comparison.market, req, cfg.market_policy(), Path(work))


async def test_a_held_result_renders_as_pdf_and_html(
    gateway_app: GatewayFactory, result: dict[str, Any]
) -> None:
    client, _, _ = gateway_app()
    r = await client.post("/v1/plans/report", json=result, headers=auth("brand_x"))
    assert r.status_code == 200 and r.headers["content-type"] == "application/pdf", r.text[:200]
    assert (
        r.content.startswith(b"%PDF-")
        and 'filename="rmn-plan-brewmax-7.pdf"' in r.headers["content-disposition"]
    )
    h = await client.post("/v1/plans/report?format=html", json=result, headers=auth("brand_x"))
    assert h.status_code == 200 and h.headers["content-type"].startswith("text/html")
    assert f"recommended spend {result['full']['spend_analysis']['plan_spend']:,.2f}" in h.text


async def test_bad_bodies_and_callers_are_refused(
    gateway_app: GatewayFactory, result: dict[str, Any]
) -> None:
    client, _, _ = gateway_app()
    r = await client.post("/v1/plans/report", json=result)
    assert r.status_code == 401
    r = await client.post("/v1/plans/report", json={"verdict": "x"}, headers=auth("brand_x"))
    assert_openai_error(r, 400, "invalid_request_error")
    assert "request" in r.json()["error"]["message"]  # the first missing field, named
    broken = copy.deepcopy(result)
    del broken["market"]["horizon_days"]
    r = await client.post("/v1/plans/report", json=broken, headers=auth("brand_x"))
    assert r.status_code == 400 and "horizon_days" in r.json()["error"]["message"], r.text
    r = await client.post("/v1/plans/report?format=docx", json=result, headers=auth("brand_x"))
    assert r.status_code == 400 and "format must be one of" in r.json()["error"]["message"]
    evil = copy.deepcopy(result)
    evil["market"]["manufacturer"] = 'x"\r\nset-cookie: a=b'
    r = await client.post("/v1/plans/report", content=json.dumps(evil), headers=auth("brand_x"))
    assert r.status_code == 200 and "set-cookie" not in r.headers
    assert r.headers["content-disposition"] == 'attachment; filename="rmn-plan-x___set-cookie__a_b-7.pdf"'
