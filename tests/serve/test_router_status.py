"""The router's status paths on the Serve tier (FakeEngine): every status it answers, its headers,
deadlines, overload, multiplexed routing."""

from __future__ import annotations

import asyncio
import collections
import json

import httpx
import openai
import pytest

from tests.replicas import engine_stats, total_loads
from tests.serve.conftest import APP
from tests.tenants import ADMIN, ADMIN_KEY

MSG = [{"role": "user", "content": "plan a coffee campaign"}]


def chat(url: str, model: str, **kw: object) -> httpx.Response:
    body = {"model": model, "messages": MSG, "max_tokens": 8, "temperature": 0, **kw}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60, headers=ADMIN)


def test_probes(serve_url: str) -> None:
    assert httpx.get(f"{serve_url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{serve_url}/readyz", timeout=10).json() == {"status": "ready"}


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"model": "base:nope", "messages": MSG}, 404, "does not exist"),
        ({"model": "gpt-4o", "messages": MSG}, 404, "does not exist"),
        ({"model": "base:../etc", "messages": MSG}, 400, "malformed model name"),
        ({"model": "base:alpha@9", "messages": MSG}, 404, "no version"),
        ({"messages": MSG}, 400, "'model'"),
        ({"model": "base", "messages": MSG, "max_tokens": -1}, 400, "max_tokens"),
        ({"model": "base", "messages": MSG, "temperature": "hot"}, 400, "temperature"),
        ({"model": "base", "messages": "not a list"}, 400, "messages"),
        ({"model": "base:alpha", "messages": MSG, "max_tokens": 100000}, 400, ""),
    ],
)
def test_bad_requests_get_openai_errors(serve_url: str, body: dict, status: int, needle: str) -> None:
    r = httpx.post(f"{serve_url}/v1/chat/completions", json=body, timeout=60, headers=ADMIN)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == status and needle in err["message"]


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_non_json_bodies_are_400(serve_url: str, raw: bytes) -> None:
    r = httpx.post(
        f"{serve_url}/v1/chat/completions",
        content=raw,
        timeout=30,
        headers={"content-type": "application/json", **ADMIN},
    )
    assert r.status_code == 400 and "error" in r.json()


def test_two_replica_adapter_affinity(serve_url: str) -> None:
    """Once warm, repeated requests for an adapter go to a replica that already holds it: no new loads
    anywhere (it may be resident on one replica or on both), while both replicas serve traffic."""
    ids = ["base:alpha", "base:beta", "base:gamma"]
    for m in ids:  # warm-up: the replicas' model sets reach the router with a delay
        for _ in range(3):
            assert chat(serve_url, m, max_tokens=1).status_code == 200
    before = engine_stats(APP)
    assert len(before) == 2
    served: dict[str, set[str]] = {m: set() for m in ids}
    for _ in range(10):
        for m in ids:
            served[m].add(chat(serve_url, m, max_tokens=1).headers["x-rmn-replica"])
    after = engine_stats(APP)
    assert total_loads(after) == total_loads(before), (before, after)
    for m, replicas in served.items():
        assert all(f"{m}@1" in after[r]["adapters"] for r in replicas), (m, replicas, after)
    base_replicas = {chat(serve_url, "base", max_tokens=1).headers["x-rmn-replica"] for _ in range(12)}
    assert base_replicas == set(after)


def test_overload_answers_503_at_once_and_loses_nothing(serve_url: str) -> None:
    """2 replicas x 4 ongoing = 8 slots; a burst of 40 requests of 1 s each is 5 s of queue, above the
    admission limit (half the 3 s deadline): 503s at once, never a hang; what is admitted finishes inside
    the deadline (a 504 here would be a queue that admits more than it can serve)."""

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120, headers=ADMIN) as c:
            body = {"model": "base", "messages": MSG, "max_tokens": 100, "temperature": 0, "ignore_eos": True}
            return await asyncio.gather(
                *[c.post(f"{serve_url}/v1/chat/completions", json=body) for _ in range(40)]
            )

    responses = asyncio.run(burst())
    codes = collections.Counter(r.status_code for r in responses)
    assert set(codes) <= {200, 503}, codes
    assert codes[503] > 0 and codes[200] > 0, codes
    for r in responses:
        if r.status_code == 503:
            assert r.headers.get("retry-after") and r.json()["error"]["code"] == 503, (r.headers, r.text)
        else:
            assert r.json()["usage"]["completion_tokens"] == 100


@pytest.mark.parametrize(
    ("model", "status", "needle"),
    [
        ("base:alpha+beta+gamma", 400, "above max_lora_rank 16"),
        ("base:alpha+nope", 404, "not registered"),
        ("base:alpha+alpha", 400, "once"),
        ("base:alpha*99", 400, "weight"),
    ],
)
def test_bad_stacks(serve_url: str, model: str, status: int, needle: str) -> None:
    r = chat(serve_url, model)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"]


def test_request_id_is_echoed_and_generated(serve_url: str) -> None:
    r = httpx.post(
        f"{serve_url}/v1/chat/completions",
        json={"model": "base:alpha", "messages": MSG, "max_tokens": 3},
        headers={**ADMIN, "x-request-id": "req-42"},
        timeout=30,
    )
    assert r.status_code == 200 and r.headers["x-request-id"] == "req-42"
    assert r.headers["x-rmn-model"] == "base:alpha@1" and r.headers["x-rmn-replica"]
    assert chat(serve_url, "base:nope").headers["x-request-id"]  # errors carry one too


