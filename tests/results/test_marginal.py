"""Marginal effects (hierfit.results.marginal): exact where the answer is known, equal to a
direct computation of the same quantity where it is not, and paired draw by draw."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import hierfit
from hierfit.exceptions import DataError, FitWarning, SpecError, UnseenGroupsWarning
from hierfit.results import marginal

FORMULA = "y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)"


@pytest.fixture(scope="module")
def sim() -> hierfit.Simulation:
    return hierfit.simulate(n_markets=6, n_submarkets=4, rows_per_submarket=25, seed=2)


@pytest.fixture(scope="module")
def lmm(sim) -> hierfit.FitResult:
    return hierfit.fit(FORMULA, sim.data, engine="mixed")


@pytest.fixture(scope="module")
def ols(sim) -> hierfit.FitResult:
    return hierfit.fit(FORMULA, sim.data, engine="ols")


@pytest.fixture(scope="module")
def logit_sim() -> hierfit.Simulation:
    return hierfit.simulate(n_markets=8, n_submarkets=3, rows_per_submarket=40, seed=5, family="bernoulli")


@pytest.fixture(scope="module")
def logit(logit_sim) -> hierfit.FitResult:
    return hierfit.fit(FORMULA, logit_sim.data, engine="mixed", family="bernoulli")


def _estimate(fit, name: str) -> float:
    return float(fit.fixed_effects().set_index("term").loc[name, "estimate"])


def test_average_slope_of_a_gaussian_lmm_is_the_fixed_effect(lmm, sim) -> None:
    """x2 has no varying slope: its average marginal effect is beta_x2, to rounding; its
    standard error (from the joint draws) is lme4's, to Monte Carlo error (1,000 draws: ~2%)."""
    ame = lmm.slopes(sim.data, "x2")
    fe = lmm.fixed_effects().set_index("term").loc["x2"]
    assert ame[["term", "n_rows"]].values.tolist() == [["x2", len(sim.data)]]
    assert ame["estimate"].iloc[0] == pytest.approx(fe["estimate"], rel=1e-9)
    assert ame["std_error"].iloc[0] == pytest.approx(fe["std_error"], rel=0.1)
    assert ame["lower"].iloc[0] < fe["estimate"] < ame["upper"].iloc[0]


def test_slope_by_market_is_each_markets_total_slope(lmm, sim) -> None:
    """x1 varies by market: within a market the slope is beta + b_market, exactly."""
    by_market = lmm.slopes(sim.data, "x1", by="market").set_index("market")["estimate"]
    totals = lmm.group_effects(kind="total")
    totals = totals[(totals.level == "market") & (totals.term == "x1")].set_index("group")["estimate"]
    np.testing.assert_allclose(by_market.to_numpy(), totals.loc[by_market.index].to_numpy(), rtol=1e-8)
    # and the overall average is the row-weighted mean of the markets' slopes
    counts = sim.data["market"].value_counts()
    overall = lmm.slopes(sim.data, "x1")["estimate"].iloc[0]
    assert overall == pytest.approx(float((by_market * counts.loc[by_market.index]).sum() / counts.sum()), rel=1e-9)


def test_ols_intervals_are_the_exact_delta_method(ols, sim) -> None:
    """With an exact Gaussian sampling distribution the slope of a linear predictor is a
    linear function of the coefficients: its interval is the coefficient's, and per-row
    predictions' intervals are predict's confidence intervals."""
    ame = ols.slopes(sim.data, "x2").iloc[0]
    fe = ols.fixed_effects().set_index("term").loc["x2"]
    for col in ("estimate", "std_error", "lower", "upper"):
        assert ame[col] == pytest.approx(fe[col], rel=1e-6)
    rows = ols.predictions(sim.data)
    ci = ols.predict(sim.data, interval="confidence")
    np.testing.assert_allclose(rows[["lower", "upper"]].to_numpy(), ci[["lower", "upper"]].to_numpy(), rtol=1e-10)


