"""Engine ``pymc``: exact marginal likelihood, parity of the fast path with the per-row model,
default priors, diagnostics on the reference DGP, persistence, new groups, PPC and LOO."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import stats

import hierfit
from hierfit.design import build_design
from hierfit.exceptions import EngineError, SpecError

pytest.importorskip("pymc")
az = pytest.importorskip("arviz")

from hierfit.engines.bayes import compare_loo, ppc  # noqa: E402
from hierfit.engines.bayes.marginal import (  # noqa: E402
    conditional_draws,
    marginal_data,
    marginal_loglik,
)
from hierfit.engines.bayes.priors import resolve_priors  # noqa: E402
from hierfit.engines.bayes.structure import (  # noqa: E402
    expanded_columns,
    make_structure,
    sufficient_stats,
)

QUIET = {"few_groups": "ignore", "ess": "ignore", "single_row_groups": "ignore"}
SMALL = dict(n_markets=4, n_submarkets=3, rows_per_submarket=20)


def _small(seed=3, **kw):
    return hierfit.simulate(**{**SMALL, **kw}, seed=seed)


def _dense_T(structure, md, lambdas):
    T = np.zeros((len(md.index_I), len(md.index_I)))
    nb = len(md.s0)
    T[:nb, :nb] = np.diag(md.s0)
    off = nb
    for t, lam in zip(structure.terms, lambdas):
        for g in range(t.n_groups):
            s = off + g * t.k
            T[s : s + t.k, s : s + t.k] = lam
        off += t.size
    return T


@pytest.fixture(scope="module")
def small_marginal():
    sim = _small()
    spec = hierfit.make_spec(sim.formula, priors={"b:x2": hierfit.priors.student_t(4, 0, 2)})
    design = build_design(spec, sim.data)
    structure = make_structure(design, marginal=True)
    return design, structure, marginal_data(structure, sufficient_stats(design))


def test_marginal_loglik_equals_dense_multivariate_normal(small_marginal):
    design, structure, md = small_marginal
    assert structure.integrated.tolist() == [True, True, False]  # student_t prior on x2: sampled
    W = expanded_columns(design).toarray()
    lambdas = [np.array([[0.7, 0.0], [0.2, 0.4]]), np.array([[0.5]])]
    beta_S = np.array([0.3])
    sigma = 1.3
    ll = marginal_loglik(md, structure, np.array([sigma]), [l[None] for l in lambdas], beta_S[None])[0]
    A = W[:, md.index_I] @ _dense_T(structure, md, lambdas)
    mean = W[:, md.index_I] @ md.m_I + W[:, md.index_S] @ beta_S
    expected = stats.multivariate_normal.logpdf(design.y, mean, sigma**2 * np.eye(design.n) + A @ A.T)
    assert ll == pytest.approx(expected, rel=1e-10)


def test_marginal_op_value_and_gradient_match_the_reference_and_central_differences(small_marginal):
    from hierfit.engines.bayes.pt_marginal import value_and_grad

    _, structure, md = small_marginal
    lambdas = [np.array([[0.7, 0.0], [0.2, 0.4]]), np.array([[0.5]])]
    sigma, beta_S = 1.3, np.array([0.3])
    ll, g_sigma, g_lams, g_beta = value_and_grad(md, structure, sigma, lambdas, beta_S)
    ref = marginal_loglik(md, structure, np.array([sigma]), [l[None] for l in lambdas], beta_S[None])[0]
    # the Op drops the constant -n/2 log(2 pi)
    assert ll == pytest.approx(ref + 0.5 * md.n * np.log(2 * np.pi), rel=1e-12)

    def value(s, lams, b):
        return value_and_grad(md, structure, s, lams, b)[0]

    h = 1e-6
    assert g_sigma == pytest.approx((value(sigma + h, lambdas, beta_S) - value(sigma - h, lambdas, beta_S)) / (2 * h), rel=1e-6)
    for t, lam in enumerate(lambdas):
        for idx in np.ndindex(lam.shape):
            up, down = [l.copy() for l in lambdas], [l.copy() for l in lambdas]
            up[t][idx] += h
            down[t][idx] -= h
            fd = (value(sigma, up, beta_S) - value(sigma, down, beta_S)) / (2 * h)
            assert g_lams[t][idx] == pytest.approx(fd, rel=1e-6, abs=1e-6), (t, idx)
    fd_beta = (value(sigma, lambdas, beta_S + h) - value(sigma, lambdas, beta_S - h)) / (2 * h)
    assert g_beta[0] == pytest.approx(fd_beta, rel=1e-6)
    # a point where P is not positive definite (a non-finite sigma) is rejected, not raised
    assert value_and_grad(md, structure, 0.0, lambdas, beta_S)[0] == -np.inf


def test_conditional_draws_follow_exact_gaussian_posterior(small_marginal):
    design, structure, md = small_marginal
    lambdas = [np.array([[0.7, 0.0], [0.2, 0.4]]), np.array([[0.5]])]
    sigma, beta_S, S = 1.1, np.array([0.3]), 20_000
    draws = conditional_draws(
        md, structure, np.full(S, sigma), [np.broadcast_to(l, (S, *l.shape)) for l in lambdas], np.tile(beta_S, (S, 1)),
        np.random.default_rng(0),
    )
    # exact posterior of u_I by dense Gaussian conditioning
    W = expanded_columns(design).toarray()
    WI = W[:, md.index_I]
    T = _dense_T(structure, md, lambdas)
    prior_cov = T @ T.T
    r = design.y - WI @ md.m_I - W[:, md.index_S] @ beta_S
    post_cov = np.linalg.inv(np.linalg.inv(prior_cov) + WI.T @ WI / sigma**2)
    post_mean = md.m_I + post_cov @ WI.T @ r / sigma**2
    got = draws[:, md.index_I]
    se = np.sqrt(np.diag(post_cov) / S)
    assert np.all(np.abs(got.mean(axis=0) - post_mean) < 4.5 * se)
    assert np.allclose(got.std(axis=0), np.sqrt(np.diag(post_cov)), rtol=0.04)
    assert np.all(draws[:, md.index_S] == beta_S)


def test_default_priors_are_scaled_to_the_data_and_overridable():
    sim = _small()
    y_sd = sim.data["y"].std(ddof=0)
    d = build_design(hierfit.make_spec(sim.formula), sim.data)
    pri = resolve_priors(d)
    assert pri.beta[0].distribution == "normal"
    assert pri.beta[0].param("mu") == pytest.approx(sim.data["y"].mean(), rel=2e-3)
    assert pri.beta[0].param("sigma") == pytest.approx(2.5 * y_sd, rel=2e-3)
    assert pri.sigma.param("sigma") == pytest.approx(y_sd, rel=2e-3)
    assert pri.cor[0].param("eta") == 2.0 and pri.cor[1] is None
    spec = hierfit.make_spec(sim.formula, priors={"sd:market": hierfit.priors.exponential(2), "b": hierfit.priors.normal(0, 1)})
    pri = resolve_priors(build_design(spec, sim.data))
    assert [p.distribution for p in pri.sd[0]] == ["exponential", "exponential"]
    assert pri.sd[1][0].distribution == "half_normal"
    assert str(pri.beta[1]) == "normal(mu=0, sigma=1)" and pri.source["b:x2"] == "user"
    bad = hierfit.make_spec(sim.formula, priors={"sd:region": hierfit.priors.half_normal(1)})
    with pytest.raises(SpecError, match="sd:region"):
        resolve_priors(build_design(bad, sim.data))


def test_sufficient_statistics_model_has_the_per_row_log_density():
    """likelihood='suffstats' is the per-row gaussian model, evaluated from W'W, W'y, y'y."""
    from hierfit.engines.bayes.pymc_engine import build_model

    sim = _small(seed=6)
    design = build_design(hierfit.make_spec(sim.formula), sim.data)
    structure = make_structure(design, marginal=False)
    md = marginal_data(structure, sufficient_stats(design))
    rows = build_model(design, structure, "rows", None)
    suff = build_model(design, structure, "suffstats", md)
    point = rows.initial_point()
    rng = np.random.default_rng(1)
    point = {k: v + rng.normal(0, 0.3, np.shape(v)) for k, v in point.items()}
    assert sorted(point) == sorted(suff.initial_point())
    assert suff.compile_logp()(point) == pytest.approx(rows.compile_logp()(point), rel=1e-9)


