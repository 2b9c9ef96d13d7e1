"""Engine ``ols`` beyond gaussian outcomes: a no-pooling GLM by IRLS on the effects-coded
columns, against statsmodels' GLM on the very same columns (coefficients, standard errors,
log-likelihood), with prior weights and offsets; the negative binomial's theta against
statsmodels' maximum-likelihood NegativeBinomial."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import statsmodels.api as sm
from statsmodels.discrete.discrete_model import NegativeBinomial

import hierfit
from hierfit.engines.ols import effects_coding

FORMULA = "y ~ x1 + x2 + (1 | market) + (1 | market:submarket)"


def _columns(fit, data):
    C, _, _ = effects_coding(fit.encoding.apply(data))
    return C.toarray()


def _sim(family: str, seed: int, **kw):
    return hierfit.simulate(n_markets=5, n_submarkets=3, rows_per_submarket=40, seed=seed, family=family,
                            national=0.5 if family in ("poisson", "negative_binomial") else 0.3, **kw)


def _check_against(fit, reference, rtol: float = 1e-7) -> None:
    gamma = fit.engine_fit.coefficients.to_numpy()
    np.testing.assert_allclose(gamma, reference.params, rtol=rtol, atol=1e-9)
    fe = fit.fixed_effects()
    p = len(fe)
    np.testing.assert_allclose(fe["std_error"].to_numpy(), reference.bse[:p], rtol=1e-6)
    assert fit.statistics["loglik"] == pytest.approx(float(reference.llf), rel=1e-9)


@pytest.mark.parametrize("family,sm_family", [("bernoulli", sm.families.Binomial()), ("poisson", sm.families.Poisson())])
def test_glm_equals_statsmodels_on_the_same_columns(family, sm_family) -> None:
    sim = _sim(family, seed=3)
    fit = hierfit.fit(FORMULA, sim.data, engine="ols", family=family)
    C = _columns(fit, sim.data)
    ref = sm.GLM(sim.data["y"].to_numpy(float), C, family=sm_family).fit(tol=1e-13)
    _check_against(fit, ref)
    # the intercept is still the national level: the unweighted mean of the market totals (link scale)
    tot = fit.group_effects("total")
    national = tot[(tot.level == "national") & (tot.term == "Intercept")].estimate.item()
    assert national == pytest.approx(tot[(tot.level == "market") & (tot.term == "Intercept")].estimate.mean(), abs=1e-10)


def test_binomial_with_trials_weights_and_probit() -> None:
    sim = _sim("binomial", seed=4)
    data = sim.data.assign(w=np.random.default_rng(0).uniform(0.5, 2.0, len(sim.data)))
    formula = "cbind(y, n - y) ~ x1 + x2 + (1 | market) + (1 | market:submarket)"
    fit = hierfit.fit(formula, data, engine="ols", family="binomial", link="probit", weights="w")
    C = _columns(fit, data)
    endog = np.column_stack([data["y"], data["n"] - data["y"]]).astype(float)
    ref = sm.GLM(endog, C, family=sm.families.Binomial(sm.families.links.Probit()), var_weights=data["w"].to_numpy()).fit(tol=1e-13)
    np.testing.assert_allclose(fit.engine_fit.coefficients.to_numpy(), ref.params, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(fit.fixed_effects()["std_error"].to_numpy(), ref.bse[:3], rtol=1e-6)


def test_negative_binomial_theta_is_the_maximum_likelihood_one() -> None:
    sim = _sim("negative_binomial", seed=5, exposure=True)
    fit = hierfit.fit(sim.formula.replace("(1 + x1 | market)", "(1 | market)"), sim.data, engine="ols", family="negative_binomial")
    C = _columns(fit, sim.data)
    y = sim.data["y"].to_numpy(float)
    offset = np.log(sim.data["exposure"].to_numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # statsmodels' optimiser chatter
        ml = NegativeBinomial(y, C, offset=offset).fit(method="bfgs", maxiter=5000, gtol=1e-10, disp=False)
    theta = fit.variance_components().set_index("level").loc["dispersion", "variance"]
    assert theta == pytest.approx(1.0 / ml.params[-1], rel=1e-4)
    np.testing.assert_allclose(fit.engine_fit.coefficients.to_numpy(), ml.params[:-1], rtol=1e-4, atol=1e-5)
    # standard errors as glm.nb reports them: the GLM at the estimated theta
    at = sm.GLM(y, C, family=sm.families.NegativeBinomial(alpha=1.0 / theta), offset=offset).fit(tol=1e-13)
    _check_against(fit, at, rtol=1e-6)


def test_an_offset_shifts_the_log_rate_exactly() -> None:
    """Doubling every exposure shifts each log-rate prediction by log 2 and changes nothing else."""
    sim = _sim("poisson", seed=6, exposure=True)
    fit = hierfit.fit(sim.formula, sim.data, engine="ols", family="poisson")
    doubled = sim.data.assign(exposure=2 * sim.data["exposure"])
    shift = fit.predict(doubled, scale="link")["prediction"] - fit.predict(sim.data, scale="link")["prediction"]
    np.testing.assert_allclose(shift.to_numpy(), np.log(2.0), rtol=1e-12)


def test_weight_two_is_a_repeated_row() -> None:
    """Prior weights multiply the log-likelihood: weight 2 on a row equals the row twice."""
    sim = _sim("poisson", seed=7)
    d = sim.data
    heavy = d.assign(w=np.where(np.arange(len(d)) % 3 == 0, 2.0, 1.0))
    twice = hierfit.fit(FORMULA, heavy, engine="ols", family="poisson", weights="w")
    repeated = d.loc[np.concatenate([np.arange(len(d)), np.arange(0, len(d), 3)])]
    plain = hierfit.fit(FORMULA, repeated.reset_index(drop=True), engine="ols", family="poisson")
    pd_a, pd_b = twice.fixed_effects(), plain.fixed_effects()
    np.testing.assert_allclose(pd_a["estimate"], pd_b["estimate"], rtol=1e-9)
    np.testing.assert_allclose(pd_a["std_error"], pd_b["std_error"], rtol=1e-9)


def test_a_group_at_the_boundary_is_named() -> None:
    """A submarket whose outcomes are all 0 has an infinite no-pooling coefficient: R's glm
    warns 'fitted probabilities numerically 0 or 1'; here the separation check says so."""
    sim = _sim("bernoulli", seed=8)
    d = sim.data.copy()
    first = (d["market"] == d["market"].iloc[0]) & (d["submarket"] == d["submarket"].iloc[0])
    d.loc[first, "y"] = 0
    with pytest.warns(hierfit.HierfitWarning, match="numerically at 0 or 1"):
        fit = hierfit.fit(FORMULA, d, engine="ols", family="bernoulli")
    assert [diag.check for diag in fit.diagnostics if diag.check in ("separation", "convergence")] == ["separation"]


def test_gaussian_weights_and_offset_match_weighted_least_squares() -> None:
    sim = _sim("gaussian", seed=9)
    d = sim.data.assign(w=np.random.default_rng(1).uniform(0.2, 3.0, len(sim.data)), o=np.linspace(-1, 1, len(sim.data)))
    fit = hierfit.fit(FORMULA, d, engine="ols", weights="w", offset="o")
    C = _columns(fit, d)
    ref = sm.WLS(d["y"].to_numpy() - d["o"].to_numpy(), C, weights=d["w"].to_numpy()).fit()
    _check_against(fit, ref, rtol=1e-8)
    assert fit.statistics["sigma"] == pytest.approx(float(np.sqrt(ref.scale)), rel=1e-10)