def test_logit_average_marginal_effect_equals_a_direct_finite_difference(logit, logit_sim) -> None:
    d = logit_sim.data
    h = 1e-4 * float(np.ptp(d["x2"]))
    lo = logit.predict(d.assign(x2=d["x2"] - h / 2))["prediction"]
    hi = logit.predict(d.assign(x2=d["x2"] + h / 2))["prediction"]
    direct = float(((hi - lo) / h).mean())
    ame = logit.slopes(d, "x2")
    assert ame["estimate"].iloc[0] == pytest.approx(direct, rel=1e-10)
    # and the derivative itself: beta * mean p(1 - p) (x2 has no varying slope), to O(h^2)
    p = logit.predict(d)["prediction"]
    assert ame["estimate"].iloc[0] == pytest.approx(_estimate(logit, "x2") * float((p * (1 - p)).mean()), rel=1e-6)
    lower, upper = ame[["lower", "upper"]].iloc[0]
    assert lower < ame["estimate"].iloc[0] < upper


def test_logit_comparisons_are_the_direct_contrast_of_predictions(logit, logit_sim) -> None:
    d = logit_sim.data
    lo = logit.predict(d.assign(x1=-1.0))["prediction"]
    hi = logit.predict(d.assign(x1=1.0))["prediction"]
    diff = logit.comparisons(d, "x1", values=(-1.0, 1.0))
    ratio = logit.comparisons(d, "x1", values=(-1.0, 1.0), comparison="ratio")
    assert diff[["term", "contrast"]].values.tolist() == [["x1", "1.0 - -1.0"]]
    assert diff["estimate"].iloc[0] == pytest.approx(float((hi - lo).mean()), rel=1e-12)
    assert ratio["estimate"].iloc[0] == pytest.approx(float(hi.mean() / lo.mean()), rel=1e-12)
    by_row = logit.comparisons(d, "x1", values=(-1.0, 1.0), by=None)
    pd.testing.assert_index_equal(by_row.index, d.index)
    np.testing.assert_allclose(by_row["estimate"], hi - lo, rtol=1e-12)


def test_contrast_draws_are_paired(lmm, sim) -> None:
    """Both copies of a contrast use the same parameter draw: a contrast of a value with itself
    is 0 with standard error 0 (unpaired draws would give an SD of about sqrt(2) × the mean's)."""
    same = lmm.comparisons(sim.data, "x2", values=(0.5, 0.5))
    assert same["estimate"].iloc[0] == 0.0 and same["std_error"].iloc[0] == 0.0
    plus = lmm.comparisons(sim.data, "x2")  # +1 centred on each row: beta_x2 for a linear predictor
    assert plus["contrast"].iloc[0] == "+1"
    assert plus["estimate"].iloc[0] == pytest.approx(_estimate(lmm, "x2"), rel=1e-12)


def test_group_contrasts_and_averages_by_group(lmm, sim) -> None:
    d = sim.data
    by = lmm.predictions(d, by="market")
    expected = lmm.predict(d)["prediction"].groupby(d["market"]).mean()
    np.testing.assert_allclose(by["estimate"], expected.loc[by["market"]].to_numpy(), rtol=1e-12)
    assert by["n_rows"].tolist() == d["market"].value_counts().loc[by["market"]].tolist()
    markets = sorted(d["market"].unique())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnseenGroupsWarning)  # market B's submarkets are not under market A
        contrasts = lmm.comparisons(d, "market")
    assert contrasts["contrast"].tolist() == [f"{m} - {markets[0]}" for m in markets[1:]]


def test_row_order_does_not_change_averages(lmm, sim) -> None:
    perm = sim.data.sample(frac=1.0, random_state=3)
    a = lmm.slopes(sim.data, "x1", by="market")
    b = lmm.slopes(perm, "x1", by="market")
    np.testing.assert_allclose(a[["estimate", "std_error", "lower", "upper"]], b[["estimate", "std_error", "lower", "upper"]],
                               rtol=1e-9)


