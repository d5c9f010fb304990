"""The generation's Server-Timing header: written by the router, read back by clients and benchmarks."""

from __future__ import annotations

import pytest

from serving.gateway.timing import parse_server_timing, server_timing
from serving.replies import Head


def test_every_hop_is_written_in_ms_and_read_back_in_seconds() -> None:
    head = Head(200, False).at("r1", "stack", load_s=0.25, engine_s=0.5)
    value = server_timing(0.0123, head, call_s=0.6, router_s=0.7)
    assert value == "queue;dur=12.3, load;dur=250.0, engine;dur=500.0, call;dur=600.0, router;dur=700.0"
    assert parse_server_timing(value) == pytest.approx(
        {"queue": 0.0123, "load": 0.25, "engine": 0.5, "call": 0.6, "router": 0.7}
    )


def test_foreign_and_malformed_entries_are_skipped() -> None:
    got = parse_server_timing('cache;desc="hit", db;dur=53;desc="x", bad;dur=abc, ;dur=1, edge ; dur = 2')
    assert got == {"db": 0.053}
    assert parse_server_timing("") == {}
