"""Predictive distributions, held-out scores and recovery against the truth."""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from scipy import stats
from scipy.special import xlogy

import hierfit
from hierfit.engines.base import Draws, PosteriorDraws
from hierfit.evaluate import Predictive, predictive, recovery, score
from hierfit.exceptions import DataError
from hierfit.model import get_family


@pytest.fixture(scope="module")
def ols_fit(small_sim):
    return hierfit.fit("y ~ x1 + x2 + (1 | market)", small_sim.data, engine="ols", national="United_state")


def test_ols_predictive_is_the_exact_t_of_ordinary_least_squares(small_sim, ols_fit):
    """Parity with statsmodels: same prediction, same observation interval, t density."""
    data = small_sim.data
    new = data.sample(40, random_state=1)
    ref = smf.ols("y ~ x1 + x2 + C(market)", data=data).fit()
    frame = ref.get_prediction(new).summary_frame(alpha=0.1)
    pred = predictive(ols_fit, new)
    assert pred.method == "t" and pred.df == ref.df_resid
    np.testing.assert_allclose(pred.mean, frame["mean"], rtol=1e-9, atol=1e-9)
    q = stats.t.ppf(0.95, pred.df)
    np.testing.assert_allclose(pred.mean - q * pred.scale, frame["obs_ci_lower"], rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(pred.mean + q * pred.scale, frame["obs_ci_upper"], rtol=1e-8, atol=1e-8)
    y = new["y"].to_numpy()
    scale = np.sqrt(frame["mean_se"].to_numpy() ** 2 + ref.scale)
    np.testing.assert_allclose(pred.logpdf(y), stats.t.logpdf(y, ref.df_resid, frame["mean"], scale), rtol=1e-8)
    # the same distribution FitResult.predict uses for its interval
    bounds = ols_fit.predict(new, interval="prediction", level=0.9)
    np.testing.assert_allclose(bounds["lower"], frame["obs_ci_lower"], rtol=1e-8, atol=1e-8)


def test_pit_of_a_correct_model_is_uniform(small_sim):
    sim = hierfit.simulate(n_markets=8, n_submarkets=4, rows_per_submarket=40, seed=5)
    fit = hierfit.fit(sim.formula, sim.data, engine="ols")
    pit = predictive(fit, sim.data).cdf(sim.data["y"].to_numpy())
    # 1280 rows: a miscalibrated scale (e.g. sigma off by 20%) fails this by a wide margin
    assert stats.kstest(pit, "uniform").pvalue > 1e-3
    reps = predictive(fit, sim.data).sample(50, np.random.default_rng(0))
    assert reps.shape == (50, len(sim.data))
    assert abs(reps.std() / sim.data["y"].std() - 1) < 0.05


def test_draw_mixture_density_and_cdf():
    mu = np.array([[0.0, 1.0], [2.0, 1.0]])  # two draws, two rows
    sigma = np.array([1.0, 0.5])
    pred = Predictive("draws", get_family("gaussian"), mu.mean(axis=0), mu_draws=mu, sigma_draws=sigma)
    y = np.array([0.5, 1.0])
    expected = np.log(0.5 * stats.norm.pdf(y, mu[0], 1.0) + 0.5 * stats.norm.pdf(y, mu[1], 0.5))
    np.testing.assert_allclose(pred.logpdf(y), expected)
    np.testing.assert_allclose(pred.cdf(y), 0.5 * stats.norm.cdf(y, mu[0], 1.0) + 0.5 * stats.norm.cdf(y, mu[1], 0.5))
    none = Predictive("none", get_family("gaussian"), np.zeros(2))
    assert np.isnan(none.logpdf(y)).all() and none.sample(3, np.random.default_rng(0)) is None
    plug = Predictive("plugin", get_family("bernoulli"), np.array([0.2, 0.9]))
    np.testing.assert_allclose(plug.logpdf(np.array([0.0, 1.0])), np.log([0.8, 0.9]))


def test_score_pools_and_marks_missing_uncertainty():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    pred = np.array([1.5, 2.0, 2.0, 4.0])
    s = score(y, pred, pred - 0.6, pred + 0.6, np.log(np.full(4, 0.2)))
    assert s["rmse"] == pytest.approx(np.sqrt((0.25 + 0 + 1 + 0) / 4))
    assert s["mae"] == pytest.approx(1.5 / 4)
    assert s["coverage"] == pytest.approx(0.75)
    assert s["width"] == pytest.approx(1.2)
    assert s["mlpd"] == pytest.approx(np.log(0.2))
    nan = np.full(4, np.nan)
    s = score(y, pred, nan, nan, nan)
    assert np.isnan(s["coverage"]) and np.isnan(s["width"]) and np.isnan(s["mlpd"])


def test_recovery_against_truth():
    sim = hierfit.simulate(n_markets=6, n_submarkets=4, rows_per_submarket=200, seed=3, national_name="US")
    fit = hierfit.fit(sim.formula, sim.data, engine="ols", national="another name")
    rec = recovery(fit, sim.truth).set_index(["level", "term", "kind"])
    # the national root is matched whatever it is called
    assert ("national", "Intercept", "total") in rec.index
    sub = rec.loc[("submarket", "Intercept", "total")]
    # each submarket total has 200 rows (se about 0.07 plus the slope's error): RMSE well under 0.2
    assert sub["n"] == 24 and sub["rmse"] < 0.2
    assert 0.7 <= sub["coverage"] <= 1.0
    assert rec.loc[("fixed", "x2", "total"), "rmse"] < 0.05
    exact = recovery(fit, fit.group_effects().rename(columns={}))
    assert np.allclose(exact["rmse"].dropna(), 0.0)
    with pytest.raises(DataError, match="'truth' must be"):
        recovery(fit, pd.DataFrame({"a": [1]}))


def test_a_handful_of_draws_falls_back_to_the_engines_interval(small_sim, ols_fit):
    """Five ensemble members make a lumpy mixture: score with the engine's own interval."""
    import copy

    fit = copy.copy(ols_fit)
    ef = copy.copy(ols_fit.engine_fit)
    rng = np.random.default_rng(0)
    ef.uncertainty = PosteriorDraws(Draws(ef.theta + 0.01 * rng.standard_normal((5, len(ef.theta))), np.full(5, ef.sigma)))
    fit.engine_fit = ef
    new = small_sim.data.head(30)
    pred = predictive(fit, new)
    assert pred.method == "interval"
    lo, hi = ef.interval(fit.encoding.apply(new), "prediction", 0.9)
    # a normal centred on the prediction with the engine's interval width
    np.testing.assert_allclose(2 * stats.norm.ppf(0.95) * pred.scale, hi - lo, rtol=1e-9)
    ef.uncertainty = PosteriorDraws(Draws(ef.theta + 0.01 * rng.standard_normal((50, len(ef.theta))), np.full(50, ef.sigma)))
    assert predictive(fit, new).method == "draws"


def test_rows_of_unseen_groups_carry_the_new_groups_variance(small_sim):
    """A held-out submarket's rows: each predictive draw also draws the new submarket's effect,
    so the spread of the draws is sqrt(se² + sd_submarket²), as in the engine's intervals
    (without it, held-out-group MLPD would be scored on too narrow a distribution)."""
    import warnings

    df = small_sim.data
    held = (df.market == df.market.iloc[0]) & (df.submarket == df.submarket.iloc[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hierfit.HierfitWarning)
        fit = hierfit.fit("y ~ x1 + (1 | market/submarket)", df[~held], engine="mixed", national="United_state")
        pred = predictive(fit, df[held])
    ef = fit.engine_fit
    design = fit.encoding.apply(df[held])
    new_sd = ef.new_group_sd(design)
    sd_sub = fit.variance_components().query("level == 'submarket'")["sd_or_corr"].iloc[0]
    np.testing.assert_allclose(new_sd, sd_sub)
    assert pred.method == "draws"
    known_part = ef.layout.eta_draws(design, ef.draws, slice(None)).std(axis=0)
    # Monte Carlo over 400 draws: the SD is within ~7% (3 standard errors of an SD estimate)
    np.testing.assert_allclose(pred.mu_draws.std(axis=0), np.sqrt(known_part**2 + new_sd**2), rtol=0.11)
    assert (pred.mu_draws.std(axis=0) > 1.2 * known_part).all()  # here sd_sub (0.46) > se (0.34)


def _compare_family(family: str, formula: str, **sim_kw):
    sim = hierfit.simulate(n_markets=6, n_submarkets=4, rows_per_submarket=15, seed=12, family=family, **sim_kw)
    with _quiet():
        comp = hierfit.compare(formula, sim.data, engines=["ols", "mixed"], cv="submarket:3", family=family, progress=False)
    return sim, comp


@contextlib.contextmanager
def _quiet():
    """Small simulated trees make singular or few-group fits: not what these tests are about."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hierfit.HierfitWarning)
        yield


def test_binary_outcomes_are_scored_by_log_loss_brier_and_auc() -> None:
    _, comp = _compare_family("bernoulli", "y ~ x1 + x2 + (1 | market) + (1 | market:submarket)")
    assert comp.primary_metric == "log_loss"
    s = comp.summary().set_index("engine")
    p = comp.predictions
    for engine in ("ols", "mixed"):
        rows = p[p["engine"] == engine]
        y, q = rows["y"].to_numpy(float), np.clip(rows["prediction"].to_numpy(float), 1e-15, 1 - 1e-15)
        assert s.loc[engine, "log_loss"] == pytest.approx(float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q))), rel=1e-12)
        assert s.loc[engine, "brier"] == pytest.approx(float(np.mean((y - q) ** 2)), rel=1e-9)
        # AUC: the share of (positive, negative) pairs ranked right
        pos, neg = q[y == 1], q[y == 0]
        pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
        assert s.loc[engine, "auc"] == pytest.approx(float(pairs), rel=1e-12)
        assert np.isnan(s.loc[engine, "deviance"])
    assert comp.best() == s["log_loss"].idxmin()
    assert set(comp.paired("ols", "log_loss")["metric"]) == {"log_loss"}


def test_binomial_rmse_compares_successes_with_expected_successes() -> None:
    """The prediction is a probability per trial; the outcome counts successes out of n."""
    sim, comp = _compare_family("binomial", "cbind(y, n - y) ~ x1 + x2 + (1 | market) + (1 | market:submarket)")
    p = comp.predictions[comp.predictions["engine"] == "mixed"]
    n = sim.data["n"].to_numpy(float)[p["row"].to_numpy(int)]
    expected = n * p["prediction"].to_numpy(float)
    s = comp.summary().set_index("engine")
    assert s.loc["mixed", "rmse"] == pytest.approx(float(np.sqrt(np.mean((p["y"].to_numpy(float) - expected) ** 2))), rel=1e-12)
    y = p["y"].to_numpy(float)
    q = p["prediction"].to_numpy(float)
    manual = -(y @ np.log(q) + (n - y) @ np.log1p(-q)) / n.sum()
    assert s.loc["mixed", "log_loss"] == pytest.approx(float(manual), rel=1e-10)
    folds = comp.folds
    assert folds["rmse"].notna().all() and folds["log_loss"].notna().all()


def test_counts_are_scored_by_the_poisson_deviance() -> None:
    _, comp = _compare_family("poisson", "y ~ x1 + x2 + (1 | market) + (1 | market:submarket)", national=0.5)
    assert comp.primary_metric == "deviance"
    s = comp.summary().set_index("engine")
    p = comp.predictions[comp.predictions["engine"] == "mixed"]
    y, mu = p["y"].to_numpy(float), p["prediction"].to_numpy(float)
    assert s.loc["mixed", "deviance"] == pytest.approx(float(np.mean(2 * (xlogy(y, y / mu) - (y - mu)))), rel=1e-12)
    assert np.isnan(s.loc["mixed", "log_loss"])


def test_calibration_error_is_small_for_true_probabilities_and_large_for_overconfident_ones() -> None:
    from hierfit.evaluate.metrics import calibration_bins, score
    from hierfit.model import get_family

    rng = np.random.default_rng(3)
    p = rng.uniform(0.05, 0.95, 20_000)
    y = (rng.random(p.size) < p).astype(float)
    bern = get_family("bernoulli")
    flat = np.zeros_like(p)
    right = score(y, p, flat, flat, flat, bern)["calibration"]
    # pushed toward 0 and 1 on the logit scale (x2): an overconfident model
    sharp = 1 / (1 + np.exp(-2 * np.log(p / (1 - p))))
    wrong = score(y, sharp, flat, flat, flat, bern)["calibration"]
    assert right < 0.015 and wrong > 0.05
    # binomial rows weigh by their trials: one row of 10 trials = 10 rows of one
    trials = np.full(100, 10.0)
    succ = rng.binomial(10, p[:100]).astype(float)
    binom = score(succ, p[:100], flat[:100], flat[:100], flat[:100], get_family("binomial"), trials)["calibration"]
    bins = calibration_bins(succ, p[:100], trials)
    assert bins["weight"].sum() == 1000.0
    assert binom == pytest.approx(float(np.abs(bins.observed - bins.predicted) @ bins.weight / 1000.0))