def test_blocks_of_rows_give_the_same_answer(lmm, sim, monkeypatch) -> None:
    """Draws are formed a block of rows at a time (bounded memory); the blocks change nothing."""
    whole = lmm.predictions(sim.data, by="market")
    rows = lmm.predictions(sim.data)
    monkeypatch.setattr(marginal, "CHUNK_ENTRIES", 37 * marginal.MAX_DRAWS)
    pd.testing.assert_frame_equal(lmm.predictions(sim.data, by="market"), whole, rtol=1e-12)
    pd.testing.assert_frame_equal(lmm.predictions(sim.data), rows, rtol=1e-12)


def test_trees_take_a_secant(sim) -> None:
    """A tiny step divides a tree's jumps at the few rows next to a split by the step; the
    default step for trees is a tenth of the range, which sits near the true slope (0.5 per x1
    on this tree, whose fixed slope the mixed model puts at 0.52)."""
    fit = hierfit.fit(FORMULA, sim.data, engine="lightgbm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        secant = fit.slopes(sim.data, "x1")["estimate"].iloc[0]
        tiny = fit.slopes(sim.data, "x1", eps=1e-4 * float(np.ptp(sim.data["x1"])))["estimate"].iloc[0]
    assert 0.3 < secant < 0.8
    assert abs(tiny - 0.5) > 1.0  # the reason for the secant


def test_datagrid_at_means_and_counterfactual(lmm, sim) -> None:
    d = sim.data
    grid = hierfit.datagrid(d, x1=[-1.0, 0.0, 1.0])
    assert len(grid) == 3 and list(grid.columns) == list(d.columns)
    assert grid["x2"].tolist() == [pytest.approx(d["x2"].mean())] * 3
    # the grouping columns are one observed (market, submarket) pair, not two separate modes
    pair = tuple(grid[["market", "submarket"]].iloc[0])
    assert pair in set(zip(d["market"], d["submarket"]))
    at = lmm.predictions(grid)
    step = np.diff(at["estimate"].to_numpy())
    slope = lmm.group_effects(kind="total").query("level == 'market' and term == 'x1' and group == @pair[0]")["estimate"].iloc[0]
    np.testing.assert_allclose(step, [slope, slope], rtol=1e-10)
    cf = hierfit.datagrid(d, grid_type="counterfactual", x1=[0.0, 1.0])
    assert len(cf) == 2 * len(d)
    avg = lmm.predictions(cf, by="x1")
    assert avg["x1"].tolist() == [0.0, 1.0] and avg["n_rows"].tolist() == [len(d), len(d)]


def test_bad_requests_are_named(lmm, sim) -> None:
    d = sim.data
    with pytest.raises(DataError, match="'nope' is not a column"):
        lmm.slopes(d, "nope")
    with pytest.raises(SpecError, match="'x3' is not a predictor of the formula"):
        lmm.slopes(d.assign(x3=1.0), "x3")
    with pytest.raises(SpecError, match="not a predictor"):
        lmm.slopes(d, "y")
    with pytest.raises(DataError, match="needs a numeric variable; 'market'"):
        lmm.slopes(d, "market")
    with pytest.raises(SpecError, match="'by' must be None"):
        lmm.predictions(d, by="nope")
    with pytest.raises(SpecError, match="'eps'"):
        lmm.slopes(d, "x1", eps=0.0)
    with pytest.raises(SpecError, match="'comparison' must be one of"):
        lmm.comparisons(d, "x1", comparison="odds")
    with pytest.raises(SpecError, match="'scale' must be"):
        lmm.predictions(d, scale="probability")
    with pytest.raises(SpecError, match="'values' for 'x1'"):
        lmm.comparisons(d, "x1", values="big")
    with pytest.raises(SpecError, match="'grid_type'"):
        hierfit.datagrid(d, grid_type="balanced")
    with pytest.raises(DataError, match="not in the data"):
        hierfit.datagrid(d, x9=[1])
