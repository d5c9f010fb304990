"""Faults and overload as they happen (Serve tier, FakeEngine at 10 ms per word, 2 engine replicas x 4
ongoing requests, a 3 s deadline): an engine replica killed through Ray's actor API under load, a burst at
4x the measured capacity, one tenant flooding while another asks lightly."""

from __future__ import annotations

import asyncio
import collections
import statistics
import time
from typing import Any

import httpx
import pytest

from serving.gateway.timing import parse_server_timing
from tests.http_load import Flood, open_loop
from tests.http_load import one as _one
from tests.replicas import engine_stats, serve_replicas
from tests.serve.conftest import APP
from tests.tenants import ADMIN, auth

pytestmark = pytest.mark.serve

MODELS = ["base", "base:alpha", "base:beta", "base:alpha*0.5+beta*0.5", "base:beta+gamma"]


def _chat(model: str, max_tokens: int, text: str = "hello") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens}


def test_killing_an_engine_replica_under_load_loses_nothing(serve_url: str) -> None:
    import ray

    victim = next(iter(engine_stats(APP).values()))["actor"]
    with httpx.Client() as c:  # each model served once first: the loss, not a cold composition, is measured
        for model in MODELS:
            assert (
                c.post(f"{serve_url}/v1/chat/completions", json=_chat(model, 2), headers=ADMIN).status_code
                == 200
            )
    killed: list[float] = []

    async def main() -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        stop = time.monotonic() + 6.0

        async def client(i: int) -> None:
            async with httpx.AsyncClient() as c:
                n = 0
                while time.monotonic() < stop:
                    out.append(await _one(c, serve_url, _chat(MODELS[(i + n) % len(MODELS)], 10), ADMIN))
                    n += 1

        async def killer() -> None:
            await asyncio.sleep(1.5)
            ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
            killed.append(time.monotonic())

        await asyncio.gather(*(client(i) for i in range(12)), killer())
        return out

    results = asyncio.run(main())
    codes = collections.Counter(r["status"] for r in results)
    assert None not in codes, [r for r in results if r["status"] is None][:3]  # every request got an answer
    assert all(r["shaped"] for r in results), [r for r in results if not r["shaped"]][:3]
    assert codes[200] >= 0.9 * len(results), (
        codes,
        [(r["at"], r["status"], round(r["s"], 2)) for r in results if r["status"] != 200],
    )
    assert set(codes) <= {200, 503, 504}, codes  # retried, else 503 + Retry-After (or past the 3 s deadline)
    assert all(r["headers"].get("retry-after") for r in results if r["status"] == 503)
    replaced, serving = _back_to_full_strength(serve_url, victim, killed[0])
    print(
        f"killed under load: {dict(codes)}; the controller replaced it {replaced:.1f}s after the kill, both "
        f"replicas answering requests again after {serving:.1f}s"
    )


def _back_to_full_strength(serve_url: str, victim: str, killed: float) -> tuple[float, float]:
    """Seconds from the kill until Serve's controller runs 2 engine replicas, the victim not among them (its
    replica counts alone read 2 RUNNING until the controller's next health check notices the kill), and until
    requests through the router land on both (8 at a time; the router's handle learns of a new replica later
    than the controller): the next test starts on a settled cluster. 90 s at most."""
    while True:
        running = [r for r in serve_replicas(APP, "engine") if r["state"] == "RUNNING"]
        if len(running) == 2 and victim not in {r["actor_name"] for r in running}:
            break
        assert time.monotonic() - killed < 90, "the controller did not replace the killed replica within 90 s"
        time.sleep(0.2)
    replaced = time.monotonic() - killed
    ids = {r["replica_id"] for r in running}

    async def batch() -> set[str]:
        async with httpx.AsyncClient() as c:
            rs = await asyncio.gather(*(_one(c, serve_url, _chat("base", 20), ADMIN) for _ in range(8)))
        return {r["headers"].get("x-rmn-replica", "") for r in rs if r["status"] == 200}

    while asyncio.run(batch()) != ids:
        assert time.monotonic() - killed < 90, "the new replica got no requests within 90 s of the kill"
    return replaced, time.monotonic() - killed


def _capacity(serve_url: str, tokens: int) -> float:
    """Requests per second the fake app serves with 8 closed-loop clients (its 8 engine slots): answers to
    requests sent after 1.5 s of the same load (its steady state), over the next 3 s."""

    async def main() -> int:
        done = 0
        start = time.monotonic() + 1.5
        stop = start + 3.0

        async def client() -> None:
            nonlocal done
            async with httpx.AsyncClient() as c:
                while time.monotonic() < stop:
                    r = await _one(c, serve_url, _chat("base", tokens), ADMIN)
                    done += r["status"] == 200 and time.monotonic() - r["s"] >= start

        await asyncio.gather(*(client() for _ in range(8)))
        return done

    return asyncio.run(main()) / 3.0


