"""Carry-over (adstock) and day-of-week swings: the market can have them (planning/market.py), the full-data
fit finds them where they are and not where they are not (planning/curves.py), the clean-room shape fit finds the
carry-over from released daily totals, and the backtest forecasts held-out days with them."""

from __future__ import annotations

import numpy as np
import pytest

from planning.brand_files import backtest
from planning.curves import fit_aggregates, fit_brand
from planning.market import MarketConfig, carry, generate, weekly


def test_carry_is_a_normalised_geometric_adstock() -> None:
    x = np.array([10.0, 0.0, 0.0, 10.0])
    np.testing.assert_allclose(carry(x, 0.5, start=np.array(0.0)), [5.0, 2.5, 1.25, 5.625])
    flat = np.full((2, 3, 40), 7.0)
    np.testing.assert_allclose(carry(flat, 0.6), flat)  # a flat spend's steady state is that spend
    assert carry(x, 0.0) is x
    w = weekly(14, 0.3)
    assert w.mean() == pytest.approx(1.0) and w.argmax() % 7 == 3 and w.argmin() % 7 == 6  # Thursday, Sunday
    np.testing.assert_array_equal(weekly(7, 0.0), np.ones(7))


def test_the_default_market_has_neither_and_the_arrays_of_one_with_them_differ() -> None:
    plain, swung = (
        generate(MarketConfig(seed=4)),
        generate(MarketConfig(seed=4, carryover=0.5, weekly_amplitude=0.3)),
    )
    np.testing.assert_array_equal(plain.spend, swung.spend)  # same flighting: only the response moves
    assert not np.array_equal(plain.units, swung.units)
    np.testing.assert_array_equal(plain.truth.a, swung.truth.a)  # the truth is an average day of a flat plan


@pytest.mark.parametrize("brand", ["brewmax", "beanco"])
def test_the_fit_finds_carryover_where_it_is_and_none_where_it_is_not(brand: str) -> None:
    """Seeds 1-6: true carry-over 0.5 is found within 0.2 on at least 5 of the 6 brands' placement medians;
    a market without it gets none in at least 80 % of placements."""
    found, none = [], []
    for seed in range(1, 7):
        with_c = fit_brand(generate(MarketConfig(seed=seed, carryover=0.5)).brand_data(brand))
        found.append(float(np.median(list(with_c.carryover.values()))))
        none += list(fit_brand(generate(MarketConfig(seed=seed)).brand_data(brand)).carryover.values())
    assert sum(abs(c - 0.5) <= 0.2 for c in found) >= 5, found
    assert np.mean(np.array(none) == 0.0) >= 0.8, none


def test_weekday_factors_only_where_the_week_swings() -> None:
    """Seeds 1-8 x two brands: no factors on the plain market in >= 14 of 16; where they are kept on a swung
    market (carry-over 0.5, amplitude 0.3) they correlate with the true swing."""
    spurious, kept = 0, []
    truth = weekly(7, 0.3)
    for seed in range(1, 9):
        for brand in ("brewmax", "beanco"):
            spurious += fit_brand(generate(MarketConfig(seed=seed)).brand_data(brand)).weekday is not None
            fit = fit_brand(
                generate(MarketConfig(seed=seed, carryover=0.5, weekly_amplitude=0.3)).brand_data(brand)
            )
            if fit.weekday is not None:
                kept.append(float(np.corrcoef(fit.weekday, truth)[0, 1]))
    assert spurious <= 2, spurious
    assert len(kept) >= 8 and np.median(kept) > 0.8, kept


def test_fitting_carryover_forecasts_held_out_weeks_better_than_ignoring_it() -> None:
    """Backtest on the last 14 days of 56, seeds 1-4 x two brands, true carry-over 0.6: the fit with carry-over
    has the lower WAPE in most cases and on average."""
    with_c, without = [], []
    for seed in range(1, 5):
        market = generate(MarketConfig(seed=seed, carryover=0.6))
        for brand in ("brewmax", "beanco"):
            data = market.brand_data(brand)
            with_c.append(backtest(data, 14)["wape"])
            without.append(backtest(data, 14, carryovers=(0.0,))["wape"])
    wins = sum(a < b for a, b in zip(with_c, without, strict=True))
    assert wins >= 6 and np.mean(with_c) < np.mean(without), (with_c, without)


def test_the_clean_room_shape_fit_finds_carryover_from_complete_daily_totals() -> None:
    """Placement x day totals of a carry-over market (what the clean room releases), seeds 1-4: the carry-over is
    found (pooled over the placements, 0.3-0.8) in at least 3 of 4 seeds, none in at least 3 of 4 without it; a
    placement with a missing day falls back to none (a gap breaks the carried spend)."""
    found, none = [], []
    for seed, c in [(s, c) for s in range(1, 5) for c in (0.6, 0.0)]:
        market = generate(MarketConfig(seed=seed, carryover=c))
        idx = market.brand_index("brewmax")
        days = market.config.days
        daily = [
            {"placement": p, "event_date": f"2026-{d:03d}", "spend": float(market.spend[idx, j, d].sum()),
             "revenue": float(market.attributed[idx, j, d].sum())}
            for j, p in enumerate(market.placements)
            for d in range(days)
        ]  # fmt: skip
        cells = [
            {"sku": market.skus[i], "placement": p, "spend": float(market.spend[i, j].sum()),
             "revenue": float(market.attributed[i, j].sum())}
            for i in idx
            for j, p in enumerate(market.placements)
        ]  # fmt: skip
        curves, carryover = fit_aggregates(cells, daily, days)
        assert curves and set(carryover) == set(market.placements) and len(set(carryover.values())) == 1
        (found if c else none).append(carryover[market.placements[0]])
        _, gapped = fit_aggregates(cells, daily[1:], days)
        assert gapped[market.placements[0]] == 0.0
    assert sum(0.3 <= c <= 0.8 for c in found) >= 3 and sum(c == 0.0 for c in none) >= 3, (found, none)
