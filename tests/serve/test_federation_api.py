"""The federation router on the session app: auth, grants, resolution, rate limits, audit, metrics."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.replicas import engine_stats, total_loads
from tests.serve.conftest import APP
from tests.tenants import ADMIN, auth

MSG = [{"role": "user", "content": "Plan the media budget for coffee"}]


def post(url: str, path: str, headers: dict[str, str], **body: object) -> httpx.Response:
    return httpx.post(
        f"{url}{path}",
        json={"messages": MSG, "max_tokens": 4, "temperature": 0, **body},
        headers=headers,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("headers", "model", "status", "needle"),
    [
        ({}, "base:acme", 401, "missing API key"),
        ({"Authorization": "Bearer wrong"}, "base:acme", 401, "invalid API key"),
        ({"Authorization": "Token k-admin"}, "base:acme", 401, "malformed"),
        (auth("brand_y"), "base:rm+acme+brand_x+task_planning", 403, "'brand_x'"),
        (auth("brand_y"), "base:brand_x", 403, "'brand_x'"),
        (auth("agency"), "base:brand_y", 403, "'brand_y'"),
        (auth("brand_x"), "base:rm+acme+brand_x+task_planning", 200, ""),
        (auth("brand_y"), "base:rm+acme+brand_y", 200, ""),
        (auth("agency"), "base:acme+brand_x", 200, ""),
        (ADMIN, "base:brand_x+brand_y", 200, ""),
        (auth("brand_x"), "base:auto", 200, ""),
        (auth("brand_x"), "base:rm+nope", 404, "not registered"),
    ],
)
def test_tenant_by_stack_table(
    serve_url: str, headers: dict[str, str], model: str, status: int, needle: str
) -> None:
    r = post(serve_url, "/v1/chat/completions", headers, model=model)
    assert r.status_code == status, r.text
    if status != 200:
        assert needle in r.json()["error"]["message"]
    if status == 401:
        assert r.headers["www-authenticate"] == "Bearer"


def test_models_lists_only_what_the_caller_may_use(serve_url: str) -> None:
    def ids(headers: dict[str, str]) -> set[str]:
        r = httpx.get(f"{serve_url}/v1/models", headers=headers)
        assert r.status_code == 200, r.text
        return {m["id"] for m in r.json()["data"]}

    assert httpx.get(f"{serve_url}/v1/models").status_code == 401
    y = ids(auth("brand_y"))
    assert "base:brand_y" in y and "base:brand_x" not in y and {"base", "base:auto", "base:acme"} <= y
    assert "base:brand_x" in ids(auth("agency"))  # granted
    assert {"base:brand_x", "base:brand_y"} <= ids(ADMIN)


def test_implicit_stack_from_identity_and_classifier(serve_url: str) -> None:
    r = post(serve_url, "/v1/chat/completions", auth("brand_x"), model="base:auto")
    assert r.status_code == 200
    assert r.headers["x-rmn-model"] == "base:rm@1+acme@1+brand_x@1+task_planning@1"
    assert r.json()["model"] == r.headers["x-rmn-model"]


@pytest.mark.parametrize(
    ("body", "stack", "source", "task_source"),
    [
        ({"model": "base:auto"}, "rm@1+acme@1+brand_x@1+task_planning@1", "implicit", "classifier"),
        (
            {"model": "base", "federation": {"industry": False, "weights": {"manufacturer": 0.5}}},
            "acme@1+brand_x@1*0.5+task_planning@1",
            "structured",
            "classifier",
        ),
        ({"model": "base:acme+brand_x"}, "acme@1+brand_x@1", "explicit", None),
    ],
)
def test_resolve_endpoint(
    serve_url: str, body: dict, stack: str, source: str, task_source: str | None
) -> None:
    r = httpx.post(
        f"{serve_url}/v1/federation/resolve", json={"messages": MSG, **body}, headers=auth("brand_x")
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model"] == f"base:{stack}" and out["source"] == source and out["task_source"] == task_source
    assert out["composite_id"].startswith("c") and out["tenant"] == "brand_x"
    assert [c["id"] for c in out["components"]] == [p.split("@")[0] for p in stack.split("+")]
    assert out["dot"].startswith("digraph composition") and f'-> "{out["composite_id"]}"' in out["dot"]
    assert len(out["graph"]["edges"]) == len(out["components"]) + 1


def test_resolve_reports_bad_federation_objects(serve_url: str) -> None:
    bad = [
        ({"model": "base", "federation": {"sql": 1}}, 400),
        ({"model": "base", "federation": {"retailer": "brand_x"}}, 400),
        ({"model": "base:acme", "federation": {"task": "planning"}}, 400),
        ({"model": "base:auto"}, 401),
    ]
    for body, status in bad:
        headers = {} if status == 401 else auth("brand_x")
        r = httpx.post(f"{serve_url}/v1/federation/resolve", json=body, headers=headers)
        assert r.status_code == status, (body, r.text)


def test_rate_limit_answers_429_with_retry_after(serve_url: str) -> None:
    codes = [
        post(serve_url, "/v1/chat/completions", auth("limited"), model="base").status_code for _ in range(3)
    ]
    assert codes[:2] == [200, 200] and codes[2] == 429
    r = post(serve_url, "/v1/chat/completions", auth("limited"), model="base")
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert "rate limit" in r.json()["error"]["message"]


def test_audit_log_records_allowed_and_denied(serve_url: str, app_config) -> None:  # type: ignore[no-untyped-def]
    ok = post(
        serve_url, "/v1/chat/completions", {**auth("brand_x"), "x-request-id": "audit-ok"}, model="base:auto"
    )
    no = post(
        serve_url,
        "/v1/chat/completions",
        {**auth("brand_y"), "x-request-id": "audit-no"},
        model="base:brand_x",
    )
    assert (ok.status_code, no.status_code) == (200, 403)
    entries = {
        e["request_id"]: e for e in map(json.loads, app_config.federation.audit_log.read_text().splitlines())
    }
    assert entries["audit-ok"]["decision"] == "allowed" and entries["audit-ok"]["tenant"] == "brand_x"
    assert entries["audit-ok"]["composite_id"] == ok.headers["x-rmn-composite"]
    assert entries["audit-no"]["decision"] == "denied" and entries["audit-no"]["status"] == 403


def test_composite_affinity_across_two_replicas(serve_url: str) -> None:
    """The composite id is the multiplexed model id: once warm, requests for a composition go to a replica
    that already holds it — no further loads anywhere (it may be resident on one replica or both)."""

    def replica() -> str:
        r = post(serve_url, "/v1/chat/completions", ADMIN, model="base:acme+brand_x*0.5", max_tokens=1)
        assert r.status_code == 200
        return r.headers["x-rmn-replica"]

    for _ in range(5):  # warm-up: the replicas' model sets reach the router with a delay
        replica()
    before = engine_stats(APP)
    assert len(before) == 2
    served = {replica() for _ in range(20)}
    after = engine_stats(APP)
    assert total_loads(after) == total_loads(before), (before, after)
    assert all("base:acme@1+brand_x@1*0.5" in after[r]["adapters"] for r in served), (served, after)


def test_metrics_are_scraped_after_traffic(serve_url: str, app_config) -> None:  # type: ignore[no-untyped-def]
    r = post(serve_url, "/v1/chat/completions", ADMIN, model="base:rm+acme+task_planning")
    assert r.status_code == 200
    composite = r.headers["x-rmn-composite"]
    with httpx.stream(
        "POST",
        f"{serve_url}/v1/chat/completions",
        headers=ADMIN,
        timeout=60,
        json={"model": "base:rm+acme+task_planning", "messages": MSG, "max_tokens": 3, "stream": True},
    ) as s:
        chunks = [ln for ln in s.iter_lines() if ln.startswith("data: ")]
    assert all('"choices":[]' not in c for c in chunks), "usage chunk leaked to a client that did not ask"
    wanted = [
        "ray_rmn_requests_total{",
        f'composition="{composite}"',
        "ray_rmn_request_latency_seconds_bucket",
        "ray_rmn_time_to_first_token_seconds_bucket",
        'direction="out"',
        'component="task_planning"',
        "ray_rmn_composite_cache_misses_total",
        "ray_rmn_composite_build_seconds_bucket",
        "ray_rmn_adapter_loads_total",
        'status="403"',
    ]
    deadline = time.monotonic() + 60
    missing = wanted
    while time.monotonic() < deadline:
        text = httpx.get(f"http://127.0.0.1:{app_config.http.metrics_port}/metrics", timeout=10).text
        missing = [w for w in wanted if w not in text]
        if not missing:
            break
        time.sleep(2)
    assert not missing, missing


def test_agent_style_openai_client_against_the_router(serve_url: str) -> None:
    """What CrewAI/LangChain do through the OpenAI API: base_url + api_key, system prompt, multi-turn,
    stop sequences, streaming, tenant-implicit stack (``base:auto``)."""
    import openai

    from tests.tenants import KEYS

    client = openai.OpenAI(base_url=f"{serve_url}/v1", api_key=KEYS["brand_x"], max_retries=0)
    assert "base:auto" in {m.id for m in client.models.list()}
    messages = [
        {"role": "system", "content": "You are a retail media planner agent."},
        {"role": "user", "content": "Plan the budget for our coffee campaign."},
    ]
    first = client.chat.completions.create(
        model="base:auto",
        messages=messages,
        max_tokens=8,
        temperature=0,  # type: ignore[arg-type]
        stop=["\nObservation:"],
    )
    assert first.model == "base:rm@1+acme@1+brand_x@1+task_planning@1"
    messages += [
        {"role": "assistant", "content": first.choices[0].message.content or ""},
        {"role": "user", "content": "Now write a headline for it."},
    ]
    second = client.chat.completions.create(model="base:auto", messages=messages, max_tokens=4, temperature=0)  # type: ignore[arg-type]
    assert second.model == "base:rm@1+acme@1+brand_x@1+task_creative@1"  # the last user turn decides the task
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(
            model="base:auto",
            messages=messages,
            max_tokens=8,
            temperature=0,  # type: ignore[arg-type]
            stream=True,
        )
        if c.choices
    )
    assert streamed
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="base:brand_y", messages=messages, max_tokens=2)  # type: ignore[arg-type]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{serve_url}/v1", api_key="nope", max_retries=0).models.list()
