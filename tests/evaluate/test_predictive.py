"""The predictive distribution of every family: finite densities with trials, offsets kept once,
the GLM sampling distribution as draws, the plug-in dispersion, and a randomised PIT that is
uniform for a well-specified count model and U-shaped for an underdispersed one."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import stats

import hierfit
from hierfit.evaluate.predictive import predictive

QUIET = {"few_groups": "ignore"}


def _fit(family: str, engine: str = "mixed", fit_family: str | None = None, seed: int = 3, **sim_kw):
    sim = hierfit.simulate(n_markets=6, n_submarkets=5, rows_per_submarket=30, seed=seed, family=family, **sim_kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = hierfit.fit(sim.formula, sim.data, engine=engine, family=fit_family or family, checks=QUIET)
    return sim, fit


@pytest.mark.parametrize("engine", ["ols", "mixed", "lightgbm"])
def test_binomial_densities_use_the_rows_trials(engine):
    # without the trials (n up to 19) a count of successes above 1 has probability 0 under p
    sim, fit = _fit("binomial", engine)
    dist = predictive(fit, sim.data)
    np.testing.assert_array_equal(dist.trials, sim.data["n"].to_numpy())
    lp = dist.logpdf(sim.data["y"].to_numpy())
    assert np.all(np.isfinite(lp)) and -3.0 < lp.mean() < -0.5


def test_offset_is_counted_once_in_the_draws():
    # eta_draws adds the offset itself: the draws must centre on the point prediction
    sim, fit = _fit("poisson", exposure=True)
    dist = predictive(fit, sim.data)
    assert dist.method == "draws"
    np.testing.assert_allclose(np.median(dist.mu_draws, axis=0), dist.mean, rtol=0.1)


def test_negative_binomial_gets_the_engines_dispersion():
    sim, ols = _fit("negative_binomial", "ols", dispersion=2.0, exposure=True)
    dist = predictive(ols, sim.data)
    assert dist.method == "draws" and np.allclose(dist.sigma_draws, ols.engine_fit.sigma)
    _, lgb = _fit("negative_binomial", "lightgbm", dispersion=2.0, exposure=True)
    plug = predictive(lgb, sim.data)
    theta = lgb.variance_components().query("level == 'dispersion'")["sd_or_corr"].iloc[0]
    assert plug.method == "plugin" and plug.dispersion == pytest.approx(theta)
    y = sim.data["y"].to_numpy()
    assert np.all(np.isfinite(plug.logpdf(y)))
    # the plug-in CDF is the NB CDF at the point prediction and theta
    np.testing.assert_allclose(plug.cdf(y), stats.nbinom.cdf(y, theta, theta / (theta + plug.mean)))


def test_randomised_pit_is_uniform_when_the_count_model_is_right():
    sim, fit = _fit("negative_binomial", dispersion=2.0)
    pit = predictive(fit, sim.data).pit(sim.data["y"].to_numpy(), np.random.default_rng(0))
    # 900 rows: a KS test at the 1% level (the fit's own estimation error makes it conservative)
    assert stats.kstest(pit, "uniform").pvalue > 0.01


def test_randomised_pit_is_u_shaped_when_overdispersion_is_ignored():
    sim, fit = _fit("negative_binomial", fit_family="poisson", dispersion=1.0)
    pit = predictive(fit, sim.data).pit(sim.data["y"].to_numpy(), np.random.default_rng(0))
    outer = np.mean((pit < 0.1) | (pit > 0.9))
    assert outer > 0.4  # 0.2 when calibrated


def test_expected_frequencies_sum_to_the_rows():
    sim, fit = _fit("poisson")
    dist = predictive(fit, sim.data)
    top = int(sim.data["y"].max()) + 60
    total = dist.expected_frequencies(np.arange(top)).sum()
    assert total == pytest.approx(len(sim.data), rel=1e-6)


def test_counts_at_an_astronomical_mean_are_sampled_not_refused():
    # an all-zero group fitted without pooling: log-scale SE ~1e3, so drawn means reach 1e300
    from hierfit.model import get_family

    rng = np.random.default_rng(0)
    for name, theta in (("poisson", None), ("negative_binomial", 2.0)):
        draws = get_family(name).sample(rng, np.array([1e300, 3.0]), None, theta)
        assert np.all(np.isfinite(draws)) and draws[0] >= 1e14
