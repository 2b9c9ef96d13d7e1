"""Engine ``ols``: effects coding nested in parents, parity with plain dummy OLS, recovery."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf

import hierfit


@pytest.fixture(scope="module")
def ols_fit(reference_sim):
    return hierfit.fit(reference_sim.formula, reference_sim.data, engine="ols", national="United_state")


def test_predictions_equal_plain_dummy_ols(reference_sim, ols_fit) -> None:
    """Same column space as dummy coding: x2, x1 × market dummies, one dummy per submarket."""
    df = reference_sim.data
    market = pd.get_dummies(df["market"], dtype=float)
    sub = pd.get_dummies(df["market"] + ":" + df["submarket"], dtype=float)
    X = np.column_stack([df["x2"], market.to_numpy() * df["x1"].to_numpy()[:, None], sub.to_numpy()])
    coef, *_ = np.linalg.lstsq(X, df["y"].to_numpy(), rcond=None)
    np.testing.assert_allclose(ols_fit.predict(df)["prediction"].to_numpy(), X @ coef, atol=1e-8, rtol=0)


def test_effects_coding_sums_to_zero(ols_fit) -> None:
    dev = ols_fit.group_effects("deviation")
    market = dev[dev.level == "market"]
    for term in ("Intercept", "x1"):
        assert abs(market[market.term == term].estimate.sum()) < 1e-10
    sub = dev[dev.level == "submarket"]
    assert np.abs(sub.groupby("parent").estimate.sum()).max() < 1e-10
    tot = ols_fit.group_effects("total")
    national = tot[(tot.level == "national") & (tot.term == "Intercept")].estimate.item()
    market_tot = tot[(tot.level == "market") & (tot.term == "Intercept")].estimate
    assert national == pytest.approx(market_tot.mean(), abs=1e-10)  # the intercept IS the national level
    assert tot.iloc[0]["group"] == "United_state"


def test_recovers_simulated_submarket_totals(reference_sim, ols_fit) -> None:
    """RMSE of submarket totals vs truth at N=5,000.

    Each submarket total is estimated from its own 100 rows: SE ≈ σ/√100 = 0.10 (the x1 and x2
    slopes are estimated from 500+ rows and add little). Over 50 submarkets the RMSE is then
    0.10·√(χ²₅₀/50), whose 99.9% quantile is ≈ 1.33 × 0.10; we allow 0.15.
    """
    truth = reference_sim.truth.group_effects("total")
    est = ols_fit.group_effects("total")
    m = truth.merge(est, on=["level", "group", "term"], suffixes=("_true", ""))
    sub = m[(m.level == "submarket") & (m.term == "Intercept")]
    assert len(sub) == 50
    rmse = float(np.sqrt(np.mean((sub.estimate - sub.estimate_true) ** 2)))
    print(f"ols submarket-total RMSE vs truth at N=5000: {rmse:.4f}")
    assert rmse < 0.15
    # and the intervals are honest: 90% intervals cover about 90% of the 50 true totals
    covered = ((sub.lower <= sub.estimate_true) & (sub.estimate_true <= sub.upper)).mean()
    assert 0.74 <= covered <= 1.0


def test_standard_errors_match_statsmodels_sum_coding(reference_sim) -> None:
    df = reference_sim.data
    fit = hierfit.fit("y ~ 1 + (1 | market)", df, engine="ols")
    ref = smf.ols("y ~ C(market, Sum)", data=df).fit()
    fe = fit.fixed_effects().set_index("term")
    assert fe.loc["Intercept", "estimate"] == pytest.approx(ref.params["Intercept"], rel=1e-10)
    assert fe.loc["Intercept", "std_error"] == pytest.approx(ref.bse["Intercept"], rel=1e-8)
    dev = fit.group_effects("deviation").query("level == 'market'")
    np.testing.assert_allclose(dev.std_error.to_numpy()[:-1], ref.bse.to_numpy()[1:], rtol=1e-8)
    ci = ref.conf_int(alpha=0.1).loc["Intercept"].to_numpy()
    np.testing.assert_allclose(fe.loc["Intercept", ["lower", "upper"]].to_numpy(dtype=float), ci, rtol=1e-8)


def test_prediction_intervals_cover(reference_sim, ols_fit) -> None:
    """Fresh outcomes from the same true means: 90% prediction intervals cover about 90%."""
    rng = np.random.default_rng(99)
    new = reference_sim.data.assign(y=reference_sim.truth.eta + rng.normal(0, 1.0, len(reference_sim.data)))
    pred = ols_fit.predict(new, interval="prediction")
    conf = ols_fit.predict(new, interval="confidence")
    assert ((pred.upper - pred.lower) > (conf.upper - conf.lower)).all()
    covered = ((pred.lower <= new.y) & (new.y <= pred.upper)).mean()
    assert 0.87 <= covered <= 0.93


def test_unseen_submarket_falls_back_to_its_market(reference_sim, ols_fit) -> None:
    row = reference_sim.data.head(1).copy()
    row["submarket"] = "Sub_new"
    with pytest.warns(hierfit.UnseenGroupsWarning, match="Market_01:Sub_new"):
        pred = ols_fit.predict(row)
    assert pred.level_used.item() == "market"
    with pytest.warns(hierfit.UnseenGroupsWarning):
        parts = ols_fit.decompose(row)
    assert parts["submarket[Intercept]"].item() == 0.0
    tot = ols_fit.group_effects("total").set_index(["level", "group", "term"])["estimate"]
    expected = tot["market", "Market_01", "Intercept"] + tot["market", "Market_01", "x1"] * row.x1.item() + ols_fit.fixed_effects().set_index("term").estimate["x2"] * row.x2.item()
    assert pred.prediction.item() == pytest.approx(expected, abs=1e-10)


def test_fit_is_row_order_invariant(reference_sim, ols_fit) -> None:
    shuffled = reference_sim.data.sample(frac=1.0, random_state=3)
    other = hierfit.fit(reference_sim.formula, shuffled, engine="ols", national="United_state")
    pd.testing.assert_frame_equal(other.group_effects(), ols_fit.group_effects(), rtol=1e-9, atol=1e-9)
