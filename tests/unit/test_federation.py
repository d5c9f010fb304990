"""Tenants, the stack policy, access control, rate limits and the audit log — without Ray."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapters import AdapterManifest
from adapters.stack import StackPart, parse_stack
from federation.audit import AuditLog
from federation.policy import (
    FederationPolicy,
    FederationRequest,
    PolicyError,
    check_access,
    decide,
)
from federation.ratelimit import RateLimiter
from federation.task_classifier import classify_task
from federation.tenants import AuthError, Forbidden, Tenant, TenantDirectory, hash_key

KINDS = {
    "rm": "industry",
    "acme": "retailer",
    "bigmart": "retailer",
    "brand_x": "manufacturer",
    "brand_y": "manufacturer",
    "task_planning": "task",
    "task_creative": "task",
    "task_harmonize": "task",
}
PRIVATE = {"brand_x": "brand_x", "brand_y": "brand_y"}
POLICY = FederationPolicy(industry_adapter="rm")


def tenant(tid: str, role: str = "manufacturer", **kw: object) -> Tenant:
    return Tenant(id=tid, role=role, api_key_sha256=hash_key(f"key-{tid}"), **kw)  # type: ignore[arg-type]


BRAND_X = tenant("brand_x", retailer="acme", manufacturer="brand_x")
BRAND_Y = tenant("brand_y", retailer="bigmart", manufacturer="brand_y")
AGENCY = tenant("agency", role="agency", grants=["brand_x"])
ADMIN = tenant("admin", role="admin")
RETAILER = tenant("acme", role="retailer", retailer="acme")


def manifest(adapter_id: str) -> AdapterManifest:
    private = adapter_id in PRIVATE
    return AdapterManifest(
        id=adapter_id,
        kind=KINDS[adapter_id],
        owner=PRIVATE.get(adapter_id, "rmn"),  # type: ignore[arg-type]
        visibility="private" if private else "public",
        base_model="m",  # type: ignore[arg-type]
        base_model_revision="r",
        rank=4,
        alpha=8,
        target_modules=["q_proj"],
        sha256="0" * 64,
    )


def test_authentication() -> None:
    d = TenantDirectory([BRAND_X, ADMIN])
    assert d.authenticate("Bearer key-brand_x") is BRAND_X
    assert d.authenticate("bearer   key-admin") is ADMIN
    for header, msg in [
        (None, "missing"),
        ("", "missing"),
        ("Basic abc", "malformed"),
        ("Bearer ", "malformed"),
        ("Bearer key-nobody", "invalid"),
    ]:
        with pytest.raises(AuthError, match=msg):
            d.authenticate(header)
    with pytest.raises(ValueError, match="share one API key"):
        TenantDirectory([BRAND_X, BRAND_X.model_copy(update={"id": "other"})])


def test_tenant_config_refuses_plain_keys() -> None:
    with pytest.raises(ValueError, match="api_key_sha256"):
        Tenant(id="t", role="admin", api_key_sha256="plain-text-key")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("who", "stack", "forbidden"),
    [
        (BRAND_X, "rm+acme+brand_x+task_planning", None),
        (BRAND_Y, "rm+acme+brand_x+task_planning", "brand_x"),
        (BRAND_Y, "brand_y+brand_x", "brand_x"),
        (AGENCY, "rm+acme+brand_x", None),
        (AGENCY, "brand_y", "brand_y"),
        (RETAILER, "acme+brand_x", "brand_x"),
        (RETAILER, "rm+acme+task_creative", None),
        (ADMIN, "brand_x+brand_y", None),
    ],
)
def test_access_table(who: Tenant, stack: str, forbidden: str | None) -> None:
    manifests = [manifest(p.id) for p in parse_stack(stack)]
    if forbidden is None:
        check_access(who, manifests)
    else:
        with pytest.raises(Forbidden, match=forbidden) as e:
            check_access(who, manifests)
        assert e.value.component == forbidden


def _decide(
    who: Tenant, model_stack: str, fed: dict | None = None, text: str = ""
) -> tuple[str, str, str | None]:
    explicit = parse_stack(model_stack) if model_stack else ()
    d = decide(
        who,
        explicit,
        FederationRequest.model_validate(fed) if fed is not None else None,
        text,
        POLICY,
        lambda i: KINDS[i],
    )
    return "+".join(p.text() for p in d.parts), d.source, d.task_source


@pytest.mark.parametrize(
    ("who", "model_stack", "fed", "text", "expected"),
    [
        (BRAND_X, "", None, "hello", ("", "base", None)),
        (BRAND_X, "acme+brand_x", None, "", ("acme+brand_x", "explicit", None)),
        (
            BRAND_X,
            "auto",
            None,
            "Plan my Q3 budget",
            ("rm+acme+brand_x+task_planning", "implicit", "classifier"),
        ),
        (
            BRAND_X,
            "auto",
            None,
            "Write a headline for our ad",
            ("rm+acme+brand_x+task_creative", "implicit", "classifier"),
        ),
        (
            BRAND_X,
            "auto",
            None,
            "map the columns of this report",
            ("rm+acme+brand_x+task_harmonize", "implicit", "classifier"),
        ),
        (BRAND_X, "auto", None, "hello there", ("rm+acme+brand_x", "implicit", None)),
        (
            BRAND_Y,
            "auto",
            None,
            "plan the budget",
            ("rm+bigmart+brand_y+task_planning", "implicit", "classifier"),
        ),
        (
            BRAND_X,
            "",
            {"task": "creative"},
            "plan the budget",
            ("rm+acme+brand_x+task_creative", "structured", "request"),
        ),
        (
            BRAND_X,
            "",
            {"retailer": "bigmart", "industry": False},
            "",
            ("bigmart+brand_x", "structured", None),
        ),
        (
            BRAND_X,
            "auto",
            {"weights": {"industry": 0.5, "manufacturer": 2}},
            "",
            ("rm*0.5+acme+brand_x*2", "structured", None),
        ),
        (
            AGENCY,
            "auto",
            {"manufacturer": "brand_x", "retailer": "acme"},
            "",
            ("rm+acme+brand_x", "structured", None),
        ),
        (RETAILER, "auto", None, "forecast spend", ("rm+acme+task_planning", "implicit", "classifier")),
    ],
)
def test_resolution_table(
    who: Tenant, model_stack: str, fed: dict | None, text: str, expected: tuple[str, str, str | None]
) -> None:
    assert _decide(who, model_stack, fed, text) == expected


@pytest.mark.parametrize(
    ("model_stack", "fed", "reason"),
    [
        ("acme", {"task": "planning"}, "either in 'model' or in 'federation'"),
        ("auto", {"retailer": "brand_x"}, "is a manufacturer adapter, not a retailer"),
        ("auto", {"task": "acme"}, "is a retailer adapter, not a task"),
        ("auto", {"weights": {"task": 0}}, r"\(0, 10\]"),
    ],
)
def test_impossible_stacks(model_stack: str, fed: dict, reason: str) -> None:
    with pytest.raises(PolicyError, match=reason):
        _decide(BRAND_X, model_stack, fed, "plan")


def test_federation_object_is_strict() -> None:
    with pytest.raises(ValueError, match="extra"):
        FederationRequest.model_validate({"retailer": "acme", "sql": "drop table"})
    with pytest.raises(ValueError):
        FederationRequest.model_validate({"weights": {"brand": 1}})


def test_classifier_prefers_most_hits() -> None:
    assert classify_task("plan the budget and the spend, with a headline") == "planning"
    assert classify_task("nothing relevant") is None


@pytest.mark.parametrize(
    ("prompt", "task"),
    [  # the prompts substring matching got wrong (issue #28), as a person would route them
        ("Write a headline for our plant-based coffee", "creative"),
        ("Our customers love the roast: write copy", "creative"),
        ("Write three taglines for the spring flight", "creative"),
        ("Draft a short ad", "creative"),
        ("Create social copy", "creative"),
        ("Plan 5000 dollars for coffee", "planning"),
        ("How should we allocate spend across placements?", "planning"),
        ("What iROAS should we forecast for the spring flight?", "planning"),
        ("Map these retailer columns onto our schema", "harmonization"),
        ("A planet-friendly roaster", None),  # plan-, roas- inside other words: no task
        ("Plan an ad", None),  # one hit each: no confident choice
    ],
)
def test_task_words_are_matched_at_word_boundaries(prompt: str, task: str | None) -> None:
    assert classify_task(prompt) == task


def test_rate_limiter_refills_over_time() -> None:
    now = [0.0]
    rl = RateLimiter(clock=lambda: now[0])
    assert [rl.acquire("t", 2) for _ in range(2)] == [0.0, 0.0]
    wait = rl.acquire("t", 2)
    assert 29 < wait <= 30  # 2/minute: one token every 30 s
    assert rl.acquire("other", 2) == 0.0  # per tenant
    now[0] = 30.0
    assert rl.acquire("t", 2) == 0.0


def test_audit_log_appends_json_lines(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit" / "decisions.jsonl")
    log.record(event="compose", decision="allowed", tenant="a")
    log.record(event="compose", decision="denied", tenant="b", status=403)
    lines = [json.loads(x) for x in (tmp_path / "audit" / "decisions.jsonl").read_text().splitlines()]
    assert [x["decision"] for x in lines] == ["allowed", "denied"] and all("ts" in x for x in lines)


def test_auto_is_a_reserved_adapter_id() -> None:
    from adapters import InvalidAdapter, validate_adapter_id

    with pytest.raises(InvalidAdapter, match="reserved"):
        validate_adapter_id("auto")
    assert StackPart("auto").id == "auto"  # but it parses in a model name (base:auto)


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({"prompt": "plan it"}, "plan it"),
        (
            {
                "messages": [
                    {"role": "user", "content": "plan"},
                    {"role": "assistant", "content": "ok"},
                    {"role": "user", "content": "now a headline"},
                ]
            },
            "now a headline",
        ),
        ({"messages": [{"role": "system", "content": "x"}]}, ""),
        ({"messages": "not a list"}, ""),
        ({}, ""),
    ],
)
def test_classifier_reads_the_last_user_turn(body: dict, text: str) -> None:
    from federation.access import prompt_text

    assert prompt_text(body) == text