def test_deadline_answers_504_in_openai_shape(serve_url: str, app_config: object) -> None:
    """The fake app's deadline is 3 s; 350 words at 10 ms each cannot make it."""
    r = chat(serve_url, "base", max_tokens=350)
    assert r.status_code == 504, r.text
    assert r.json()["error"]["code"] == 504 and "exceeded" in r.json()["error"]["message"]
    with httpx.stream(
        "POST",
        f"{serve_url}/v1/chat/completions",
        json={"model": "base", "messages": MSG, "max_tokens": 350, "stream": True},
        headers=ADMIN,
        timeout=30,
    ) as s:
        assert s.status_code == 200  # the head was sent before the deadline passed
        events = [ln[6:] for ln in s.iter_lines() if ln.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == 504


def test_engine_failure_is_an_openai_500_not_plain_text(serve_url: str) -> None:
    body = {"model": "base", "messages": [{"role": "user", "content": "FAKE_FAIL now"}], "max_tokens": 3}
    r = httpx.post(f"{serve_url}/v1/chat/completions", json=body, headers=ADMIN, timeout=30)
    assert r.status_code == 500, r.text
    err = r.json()["error"]
    assert (
        err["code"] == 500 and err["type"] == "server_error" and r.headers["x-request-id"] in err["message"]
    )
    # streaming, failing before the first chunk: nothing was sent yet, so the same JSON 500
    r = httpx.post(
        f"{serve_url}/v1/chat/completions", json={**body, "stream": True}, headers=ADMIN, timeout=30
    )
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error", r.text
    # failing after the first chunk: the stream ends with an OpenAI-shaped error event and [DONE]
    broken = {**body, "messages": [{"role": "user", "content": "FAKE_BREAK now"}], "stream": True}
    with httpx.stream(
        "POST", f"{serve_url}/v1/chat/completions", json=broken, headers=ADMIN, timeout=30
    ) as s:
        assert s.status_code == 200
        events = [ln[6:] for ln in s.iter_lines() if ln.startswith("data: ")]
    assert json.loads(events[0])["choices"][0]["delta"]["content"]  # the first chunk arrived
    assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == 500


def test_stream_usage_only_when_the_client_asks(serve_url: str) -> None:
    client = openai.OpenAI(base_url=f"{serve_url}/v1", api_key=ADMIN_KEY, max_retries=0)
    plain = list(client.chat.completions.create(model="base:beta", messages=MSG, max_tokens=4, stream=True))  # type: ignore[arg-type]
    assert all(c.usage is None for c in plain) and len(plain) == 4
    with_usage = list(
        client.chat.completions.create(
            model="base:beta",
            messages=MSG,  # type: ignore[arg-type]
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert with_usage[-1].usage is not None and with_usage[-1].usage.completion_tokens == 4
    text = "".join((c.choices[0].delta.content or "") for c in with_usage if c.choices)
    whole = client.chat.completions.create(model="base:beta", messages=MSG, max_tokens=4)  # type: ignore[arg-type]
    assert text == whole.choices[0].message.content


def test_every_router_status_code_is_reachable(serve_url: str) -> None:
    """The router's whole status vocabulary, each in OpenAI's error shape (200 aside)."""
    from tests.tenants import auth

    def post(path: str, body: object, headers: dict[str, str]) -> httpx.Response:
        return httpx.post(f"{serve_url}{path}", json=body, headers=headers, timeout=30)

    ok = {"model": "base", "messages": MSG, "max_tokens": 2}
    seen = {
        200: post("/v1/chat/completions", ok, ADMIN),
        400: post("/v1/chat/completions", {**ok, "max_tokens": -1}, ADMIN),
        401: post("/v1/chat/completions", ok, {"Authorization": "Bearer wrong"}),
        403: post("/v1/chat/completions", {**ok, "model": "base:brand_y"}, auth("brand_x")),
        404: post("/v1/chat/completions", {**ok, "model": "base:nope"}, ADMIN),
        500: post(
            "/v1/chat/completions", {**ok, "messages": [{"role": "user", "content": "FAKE_FAIL"}]}, ADMIN
        ),
        504: post("/v1/chat/completions", {**ok, "max_tokens": 350}, ADMIN),
    }
    for _ in range(3):  # tenant 'limited' may send 2 requests a minute
        seen[429] = post("/v1/chat/completions", ok, auth("limited"))
    for status, r in seen.items():
        assert r.status_code == status, (status, r.text)
        if status != 200:
            assert r.json()["error"]["code"] == status, r.text
    assert seen[401].headers["www-authenticate"] == "Bearer"
    assert int(seen[429].headers["retry-after"]) >= 1
    # 503 (overload) is test_overload_answers_503_at_once_and_loses_nothing


def test_request_id_header_appears_once_streaming_or_not(serve_url: str) -> None:
    body = {"model": "base", "messages": MSG, "max_tokens": 2}
    r = httpx.post(f"{serve_url}/v1/chat/completions", json=body, headers=ADMIN, timeout=30)
    assert len(r.headers.get_list("x-request-id")) == 1
    with httpx.stream(
        "POST", f"{serve_url}/v1/chat/completions", json={**body, "stream": True}, headers=ADMIN, timeout=30
    ) as s:
        assert len(s.headers.get_list("x-request-id")) == 1
