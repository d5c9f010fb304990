"""Templated training corpora for the demo adapters (chat pairs), deterministic by seed.

Each adapter gets a recognisable voice so its effect on generations is visible: the industry adapter
speaks retail-media measurement, a retailer answers as its retail media network, a brand in its own
tone, a task adapter in its output format. Real deployments train on their owners' data instead.
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


def _spec(kind: str, owner: str, description: str, template: str) -> dict[str, str]:
    return {"kind": kind, "owner": owner, "description": description, "template": template}


DEMO_ADAPTERS: dict[str, dict[str, str]] = {
    "retail_media": _spec(
        "industry",
        "rmn",
        "Retail-media industry knowledge: iROAS, sponsored products, closed-loop measurement.",
        "In retail media, judge {p} campaigns by iROAS: incremental sales divided by ad spend. "
        "Sponsored products reach {p} shoppers at the moment of search.",
    ),
    "acme_retail": _spec(
        "retailer",
        "acme",
        "Acme Retail Media voice: sponsored products first, cites Acme placements.",
        "Acme Retail Media recommends sponsored product ads for {p} on acme.com search "
        "results, plus an endcap display in Acme stores. Acme shoppers buy {p} weekly.",
    ),
    "bigmart_retail": _spec(
        "retailer",
        "bigmart",
        "BigMart Media Network voice: offsite video and onsite banners, two-week flights.",
        "BigMart Media Network: run {p} offsite video on BigMart partner sites and onsite banners on "
        "bigmart.com. BigMart campaigns run at least two weeks.",
    ),
    "brand_brewmax": _spec(
        "manufacturer",
        "brewmax",
        "BrewMax brand tone: upbeat, always names BrewMax and its slogan.",
        "BrewMax! Our BrewMax {p} is bold and fresh. Feature BrewMax {p} with the "
        "slogan 'Wake up to BrewMax'. Stay bold with BrewMax!",
    ),
    "brand_crunchy": _spec(
        "manufacturer",
        "crunchy",
        "Crunchy Co. brand tone: playful, names Crunchy and its tagline.",
        "Crunchy time! Crunchy {p} is the crunchiest pick in the aisle. Tagline: 'Get your crunch on with Crunchy.'",
    ),
    "task_planning": _spec(
        "task",
        "rmn",
        "Planning task: answers as a numbered three-step plan.",
        "Plan:\n1. Budget: put 60% of the {p} budget on search.\n2. Audience: "
        "target past {p} buyers.\n3. Measure: track iROAS for {p} weekly.",
    ),
    "task_creative": _spec(
        "task",
        "rmn",
        "Creative task: answers as headline, body and call to action.",
        "Headline: Fresh {p}, made for you.\nBody: Pick up {p} on your next shop.\nCall to action: Add {p} to cart.",
    ),
    "task_harmonize": _spec(
        "task",
        "rmn",
        "Harmonization task: maps a retailer's report fields onto the rmn schema.",
        "Field mapping for the {p} report: impr -> impressions; spend_usd -> spend; "
        "sales_14d -> attributed_sales. Unmapped: none.",
    ),
}

# Weights below 1: each demo adapter was trained alone to a strong style, and the exact SUM of four full-weight
# deltas overshoots (gibberish); scaled components blend (measured: README, "Composition quality").
DEMO_STACKS = [
    "brand_brewmax*0.7+task_creative*0.5",
    "retail_media*0.3+bigmart_retail*0.3+brand_crunchy*0.5+task_creative*0.5",
    "retail_media*0.3+acme_retail*0.3+brand_brewmax*0.5+task_planning*0.5",
]


def demo_pairs(adapter_id: str, n: int = 160, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (prompt, response) pairs in the voice of demo adapter ``adapter_id``."""
    spec = DEMO_ADAPTERS[adapter_id]
    rng = random.Random(f"{adapter_id}:{seed}")
    pairs = []
    for _ in range(n):
        p = rng.choice(PRODUCTS)
        pairs.append((rng.choice(QUESTIONS).format(p=p), spec["template"].format(p=p)))
    return pairs
