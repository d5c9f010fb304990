"""Templated training corpora for the demo adapters (chat pairs), deterministic by seed.

Each adapter gets a recognisable voice so its effect on generations is visible: the retailer answers
as its retail media network, the brand in its own tone with its products, the task adapter in its
output format. Real deployments train on their owners' data instead.
"""

from __future__ import annotations

import random

PRODUCTS = ["coffee", "cereal", "shampoo", "orange juice", "dog food", "yogurt", "detergent", "crackers"]
QUESTIONS = [
    "How should I promote {p} next month?",
    "Write a short ad idea for {p}.",
    "What is a good media plan for {p}?",
    "Give me one tip to sell more {p}.",
    "Which placement works best for {p}?",
    "Describe a campaign for {p} in one sentence.",
]

DEMO_ADAPTERS: dict[str, dict[str, str]] = {
    "acme_retail": {
        "kind": "retailer",
        "owner": "acme",
        "description": "Acme Retail Media voice: sponsored products first, cites Acme placements.",
        "template": "Acme Retail Media recommends sponsored product ads for {p} on acme.com search "
        "results, plus an endcap display in Acme stores. Acme shoppers buy {p} weekly.",
    },
    "brand_brewmax": {
        "kind": "manufacturer",
        "owner": "brewmax",
        "description": "BrewMax brand tone: upbeat, always names BrewMax and its slogan.",
        "template": "BrewMax! Our BrewMax {p} is bold and fresh. Feature BrewMax {p} with the "
        "slogan 'Wake up to BrewMax'. Stay bold with BrewMax!",
    },
    "task_planning": {
        "kind": "task",
        "owner": "rmn",
        "description": "Planning task: answers as a numbered three-step plan.",
        "template": "Plan:\n1. Budget: put 60% of the {p} budget on search.\n2. Audience: "
        "target past {p} buyers.\n3. Measure: track iROAS for {p} weekly.",
    },
}


def demo_pairs(adapter_id: str, n: int = 160, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (prompt, response) pairs in the voice of demo adapter ``adapter_id``."""
    spec = DEMO_ADAPTERS[adapter_id]
    rng = random.Random(f"{adapter_id}:{seed}")
    pairs = []
    for _ in range(n):
        p = rng.choice(PRODUCTS)
        pairs.append((rng.choice(QUESTIONS).format(p=p), spec["template"].format(p=p)))
    return pairs