def _fit(sim, **kw):
    opts = dict(draws=500, tune=500, chains=2, progressbar=False, seed=1)
    opts.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return hierfit.fit(sim.formula, sim.data, engine="pymc", checks=QUIET, **opts)


def test_fast_gaussian_path_matches_plain_per_row_model():
    """Means within Monte-Carlo error and SDs within their MC error, for every parameter."""
    sim = _small(seed=5)
    fast = _fit(sim, likelihood="marginal")
    rows = _fit(sim, likelihood="rows")
    assert fast.engine_fit.info["likelihood"] == "marginal" and rows.engine_fit.info["likelihood"] == "rows"
    a = az.summary(fast.native(), kind="all", stat_focus="mean")
    b = az.summary(rows.native(), kind="all", stat_focus="mean")
    b = b.loc[a.index]
    mc_mean = np.sqrt(a["mcse_mean"] ** 2 + b["mcse_mean"] ** 2)
    mc_sd = np.sqrt(a["mcse_sd"] ** 2 + b["mcse_sd"] ** 2)
    assert len(a) == 3 + 4 * 2 + 12 + 2 + 1 + 1 + 1  # beta, r_market, r_submarket, sd_market, sd_submarket, sigma, cor
    # 4 MCSE (about 40 parameters compared at once) plus a floor for the rounding of summary()
    assert np.all(np.abs(a["mean"] - b["mean"]) <= 4 * mc_mean + 0.01), (a["mean"] - b["mean"]).abs().sort_values().tail()
    assert np.all(np.abs(a["sd"] - b["sd"]) <= 4 * mc_sd + 0.01), (a["sd"] - b["sd"]).abs().sort_values().tail()


