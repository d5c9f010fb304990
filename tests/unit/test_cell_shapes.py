"""What the full-data curves are fitted on and how (planning/curves.py): per-cell shapes (``_cell_shapes``) —
clean response data gets each SKU x placement its own shape, noisy data keeps shapes near the placement's pooled
one, the held-out weeks decide which — and the lift tests with their holdout term modelled
(``_lift_with_modelled_holdout``): less noise, no bias."""

from __future__ import annotations

import numpy as np
import pytest

from planning.curves import _lift_with_modelled_holdout, fit_brand
from planning.market import Market, MarketConfig, generate


def _clean(seed: int) -> Market:
    """The market with a perfect lift test: the true incremental revenue, no noise (nothing held out)."""
    market = generate(MarketConfig(seed=seed))
    f = market.facts
    unit_price = f.price[:, None] * np.where(f.promo, 1 - f.discount[:, None], 1.0)
    market.lift = market.attributed = market.true_incremental_units() * unit_price[:, None, :]
    return market


def _s_ratios(market: Market, brand: str, cell_shapes: bool) -> np.ndarray:
    """Fitted over true ``s`` per cell of ``brand``."""
    idx = market.brand_index(brand)
    data = market.brand_data(brand)
    fit = fit_brand(data, cell_shapes=cell_shapes)
    return np.array([
        c.s / market.truth.s[idx[data.facts.sku.index(c.sku)], market.placements.index(c.placement)]
        for c in fit.curves
    ])  # fmt: skip


@pytest.mark.parametrize("seed", [1, 2])
def test_clean_data_gets_each_cells_own_shape(seed: int) -> None:
    """Noise-free: 85 % of cells within 20 % of the true shape; the pooled shape alone misses by more than that
    in over a quarter of them (what the per-cell step is for)."""
    market = _clean(seed)
    for brand in ("brewmax", "beanco"):
        own = np.abs(np.log(_s_ratios(market, brand, True)))
        pooled = np.abs(np.log(_s_ratios(market, brand, False)))
        assert np.mean(own <= np.log(1.2)) >= 0.85, np.exp(own).round(2)
        assert np.mean(pooled > np.log(1.2)) > 0.25, np.exp(pooled).round(2)


def test_noisy_data_keeps_shapes_near_the_pooled_ones() -> None:
    """Lift-test noise: per-cell shapes stay no farther from the truth than the pooled ones (median error over
    seeds 1-4 x two brands), and the fitted levels stay finite and non-negative."""
    own, pooled = [], []
    for seed in range(1, 5):
        market = generate(MarketConfig(seed=seed))
        for brand in ("brewmax", "beanco"):
            own += list(np.abs(np.log(_s_ratios(market, brand, True))))
            pooled += list(np.abs(np.log(_s_ratios(market, brand, False))))
            assert all(np.isfinite(c.a) and c.a >= 0 for c in fit_brand(market.brand_data(brand)).curves)
    assert np.median(own) <= np.median(pooled) * 1.05, (np.median(own), np.median(pooled))


def test_a_bootstrap_resample_fits_per_cell_shapes_too() -> None:
    """Repeated days (a block resample) are fine: each keeps its own week for the held-out split."""
    data = _clean(3).brand_data("brewmax")
    days = np.random.default_rng(0).integers(0, data.spend.shape[2], data.spend.shape[2])
    fit = fit_brand(data, days)
    assert fit.curves and all(c.s > 0 for c in fit.curves)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_the_modelled_holdout_takes_out_noise_not_signal(seed: int) -> None:
    """The lift the curves are fitted on, with the holdout's estimate of exposed baseline buying modelled: its
    squared error against the TRUE incremental revenue per cell-day is at most 0.7 of the raw lift tests', and its
    total error stays that of the raw lift (within 3 % of the true total): noise out, no bias in."""
    market = generate(MarketConfig(seed=seed))
    f = market.facts
    unit_price = f.price[:, None] * np.where(f.promo, 1 - f.discount[:, None], 1.0)
    true = market.true_incremental_units() * unit_price[:, None, :]
    for brand in ("brewmax", "beanco"):
        data, truth = market.brand_data(brand), true[market.brand_index(brand)]
        assert data.lift is not None
        modelled, _ = _lift_with_modelled_holdout(data.spend, data.attributed, data.lift)
        assert ((modelled - truth) ** 2).sum() <= 0.7 * ((data.lift - truth) ** 2).sum()
        assert abs((modelled - truth).sum() - (data.lift - truth).sum()) <= 0.03 * truth.sum()


def test_columns_that_do_not_read_as_a_lift_test_keep_the_raw_lift() -> None:
    """Files whose attributed revenue is missing (0) or equal to the lift (nothing held out) leave the lift as it
    is: the modelled holdout is only subtracted where attributed - lift looks like one."""
    data = generate(MarketConfig(seed=2)).brand_data("beanco")
    assert data.lift is not None
    for attributed in (np.zeros_like(data.lift), data.lift.copy()):
        out, used = _lift_with_modelled_holdout(data.spend, attributed, data.lift)
        np.testing.assert_array_equal(out, data.lift)
        assert not used.any()
    modelled, used = _lift_with_modelled_holdout(data.spend, data.attributed, data.lift)
    assert not np.array_equal(modelled, data.lift) and used.any()  # the market's own columns do read as one
    fit = fit_brand(data)
    k, n = fit.holdout_modelled or (0, 0)
    assert 0 < k <= n == len(fit.curves)  # said in the plan: "their holdout term modelled in k of n cells"
    assert (
        fit.fitted_on(data)
        == f"incremental revenue (lift tests), their holdout term modelled in {k} of {n} cells"
    )
    assert fit.describe()["holdout_modelled"] == f"{k}/{n}"
