"""Training text derived from the synthetic market, one corpus per adapter kind (prompt, response pairs):

- ``industry``: a retail-media glossary (iROAS vs ROAS, attributed sales, lookback windows, new-to-brand);
- ``retailer``: the retailer's placements and their attributed ROAS measured on its own log;
- ``manufacturer``: the brand's PRIVATE product facts (price, margin, stock, promo discount, elasticity) — what
  only the brand's adapter carries, never the clean room;
- ``task``: planning examples (a budget split read off the brand's own spend history) and ad-line examples.
Deterministic by the market's seed; feed them to ``rmn adapters train`` (``rmn market corpus``).
"""

from __future__ import annotations

import numpy as np

from planning.market import Market

GLOSSARY = [
    ("What is iROAS?", "iROAS is incremental revenue divided by ad spend: only sales the ads caused count."),
    (
        "How is ROAS different from iROAS?",
        "ROAS divides all attributed revenue by spend, including sales that "
        "would have happened anyway; iROAS counts only the incremental part, so ROAS overstates it.",
    ),
    (
        "What are attributed sales?",
        "Sales a retailer credits to an ad because the buyer saw or clicked it "
        "within the lookback window, usually 14 days.",
    ),
    (
        "What does new-to-brand mean?",
        "A purchase by a shopper who had not bought the brand in the last 12 months.",
    ),
    (
        "Why use a clean room?",
        "To measure campaigns on shopper-level data that never leaves the retailer: only "
        "aggregates over at least k distinct shoppers are released.",
    ),
    (
        "What is a sponsored product ad?",
        "A product listing promoted in the retailer's search results and category pages, paid per click.",
    ),
]


def corpus(market: Market, kind: str, owner: str | None = None) -> list[tuple[str, str]]:
    """(prompt, response) pairs of ``kind`` for ``owner`` (a brand for ``manufacturer``; else unused)."""
    if kind == "industry":
        return list(GLOSSARY)
    if kind == "retailer":
        return _retailer(market)
    if kind == "manufacturer":
        if owner is None:
            raise ValueError("a manufacturer corpus needs the brand (owner)")
        return _brand(market, owner)
    if kind == "task":
        if owner is None:
            raise ValueError("a task corpus needs a brand to draw its examples from (owner)")
        return _tasks(market, owner)
    raise ValueError(f"unknown corpus kind {kind!r} (industry, retailer, manufacturer, task)")


def _retailer(market: Market) -> list[tuple[str, str]]:
    r = market.config.retailer
    spend = market.spend.sum(axis=(0, 2))
    revenue = market.attributed.sum(axis=(0, 2))
    out = []
    for j, p in enumerate(market.placements):
        roas = revenue[j] / spend[j] if spend[j] > 0 else 0.0
        out.append(
            (
                f"How does {p} perform at {r}?",
                f"At {r}, {p} returned {roas:.2f} in attributed sales per dollar "
                f"over the last {market.config.days} days.",
            )
        )
    best = market.placements[int(np.argmax(revenue / np.maximum(spend, 1e-9)))]
    out.append((f"Which {r} placement has the best attributed ROAS?", f"{best}, on {r}'s own measurement."))
    return out


def _brand(market: Market, brand: str) -> list[tuple[str, str]]:
    data = market.brand_data(brand)
    f = data.facts
    out = []
    for i, sku in enumerate(f.sku):
        out.append(
            (
                f"Tell me about {sku}.",
                f"{sku} is a {brand} {f.category[i]} product priced {f.price[i]:.2f} with a "
                f"{100 * f.margin[i]:.0f}% margin; {int(f.stock[i])} units in stock; promotions cut its price by "
                f"{100 * f.discount[i]:.0f}% and lift demand with elasticity {f.elasticity[i]:.1f}.",
            )
        )
        out.append((f"What margin does {sku} make?", f"{100 * f.margin[i]:.0f}% of revenue."))
    return out


def _tasks(market: Market, brand: str) -> list[tuple[str, str]]:
    data = market.brand_data(brand)
    share = data.spend.sum(axis=2)  # (sku, placement): the brand's own past spend
    share = share / max(float(share.sum()), 1e-9)
    top = np.argsort(-share.ravel())[:3]
    n_pl = len(data.placements)
    split = "; ".join(
        f"{100 * share.ravel()[k]:.0f}% to {data.facts.sku[k // n_pl]} on {data.placements[k % n_pl]}"
        for k in top
    )
    out = [
        (
            f"Plan a media budget for {brand} at {market.config.retailer}.",
            f"Plan: {split}; keep 5% to explore.",
        ),
    ]
    for i, sku in enumerate(data.facts.sku[:6]):
        out.append(
            (
                f"Write an ad line for {sku}.",
                f"{brand.capitalize()} {data.facts.category[i]}: fresh on your shelf.",
            )
        )
    return out