def test_ppc_and_compare_loo():
    small = _small(seed=8)
    true_fit = _fit(small, draws=300, tune=300, posterior_predictive=True)
    assert true_fit.native().posterior_predictive["y"].shape == (2, 300, len(small.data))
    check = ppc(true_fit, small.data, n_draws=30)
    assert check.draws.shape == (30, len(small.data))
    table = check.summary().set_index("statistic")
    assert 0.02 < table.loc["sd", "p_value"] < 0.98  # the true model reproduces the outcome's spread
    assert check.plot().get_title() == "posterior predictive check"
    # a model without the submarket level and the market slope must lose against the true model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flat = hierfit.fit("y ~ x1 + x2 + (1 | market)", small.data, engine="pymc", checks=QUIET, draws=300, tune=300,
                           chains=2, progressbar=False)
    comp = compare_loo({"true": true_fit, "market_only": flat})
    assert comp.index[0] == "true"
    assert set(compare_loo([true_fit, flat], ic="waic").index) == {"model_0", "model_1"}
    with pytest.raises(EngineError, match="log-likelihood"):
        compare_loo({"a": true_fit, "b": hierfit.fit(small.formula, small.data, engine="ols", checks=QUIET)})
    # ArviZ-clean: the InferenceData holds no constants (a unit correlation diagonal broke R-hat
    # with NaN rows and plot_trace with OverflowError); its own tools run without warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = az.summary(true_fit.native())
        az.plot_trace(true_fit.native())
        az.plot_forest(true_fit.native())
        az.loo(true_fit.native())
        az.compare({"true": true_fit.native(), "market_only": flat.native()})
    assert not summary["r_hat"].isna().any()
    assert "cor_market[Intercept:x1]" in summary.index
    ours = [w for w in caught if not issubclass(w.category, DeprecationWarning)]  # arviz's own pandas deprecations
    assert not ours, [f"{w.category.__name__}: {w.message}" for w in ours]


def test_bernoulli_uses_the_per_row_likelihood_and_recovers_the_intercept():
    sim = hierfit.simulate(n_markets=5, n_submarkets=2, rows_per_submarket=80, family="bernoulli", seed=4)
    result = hierfit.fit(sim.formula, sim.data, engine="pymc", family="bernoulli", checks=QUIET, draws=300, tune=300,
                         chains=2, progressbar=False, sampler="numpyro")
    assert result.engine_fit.info["likelihood"] == "rows"
    fe = result.fixed_effects().set_index("term")
    assert fe.loc["Intercept", "lower"] - 0.3 < 1.0 < fe.loc["Intercept", "upper"] + 0.3
    with pytest.raises(SpecError, match="gaussian"):
        hierfit.fit(sim.formula, sim.data, engine="pymc", family="bernoulli", likelihood="marginal", checks=QUIET)


def test_bad_options_are_rejected_with_the_allowed_values():
    sim = _small()
    with pytest.raises(EngineError, match="'auto', 'marginal', 'rows', 'suffstats'; got 'fast'"):
        hierfit.fit(sim.formula, sim.data, engine="pymc", likelihood="fast", checks=QUIET)
    with pytest.raises(EngineError, match="'auto', 'numpyro', 'nutpie', 'pymc'; got 'emcee'"):
        hierfit.fit(sim.formula, sim.data, engine="pymc", sampler="emcee", checks=QUIET)
