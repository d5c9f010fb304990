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
from tests.http_load import one as _one
from tests.http_load import open_loop
from tests.replicas import engine_stats
from tests.serve.conftest import APP
from tests.tenants import ADMIN, auth

pytestmark = pytest.mark.serve

MODELS = ["base", "base:alpha", "base:beta", "base:alpha*0.5+beta*0.5", "base:beta+gamma"]


def _chat(model: str, max_tokens: int, text: str = "hello") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens}


def _engine_running() -> int:
    from ray import serve

    states = serve.status().applications[APP].deployments["engine"].replica_states
    return sum(int(n) for state, n in states.items() if str(getattr(state, "value", state)) == "RUNNING")


def test_killing_an_engine_replica_under_load_loses_nothing(serve_url: str) -> None:
    import ray

    victim = next(iter(engine_stats(APP).values()))["actor"]

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

        await asyncio.gather(*(client(i) for i in range(12)), killer())
        return out

    results = asyncio.run(main())
    killed_at = time.monotonic()
    codes = collections.Counter(r["status"] for r in results)
    assert None not in codes, [r for r in results if r["status"] is None][:3]  # every request got an answer
    assert all(r["shaped"] for r in results), [r for r in results if not r["shaped"]][:3]
    assert codes[200] >= 0.9 * len(results), (
        codes,
        [(r["at"], r["status"], round(r["s"], 2)) for r in results if r["status"] != 200],
    )
    assert set(codes) <= {200, 503, 504}, codes  # retried, else 503 + Retry-After (or past the 3 s deadline)
    assert all(r["headers"].get("retry-after") for r in results if r["status"] == 503)
    while _engine_running() < 2:  # back to full strength (Serve replaces the replica)
        assert time.monotonic() - killed_at < 90, "the engine deployment did not recover within 90 s"
        time.sleep(0.5)
    assert victim not in {s["actor"] for s in engine_stats(APP).values()}
    print(
        f"killed under load: {dict(codes)}; full strength again {time.monotonic() - killed_at:.1f}s after the load"
    )


def _capacity(serve_url: str, tokens: int) -> float:
    """Requests per second the fake app serves with 8 closed-loop clients (its 8 engine slots)."""

    async def main() -> int:
        done = 0
        stop = time.monotonic() + 3.0

        async def client() -> None:
            nonlocal done
            async with httpx.AsyncClient() as c:
                while time.monotonic() < stop:
                    r = await _one(c, serve_url, _chat("base", tokens), ADMIN)
                    done += r["status"] == 200

        await asyncio.gather(*(client() for _ in range(8)))
        return done

    return asyncio.run(main()) / 3.0


def test_overload_at_4x_capacity_sheds_fast_and_serves_the_rest_in_time(
    serve_url: str, app_config: Any
) -> None:
    tokens = 40  # 0.4 s per request
    capacity = _capacity(serve_url, tokens)
    rate, seconds = 4 * capacity, 5.0

    results = open_loop(serve_url, _chat("base", tokens), ADMIN, rate, seconds)  # from a process of its own
    deadline = app_config.http.request_timeout_s
    codes = collections.Counter(r["status"] for r in results)
    shed = sorted(r["s"] for r in results if r["status"] == 503)
    served = [r["s"] for r in results if r["status"] == 200]
    assert set(codes) <= {200, 503} and codes[503] and codes[200], codes  # nothing waited into a 504
    # refused, not waited out: most refusals at once (median under a quarter of the deadline) and every one before
    # the deadline (p99). At 4x an open-loop load the 2-core machine's HTTP path itself saturates: in full runs
    # its p99 reached 1.1-2.2 s (vs 0.02-0.4 s alone), the time to parse and answer, not admission waiting
    p99 = shed[int(0.99 * (len(shed) - 1))]
    assert statistics.median(shed) < 0.25 * deadline, (statistics.median(shed), shed[-5:])
    assert p99 < deadline, shed[-5:]
    assert max(served) < deadline, max(served)
    assert all(r["headers"].get("retry-after") for r in results if r["status"] == 503)
    print(
        f"capacity {capacity:.1f}/s, offered {rate:.1f}/s: {dict(codes)}, refusal p99 {p99:.3f}s, max {shed[-1]:.3f}s"
    )


def test_a_flooding_tenant_does_not_starve_a_light_one(serve_url: str) -> None:
    """40 clients of one tenant flood past capacity (they get 503s and back off as told); a light tenant's
    requests are never refused, start at once (the slot each router keeps for the other tenants,
    ``admission.reserve_slots``: its median ``server-timing`` queue wait is under 3 ms; ~10 ms without the
    reserve, behind the next of the flood's running requests to end) — the fairness itself — and its p50 stays
    under 3x its p50 alone: a FIFO queue would put each light request behind up to max_wait_share x deadline =
    0.9 s of flood work, about 4x the ~0.22 s alone. The p50 ratio is timing, not the behaviour: 1.0x run alone,
    up to 2.1x in a full `make test` on 2 cores (the 40 flooders share this process's event loop and the cores
    with the proxy and routers), so its bound only tells "never queued behind the flood" from CPU contention."""
    tokens = 20

    async def light_run(flood: bool) -> tuple[float, collections.Counter[int], collections.Counter[int]]:
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=200)) as c:
            stop = time.monotonic() + 4.0
            light: list[float] = []
            waits: list[float] = []
            light_codes: collections.Counter[int] = collections.Counter()
            flood_codes: collections.Counter[int] = collections.Counter()

            async def flooder() -> None:  # as many requests as it may; on 503 it backs off as told
                while time.monotonic() < stop:
                    r = await _one(c, serve_url, _chat("base", tokens), auth("brand_y"))
                    flood_codes[r["status"]] += 1
                    if r["status"] == 503:
                        await asyncio.sleep(min(1.0, float(r["headers"].get("retry-after", 1))))

            async def lighter() -> None:
                while time.monotonic() < stop:
                    r = await _one(c, serve_url, _chat("base", tokens), auth("brand_x"))
                    light_codes[r["status"]] += 1
                    if r["status"] == 200:
                        light.append(r["s"])
                        waits.append(parse_server_timing(r["headers"]["server-timing"])["queue"])
                    await asyncio.sleep(0.2)

            await asyncio.gather(lighter(), *(flooder() for _ in range(40 if flood else 0)))
            return statistics.median(light), statistics.median(waits), light_codes, flood_codes

    alone, _, _, _ = asyncio.run(light_run(False))
    loaded, waited, light_codes, flood_codes = asyncio.run(light_run(True))
    assert flood_codes[503] > 0, flood_codes  # the flood was past capacity
    assert set(light_codes) == {200} and light_codes[200] >= 5, light_codes  # the light tenant never refused
    assert waited < 0.003 and loaded <= 3 * alone, (alone, loaded, waited)
    print(
        f"light tenant p50: alone {alone:.3f}s, with a 40-client flood {loaded:.3f}s (queue wait p50 "
        f"{waited:.3f}s); flood {dict(flood_codes)}"
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
