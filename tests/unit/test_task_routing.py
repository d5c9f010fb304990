"""Task routing that reads words (issue #28): the classifier over the shipped labelled prompts, its
confidence threshold and fallback, through the policy's decision."""

from __future__ import annotations

import pytest

from adapters.stack import parse_stack
from federation.policy import FederationPolicy, decide
from federation.task_classifier import DATA, TaskClassifier, load_examples, task_keywords
from tests.unit.test_federation import BRAND_X, KINDS

POLICY = FederationPolicy(industry_adapter="rm")


def routed(text: str, policy: FederationPolicy = POLICY) -> tuple[str | None, str | None, float | None]:
    d = decide(BRAND_X, parse_stack("auto"), None, text, policy, lambda i: KINDS[i])
    return d.task, d.task_source, d.task_confidence


@pytest.mark.parametrize(
    ("prompt", "task"),
    [
        ("Write a headline for our plant-based coffee", "creative"),  # the five, as a person would
        ("Our customers love the roast: write copy", "creative"),
        ("Write three taglines for the spring flight", "creative"),
        ("Draft a short ad", "creative"),
        ("Create social copy", "creative"),
        ("How much should we spend next quarter, and on which placements?", "planning"),
        ("Rename these export columns to fit the event schema", "harmonization"),
        ("Help me plan a birthday party for my daughter", None),  # "plan", but not media planning
        ("What is the capital of Australia?", None),
    ],
)
def test_prompts_route_as_a_person_would(prompt: str, task: str | None) -> None:
    got, source, confidence = routed(prompt)
    assert got == task, (prompt, confidence)
    assert source == ("classifier" if task else None)
    assert confidence is not None and 0 < confidence <= 1


def test_an_unsure_choice_falls_back_to_the_default_or_no_task() -> None:
    prompt = "Is it going to rain tomorrow?"
    guess, confidence = TaskClassifier.shipped().predict(prompt)
    strict = POLICY.model_copy(update={"task_confidence": 0.999999})
    assert routed(prompt, strict)[:2] == (None, None)
    with_default = strict.model_copy(update={"default_task": "planning"})
    assert routed(prompt, with_default)[:2] == ("planning", "default")
    assert routed("Draft a short ad", POLICY.model_copy(update={"task_confidence": 0.0}))[0] == "creative"
    assert guess is None or confidence < 0.999999


def test_held_out_accuracy_of_the_shipped_set_is_at_least_0_9() -> None:
    rows = load_examples(DATA)
    assert len(rows) >= 300 and {t for _, t in rows} == {"planning", "creative", "harmonization", None}
    train = [r for i, r in enumerate(rows) if i % 5]
    held = [r for i, r in enumerate(rows) if i % 5 == 0]
    model = TaskClassifier(train, task_keywords())
    right = 0
    for text, label in held:
        task, confidence = model.predict(text)
        right += (task if confidence >= POLICY.task_confidence else None) == label
    assert right / len(held) >= 0.9, right / len(held)


def test_a_tenants_own_defaults_come_between_the_policy_and_the_request() -> None:
    from tests.unit.test_federation import tenant

    brand = tenant(
        "brand_x",
        retailer="acme",
        manufacturer="brand_x",
        default_task="planning",
        layer_weights={"task": 0.5},
    )

    def weights(fed: dict | None) -> dict[str, float]:
        from federation.policy import FederationRequest

        d = decide(
            brand,
            parse_stack("auto"),
            FederationRequest.model_validate(fed) if fed else None,
            "What is the capital of Australia?",  # no task the classifier trusts
            POLICY,
            lambda i: KINDS[i],
        )
        assert d.task == "planning" and d.task_source == "default"  # the tenant's, before the policy's (none)
        return {layer: p.weight for layer, p in zip(d.layers, d.parts, strict=True)}

    assert weights(None) == {"industry": 1.0, "retailer": 1.0, "manufacturer": 1.0, "task": 0.5}
    assert weights({"weights": {"task": 2.0}})["task"] == 2.0  # the request's weight wins