def test_overload_at_4x_capacity_sheds_fast_and_serves_the_rest_in_time(
    serve_url: str, app_config: Any
) -> None:
    # 0.8 s per request: 4x the engine's capacity is then ~32 requests/s. The HTTP path (proxy + router) costs
    # ~13 ms of CPU per request on the 2-core machine (one core at 75/s), so at 0.4 s per request the load also
    # tested whether two shared cores parse 64-75 requests/s: beside one busy core its median refusal reached
    # ~1 s (p99 1.8 s), vs 0.02-0.23 s (p99 <= 0.41 s) at 0.8 s per request
    tokens = 80
    capacity = _capacity(serve_url, tokens)
    rate, seconds = 4 * capacity, 5.0

    results = open_loop(serve_url, _chat("base", tokens), ADMIN, rate, seconds)  # from a process of its own
    deadline = app_config.http.request_timeout_s
    codes = collections.Counter(r["status"] for r in results)
    shed = sorted(r["s"] for r in results if r["status"] == 503)
    served = [r["s"] for r in results if r["status"] == 200]
    assert set(codes) <= {200, 503} and codes[503] and codes[200], codes  # nothing waited into a 504
    # refused, not waited out: most refusals at once (median under a quarter of the deadline) and every one before
    # the deadline (p99; the tail is the HTTP path on shared cores, the time to parse and answer, not admission)
    p99 = shed[int(0.99 * (len(shed) - 1))]
    assert statistics.median(shed) < 0.25 * deadline, (statistics.median(shed), shed[-5:])
    assert p99 < deadline, shed[-5:]
    assert max(served) < deadline, max(served)
    assert all(r["headers"].get("retry-after") for r in results if r["status"] == 503)
    print(
        f"capacity {capacity:.1f}/s, offered {rate:.1f}/s: {dict(codes)}, refusal median "
        f"{statistics.median(shed):.3f}s, p99 {p99:.3f}s, max {shed[-1]:.3f}s"
    )


def test_a_flooding_tenant_does_not_starve_a_light_one(serve_url: str) -> None:
    """40 clients of one tenant flood past capacity from a process of their own (they get 503s and back off as
    told); a light tenant's requests are never refused, start at once (the slot each router keeps for the other
    tenants, ``admission.reserve_slots``: its median ``server-timing`` queue wait is under 3 ms; ~10 ms without
    the reserve, behind the next of the flood's running requests to end) — the fairness itself — and its p50
    stays under 3x its p50 alone: a FIFO queue would put each light request behind up to max_wait_share x
    deadline = 0.9 s of flood work, about 4x the ~0.22 s alone. The p50 ratio is timing, not the behaviour: 1.0x
    run alone, more in a full `make test` on 2 cores shared with the flood's clients, the proxy and routers, so its
    bound only tells "never queued behind the flood" from CPU contention."""
    tokens, seconds = 20, 4.0

    async def light_run() -> tuple[list[float], list[float], collections.Counter[int]]:
        light: list[float] = []
        waits: list[float] = []
        codes: collections.Counter[int] = collections.Counter()
        stop = time.monotonic() + seconds
        async with httpx.AsyncClient() as c:
            while time.monotonic() < stop:
                r = await _one(c, serve_url, _chat("base", tokens), auth("brand_x"))
                codes[r["status"]] += 1
                if r["status"] == 200:
                    light.append(r["s"])
                    waits.append(parse_server_timing(r["headers"]["server-timing"])["queue"])
                await asyncio.sleep(0.2)
        return light, waits, codes

    alone = statistics.median(asyncio.run(light_run())[0])
    flood = Flood(serve_url, _chat("base", tokens), auth("brand_y"), clients=40, seconds=seconds + 1.0)
    time.sleep(1.0)  # the flood past capacity before the light tenant asks
    light, waits, light_codes = asyncio.run(light_run())
    flood_codes = flood.codes()
    assert flood_codes.get(503), flood_codes  # the flood was past capacity
    assert set(light_codes) == {200} and light_codes[200] >= 5, light_codes  # the light tenant never refused
    loaded, waited = statistics.median(light), statistics.median(waits)
    assert waited < 0.003 and loaded <= 3 * alone, (alone, loaded, waited)
    print(
        f"light tenant p50: alone {alone:.3f}s, with a 40-client flood {loaded:.3f}s (queue wait p50 "
        f"{waited:.3f}s); flood {flood_codes}"
    )


def test_a_request_whose_replica_is_lost_before_answering_is_retried_once_then_503(serve_url: str) -> None:
    """Deterministic (the chaos test above depends on where the kill lands): every engine replica answers this
    prompt with ActorUnavailableError before sending anything; the router retries once, then 503 + Retry-After."""
    body = {"model": "base", "messages": [{"role": "user", "content": "FAKE_LOST now"}], "max_tokens": 4}
    for stream in (False, True):
        r = httpx.post(
            f"{serve_url}/v1/chat/completions", json={**body, "stream": stream}, headers=ADMIN, timeout=30
        )
        assert r.status_code == 503, r.text
        assert r.headers.get("retry-after") and "replica" in r.json()["error"]["message"], r.text


def test_retries_and_sheds_reach_the_dashboard(app_config: Any) -> None:
    """After the tests above (lost replicas, an overload): the dashboard's retry and shed series exist."""
    from tests.serve.test_observability import EVENT_DRIVEN, assert_scraped

    assert_scraped(EVENT_DRIVEN, app_config.http.metrics_port)
