"""W3C ``Server-Timing`` of a generation: where its time went, as the client sees it in the answer's headers.

Contract: :func:`server_timing` writes ``queue``, ``load``, ``engine``, ``call`` and ``router`` durations in
milliseconds (one decimal); :func:`parse_server_timing` reads any ``Server-Timing`` value back into seconds by
name (entries without a ``dur`` are left out).
"""

from __future__ import annotations

from serving.replies import Head


def server_timing(queue_s: float, head: Head, call_s: float, router_s: float) -> str:
    """The header of one answer: ``queue`` (the router's fair queue), ``load`` (the adapter's compose + load on
    the engine replica), ``engine`` (the replica had the request until the answer's head, load included),
    ``call`` (the router's call until that head: engine plus Serve's hops) and ``router`` (the router had the
    request until that head: authentication, resolution and queue included)."""
    parts = {
        "queue": queue_s,
        "load": head.load_s,
        "engine": head.engine_s,
        "call": call_s,
        "router": router_s,
    }
    return ", ".join(f"{k};dur={v * 1000:.1f}" for k, v in parts.items())


def parse_server_timing(value: str) -> dict[str, float]:
    """``Server-Timing`` durations in seconds by metric name."""
    out: dict[str, float] = {}
    for entry in value.split(","):
        name, *params = (p.strip() for p in entry.split(";"))
        for p in params:
            key, _, dur = p.partition("=")
            if name and key == "dur":
                try:
                    out[name] = float(dur) / 1000
                except ValueError:
                    continue
    return out
