"""HTTP load for the Serve tier's fault and overload tests: one request's outcome, and an open-loop load or a
closed-loop flood run in a process of its own (``python -m tests.http_load JOB`` takes its job as JSON and writes the
outcomes as JSON).

Why a process of its own: the pytest process by then holds every earlier test's objects, so its garbage
collector and event loop add their pauses to what the load measures; an attacker's client does not share the
server's test runner. An outcome: ``status`` (None: no answer at all), ``shaped`` (an error in OpenAI's shape),
``s`` (seconds until the answer), ``headers``, ``text`` (the first 200 characters of an error) and ``at``
(seconds since the first request of this process).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

T0: dict[str, float] = {}


async def one(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], headers: dict[str, str]
) -> dict[str, Any]:
    """POST ``body`` to ``url``'s chat completions: its outcome (see the module contract)."""
    t = time.monotonic()
    T0.setdefault("t", t)
    try:
        r = await client.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=15)
    except Exception as e:  # no answer at all: what must never happen
        return {"status": None, "error": repr(e), "s": time.monotonic() - t}
    shaped = True
    if r.status_code != 200:
        try:
            err = r.json()["error"]
            shaped = isinstance(err["message"], str) and err["code"] == r.status_code
        except Exception:
            shaped = False
    return {
        "status": r.status_code,
        "shaped": shaped,
        "s": time.monotonic() - t,
        "headers": dict(r.headers),
        "text": r.text[:200] if r.status_code != 200 else "",
        "at": round(t - T0["t"], 2),
    }


async def _open_loop(
    url: str, body: dict[str, Any], headers: dict[str, str], rate: float, n: int
) -> list[Any]:
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=500)) as c:
        tasks = []
        start = time.monotonic()
        for i in range(n):  # open loop: arrivals do not wait for answers
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            tasks.append(asyncio.create_task(one(c, url, body, headers)))
        return list(await asyncio.gather(*tasks))


async def _flood(
    url: str, body: dict[str, Any], headers: dict[str, str], clients: int, seconds: float
) -> dict[str, int]:
    stop = time.monotonic() + seconds
    codes: dict[str, int] = {}
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=clients + 10)) as c:

        async def client() -> None:  # as many requests as it may; on 503 it backs off as told
            while time.monotonic() < stop:
                r = await one(c, url, body, headers)
                codes[str(r["status"])] = codes.get(str(r["status"]), 0) + 1
                if r["status"] == 503:
                    await asyncio.sleep(min(1.0, float(r["headers"].get("retry-after", 1))))

        await asyncio.gather(*(client() for _ in range(clients)))
    return codes


def _process(job: dict[str, Any]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.http_load", json.dumps(job)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )


def _result(proc: subprocess.Popen[str], timeout: float) -> Any:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"the load process failed ({proc.returncode}): {err[-2000:]}")
    return json.loads(out)


def open_loop(
    url: str, body: dict[str, Any], headers: dict[str, str], rate: float, seconds: float
) -> list[dict[str, Any]]:
    """``rate * seconds`` requests of ``body`` arriving at ``rate`` a second whatever the answers, sent from a
    fresh process: their outcomes."""
    job = {
        "kind": "open_loop",
        "url": url,
        "body": body,
        "headers": headers,
        "rate": rate,
        "n": int(rate * seconds),
    }
    out: list[dict[str, Any]] = _result(_process(job), seconds + 60)
    return out


class Flood:
    """``clients`` closed-loop clients sending ``body`` for ``seconds`` from a process of its own (each backs
    off as a 503's Retry-After says, at most 1 s), started on construction; :meth:`codes` waits for its end:
    the answers' status codes and counts."""

    def __init__(
        self, url: str, body: dict[str, Any], headers: dict[str, str], clients: int, seconds: float
    ) -> None:
        self.seconds = seconds
        self._proc = _process(
            {
                "kind": "flood",
                "url": url,
                "body": body,
                "headers": headers,
                "clients": clients,
                "seconds": seconds,
            }
        )

    def codes(self) -> dict[int, int]:
        return {int(k): v for k, v in _result(self._proc, self.seconds + 60).items()}


if __name__ == "__main__":
    job = json.loads(sys.argv[1])
    if job["kind"] == "flood":
        result: Any = asyncio.run(
            _flood(job["url"], job["body"], job["headers"], job["clients"], job["seconds"])
        )
    else:
        result = asyncio.run(_open_loop(job["url"], job["body"], job["headers"], job["rate"], job["n"]))
    json.dump(result, sys.stdout)
