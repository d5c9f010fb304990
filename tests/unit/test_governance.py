"""Brand safety rules (issue #28): claim classes over the whole text, at word boundaries, under policies that
add up per retailer and brand; format problems go to a person; the documented combination with a model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from planning.governance import CLAIM_CLASSES, GovernancePolicy, check_text, combine, find_claims
from serving.data_config import GovernanceConfig

DATA = Path(__file__).parents[1] / "data"
COMPETITORS = ["Starbucks", "Folgers", "Nescafe", "Dunkin", "Maxwell House", "Lavazza", "Peet's", "Nespresso"]
POLICY = GovernancePolicy(
    blocked_claims=list(CLAIM_CLASSES), competitors=COMPETITORS, max_chars=90, min_chars=10
)


@pytest.mark.parametrize(
    ("line", "classes"),
    [  # every line the issue found passing as OK
        ("clinically proven to boost your immune system", {"health"}),
        ("The No. 1 coffee in America", {"superlative"}),
        ("better than Starbucks!", {"comparative"}),
        ("100% risk free", {"price_guarantee"}),
        ("safe for kids and pregnant women", {"sensitive_audience"}),
        ("Lose 10 lbs", {"health"}),
        ("Folgers tastes like burnt rubber. Ours doesn't.", {"comparative"}),
        ("Fresh coffee.\nGuaranteed cure for cancer", {"health", "price_guarantee"}),  # the second line too
    ],
)
def test_the_lines_that_passed_are_rejected_for_their_class(line: str, classes: set[str]) -> None:
    verdict = check_text(line, POLICY)
    assert verdict["decision"] == "rejected" and not verdict["ok"]
    assert set(verdict["claims"]) == classes


def test_the_demos_garbled_line_goes_to_a_reviewer() -> None:
    verdict = check_text("Head: Fresh Fresh Brew SmolHeadL", POLICY)
    assert verdict["decision"] == "pending"
    assert verdict["violations"] == [
        "starts with a label 'Head:'",
        "repeated word 'fresh'",
        "unusual capitalisation 'SmolHeadL'",
    ]


@pytest.mark.parametrize(
    "line",
    [
        "Every no. 1 fan of dark roast needs this bag.",
        "A plan-based approach to your weekly shop.",
        "Our plant-based creamer, now in oat and almond.",
        "Best-before date printed on every bag.",
        "Treat yourself to a slow Sunday brew.",
        "A healthy dose of flavour in every sip.",
        "Make a better cup at home with our grind guide.",
        "Gluten-free pastries, fresh coffee.",
        "Beats the afternoon slump? Try a cold brew.",
    ],
)
def test_tricky_negatives_are_ok(line: str) -> None:
    assert check_text(line, POLICY)["decision"] == "ok", find_claims(line, COMPETITORS)


def test_disguised_claims_are_normalised_first() -> None:
    assert "price_guarantee" in find_claims("Ｇｕａｒａｎｔｅｅｄ fresh.")  # full-width letters
    assert "health" in find_claims("c\u200bures headaches")  # a zero-width space inside the word
    assert "price_guarantee" in find_claims("Risk\u2011free trial.")  # a non-breaking hyphen
    assert "sensitive_audience" in find_claims("K I D S love it.")  # letters spelled apart


def test_policies_add_up_per_retailer_and_brand() -> None:
    cfg = GovernanceConfig(
        blocked_claims=["health"],
        banned_words=["cheap"],
        retailers={"acme": GovernancePolicy(blocked_claims=["price_guarantee"], max_chars=40)},
        brands={"brewmax": GovernancePolicy(competitors=["Folgers"], banned_words=["instant"])},
    )
    base, acme, both = cfg.policy(), cfg.policy("acme"), cfg.policy("acme", "brewmax")
    line = "Money-back promise: fresher than Folgers instant."
    assert check_text(line, base)["decision"] == "ok"  # price claims are not blocked by the deployment
    assert check_text(line, acme)["decision"] == "rejected"  # acme blocks them, and 40 characters
    verdict = check_text(line, both)
    assert {"price_guarantee", "comparative"} <= set(verdict["claims"])
    assert any("instant" in v for v in verdict["violations"]) and both.max_chars == 40
    assert set(both.blocked_claims) == {"health", "price_guarantee"}


def test_a_claim_only_the_model_sees_waits_for_a_person() -> None:
    rules = check_text("Slim down with our green bean extract.", POLICY)
    assert rules["decision"] == "ok"  # the rules miss it (held-out set, a known miss)
    assert combine(rules, ["health"], POLICY)["decision"] == "pending"
    assert combine(rules, [], POLICY)["decision"] == "ok"
    rejected = check_text("The best coffee for kids.", POLICY)
    assert combine(rejected, [], POLICY)["decision"] == "rejected"  # the model cannot clear a rule hit


def test_the_labelled_sets_are_what_the_bench_reads() -> None:
    for name, least in (("governance_lines.jsonl", 200), ("governance_lines_heldout.jsonl", 60)):
        rows = [json.loads(line) for line in (DATA / name).read_text().splitlines()]
        assert len(rows) >= least
        assert all(set(r["claims"]) <= set(CLAIM_CLASSES) for r in rows)
        for cls in CLAIM_CLASSES:
            assert sum(cls in r["claims"] for r in rows) >= 5, (name, cls)
        assert sum(not r["claims"] for r in rows) >= 10  # OK lines, tricky ones among them
