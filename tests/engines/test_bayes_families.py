"""Families, offsets, prior weights and row aggregation in the Bayesian engines (``pymc``, ``stan``).

Most checks here are exact and need no sampling: the models' log densities are compared at
random parameter points (aggregated cells against their rows up to a constant, integer
weights against replicated rows, weighted sufficient statistics against the dense weighted
gaussian). What needs draws -- NB dispersion recovery, the binomial with trials, the
posterior's pointwise log-likelihood per original row, save/load -- shares two small fits
per engine (module fixtures); the Stan fits reuse the conformance suite's compiled per-row
program (same group-level terms), so this module compiles nothing new.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import hierfit
from hierfit.design import build_design
from hierfit.exceptions import SpecError

pytest.importorskip("pymc")
pytest.importorskip("arviz")

from hierfit.engines.bayes.aggregate import aggregate_rows, can_aggregate
from hierfit.engines.bayes.marginal import marginal_data, marginal_loglik
from hierfit.engines.bayes.priors import resolve_priors
from hierfit.engines.bayes.stancode import stan_code, stan_data
from hierfit.engines.bayes.structure import expanded_columns, make_structure, sufficient_stats
from tests.engines.test_pymc import _dense_T

QUIET = {"few_groups": "ignore", "ess": "ignore", "single_row_groups": "ignore"}
SNAPSHOTS = Path(__file__).parent / "snapshots"
#: the conformance suite's group-level terms: Stan programs with them are compiled there already
TERMS = "(1 + x1 | market) + (1 | market:submarket)"


def _discrete(family: str, seed: int = 0, n: int = 240) -> pd.DataFrame:
    """Rows with binary covariates, so that many share covariates and groups (cells to aggregate)."""
    rng = np.random.default_rng(seed)
    markets = np.array([f"M{i}" for i in range(4)])[rng.integers(0, 4, n)]
    sub = np.array([f"{m}:S{j}" for m, j in zip(markets, rng.integers(0, 2, n))])
    x1, x2 = rng.integers(0, 2, n).astype(float), rng.integers(0, 2, n).astype(float)
    d = pd.DataFrame({"market": markets, "submarket": sub, "x1": x1, "x2": x2})
    eta = -0.3 + 0.5 * x1 - 0.4 * x2 + pd.Series(markets).map({"M0": -0.3, "M1": 0.0, "M2": 0.2, "M3": 0.4}).to_numpy()
    d["exposure"] = rng.choice([1.0, 2.0], n)
    d["w"] = rng.choice([1.0, 2.0, 3.0], n)
    if family == "binomial":
        d["n"] = rng.integers(1, 6, n)
        d["y"] = rng.binomial(d["n"], 1 / (1 + np.exp(-eta)))
    elif family == "bernoulli":
        d["y"] = rng.binomial(1, 1 / (1 + np.exp(-eta)))
    else:
        d["y"] = rng.poisson(np.exp(eta + np.log(d["exposure"])))
    return d


FORMULAS = {
    "binomial": f"cbind(y, n - y) ~ x1 + x2 + {TERMS}",
    "bernoulli": f"y ~ x1 + x2 + {TERMS}",
    "poisson": f"y ~ x1 + x2 + offset(log(exposure)) + {TERMS}",
    "negative_binomial": f"y ~ x1 + x2 + offset(log(exposure)) + {TERMS}",
    "gaussian": f"y ~ x1 + x2 + offset(log(exposure)) + {TERMS}",
}


def _pymc_logp(design, structure, points):
    from hierfit.engines.bayes.pymc_engine import build_model

    # FAST_COMPILE: PyTensor's Python implementations, no C compilation (seconds per model saved)
    logp = build_model(design, structure, "rows", None).compile_logp(mode="FAST_COMPILE")
    return np.array([logp(p) for p in points])


def _points(design, structure, k=4, seed=1):
    from hierfit.engines.bayes.pymc_engine import build_model

    start = build_model(design, structure, "rows", None).initial_point()
    rng = np.random.default_rng(seed)
    return [{name: v + rng.normal(0, 0.4, np.shape(v)) for name, v in start.items()} for _ in range(k)]


# -- aggregation -----------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["bernoulli", "binomial", "poisson"])
def test_aggregated_cells_have_the_rows_log_density_up_to_a_constant(family):
    """Summing rows that share eta changes the log density by a constant only: the posterior is exact."""
    d = _discrete(family)
    design = build_design(hierfit.make_spec(FORMULAS[family], family=family, weights="w"), d)
    cells = aggregate_rows(design)
    keys = ["x1", "x2", "submarket", "w"] + (["exposure"] if family == "poisson" else [])
    assert cells.cells == d.groupby(keys).ngroups < 0.6 * cells.rows
    assert cells.design.y.sum() == pytest.approx(design.y.sum())
    structure = make_structure(design, marginal=False)
    points = _points(design, structure)
    diff = _pymc_logp(cells.design, structure, points) - _pymc_logp(design, structure, points)
    np.testing.assert_allclose(diff, diff[0], rtol=0, atol=1e-8 * np.abs(diff).max())
    # row order does not matter: the cells come sorted
    shuffled = build_design(design.spec, d.sample(frac=1.0, random_state=3))
    np.testing.assert_array_equal(aggregate_rows(shuffled).design.y, cells.design.y)


def test_negative_binomial_and_gaussian_rows_are_not_aggregated():
    assert not can_aggregate(hierfit.make_spec("y ~ x1", family="negative_binomial").family)
    d = _discrete("poisson")
    design = build_design(hierfit.make_spec(FORMULAS["negative_binomial"], family="negative_binomial"), d)
    assert aggregate_rows(design).cells == design.n


# -- prior weights -----------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["negative_binomial", "gaussian", "binomial"])
def test_integer_weights_have_the_log_density_of_replicated_rows(family):
    """lme4's prior weights: a GLMM row of weight 2 is that row twice (gaussian: one row of
    variance sigma^2 / 2, as lmer)."""
    d = _discrete("binomial" if family == "binomial" else "poisson", seed=2)
    if family == "gaussian":
        d["y"] = d["y"] + np.random.default_rng(0).normal(0, 1, len(d))
    d["w"] = np.where(np.arange(len(d)) % 3 == 0, 2.0, 1.0)
    replicated = pd.concat([d, d[d["w"] == 2.0]], ignore_index=True)
    spec_w = hierfit.make_spec(FORMULAS[family], family=family, weights="w")
    weighted = build_design(spec_w, d)
    copies = build_design(hierfit.make_spec(FORMULAS[family], family=family), replicated)
    structure = make_structure(weighted, marginal=False)
    points = _points(weighted, structure)
    a, b = _pymc_logp(weighted, structure, points), _pymc_logp(copies, structure, points)
    if family == "gaussian":
        # N(y | mu, s^2/2) against N(y | mu, s^2)^2: the same in mu, but one observation of the
        # residual scale rather than two -- per doubled row the log densities differ by log(4 pi s^2) / 2
        sigma = np.exp([p["sigma_log__"] for p in points])
        b = b + (d["w"] == 2.0).sum() * 0.5 * np.log(4 * np.pi * sigma**2)
    np.testing.assert_allclose(a, b, rtol=1e-10)


def test_weighted_sufficient_statistics_give_the_dense_weighted_gaussian():
    """The marginal likelihood with weights: y ~ N(W mu, sigma^2 diag(1/w) + A A'), rows of weight 0 left out."""
    d = _discrete("poisson", seed=4, n=90)
    d["y"] = d["y"] + np.random.default_rng(1).normal(0, 1, len(d))
    d["w"] = np.random.default_rng(2).choice([0.0, 0.5, 1.0, 2.5], len(d))
    design = build_design(hierfit.make_spec(FORMULAS["gaussian"], weights="w"), d)
    structure = make_structure(design, marginal=True)
    md = marginal_data(structure, sufficient_stats(design))
    keep = design.weights > 0
    assert md.n == keep.sum()
    W = expanded_columns(design).toarray()[keep]
    lambdas = [np.array([[0.7, 0.0], [0.2, 0.4]]), np.array([[0.5]])]
    T = _dense_T(structure, md, lambdas)
    A = W[:, md.index_I] @ T
    y = (design.y - design.offset)[keep]
    cov = 1.3**2 * np.diag(1 / design.weights[keep]) + A @ A.T
    expected = stats.multivariate_normal.logpdf(y, W[:, md.index_I] @ md.m_I, cov)
    got = marginal_loglik(md, structure, np.array([1.3]), [lam[None] for lam in lambdas], np.zeros((1, 0)))[0]
    assert got == pytest.approx(expected, rel=1e-10)


# -- priors ------------------------------------------------------------------------------------------
def test_the_dispersion_prior_is_stated_and_settable():
    d = _discrete("poisson")
    spec = hierfit.make_spec(FORMULAS["negative_binomial"], family="negative_binomial")
    pri = resolve_priors(build_design(spec, d))
    assert str(pri.theta) == "half_normal(sigma=1)" and pri.source["theta"] == "default" and pri.sigma is None
    # the log link's intercept is centred at the log of the mean rate (counts per exposure)
    rate = d["y"] / d["exposure"]
    assert pri.beta[0].param("mu") == pytest.approx(np.log(rate.mean()), abs=2e-3)
    assert any("theta (as 1/sqrt(theta))" in line for line in pri.lines(("Intercept", "x1", "x2"), []))
    user = hierfit.make_spec(FORMULAS["negative_binomial"], family="negative_binomial",
                             priors={"theta": hierfit.priors.exponential(2)})
    assert resolve_priors(build_design(user, d)).theta.distribution == "exponential"
    with pytest.raises(SpecError, match="'theta' matches no parameter.*negative-binomial size"):
        resolve_priors(build_design(hierfit.make_spec(FORMULAS["poisson"], family="poisson",
                                                      priors={"theta": hierfit.priors.half_normal(1)}), d))


# -- Stan code and data ------------------------------------------------------------------------------
#: snapshot -> the specs that must generate it: the per-row program depends on the group-level
#: terms and the priors' families only, so binomial trials, an NB offset and prior weights share it
SNAPSHOT_SPECS = {
    "stan_rows.stan": [
        hierfit.make_spec(FORMULAS["binomial"], family="binomial"),
        hierfit.make_spec(FORMULAS["negative_binomial"], family="negative_binomial"),
        hierfit.make_spec(FORMULAS["poisson"], family="poisson", weights="w"),
    ],
    "stan_rows_nb_user_priors.stan": [
        hierfit.make_spec(FORMULAS["negative_binomial"], family="negative_binomial", weights="w",
                          priors={"theta": hierfit.priors.exponential(1), "b:x2": hierfit.priors.student_t(4, 0, 1)}),
    ],
}


@pytest.mark.parametrize("name", sorted(SNAPSHOT_SPECS))
def test_per_row_stan_programs_match_their_snapshots(name):
    codes = {stan_code(spec) for spec in SNAPSHOT_SPECS[name]}
    assert len(codes) == 1
    code = codes.pop()
    path = SNAPSHOTS / name
    if os.environ.get("HIERFIT_UPDATE_SNAPSHOTS"):
        path.write_text(code)
    assert code == path.read_text(), "generated Stan code changed; review it and rerun with HIERFIT_UPDATE_SNAPSHOTS=1"
    assert "vector[N] eta = eta_offset + X * beta" in code and "if (weighted) for (n in 1:N)" in code


def test_one_per_row_program_serves_every_family():
    """The family, trials, offset and weights are data: one compilation for all of them."""
    codes = {f: stan_code(hierfit.make_spec(FORMULAS[f], family=f)) for f in ("bernoulli", "binomial", "poisson", "negative_binomial")}
    assert len(set(codes.values())) == 1
    assert stan_code(hierfit.make_spec(FORMULAS["gaussian"]), likelihood="rows") == codes["poisson"]
    d = _discrete("binomial")
    design = build_design(hierfit.make_spec(FORMULAS["binomial"], family="binomial", weights="w"), d)
    data = stan_data(design)
    assert data["family"] == 2 and data["weighted"] == 1 and data["y_real"].size == 0
    np.testing.assert_array_equal(data["trials"], d["n"].to_numpy())
    np.testing.assert_array_equal(data["weights"], d["w"].to_numpy())
    nb = stan_data(build_design(hierfit.make_spec(FORMULAS["negative_binomial"], family="negative_binomial"), d.assign(y=d["y"])))
    assert nb["family"] == 4 and nb["weighted"] == 0 and nb["trials"].size == 0
    np.testing.assert_allclose(nb["eta_offset"], np.log(d["exposure"]))
    assert nb["prior_theta_sigma"] == 1.0


# -- sampled: NB dispersion, binomial trials, per-row log-likelihood, save/load -----------------------
ENGINES = ["pymc", "stan"]


def _engine_available(engine: str) -> None:
    if engine == "stan":
        stan_mod = pytest.importorskip("hierfit.engines.bayes.stan_engine")
        try:
            stan_mod._import_stan()
        except Exception as exc:  # noqa: BLE001  # pragma: no cover - environment without pystan
            pytest.skip(f"pystan unavailable: {exc}")


@pytest.fixture(scope="module")
def nb_fits():
    """NB2 counts with exposure (size 2) and binomial counts with trials, per engine, fitted once."""
    nb_sim = hierfit.simulate(n_markets=6, n_submarkets=4, rows_per_submarket=40, family="negative_binomial",
                              dispersion=2.0, exposure=True, national=1.0, seed=21)
    cache: dict[str, hierfit.FitResult] = {}

    def get(engine: str) -> tuple[hierfit.Simulation, hierfit.FitResult]:
        _engine_available(engine)
        if engine not in cache:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", hierfit.HierfitWarning)
                # 2 x 150 draws: theta's 2-98 % interval came out [1.71, 2.26] (ratio 1.3) against
                # [1.70, 2.30] with 2 x 300; the asserts allow a ratio of 4 around the truth 2.
                # Sampling is the cost (pymc: 68 s with 300 + 300, 37 s with 150 + 150)
                cache[engine] = hierfit.fit(nb_sim.formula, nb_sim.data, engine=engine, family="negative_binomial",
                                            draws=150, tune=200, chains=2, progressbar=False, seed=2, checks=QUIET)
        return nb_sim, cache[engine]

    return get


@pytest.mark.parametrize("engine", ENGINES)
def test_negative_binomial_size_is_recovered_and_reported_as_mixed_does(engine, nb_fits, tmp_path):
    sim, fit = nb_fits(engine)
    theta = fit.native().posterior["theta"].values.ravel()
    lo, hi = np.quantile(theta, [0.02, 0.98])
    assert lo < 2.0 < hi and hi / lo < 4  # 960 rows: theta known to within a factor ~2 either way
    vc = fit.variance_components().set_index(["level", "term1"])
    assert vc.loc[("dispersion", "theta"), "sd_or_corr"] == pytest.approx(np.median(theta))
    assert fit.statistics["nb_theta"] == pytest.approx(np.median(theta))
    assert "negative-binomial size theta" in fit.summary() and "theta (as 1/sqrt(theta))" in fit.summary()
    fe = fit.fixed_effects().set_index("term")
    truth = sim.truth.fixed_effects().set_index("term")["estimate"]
    assert ((fe["lower"] - 0.1 <= truth) & (truth <= fe["upper"] + 0.1)).all()
    # pointwise log-likelihood per row from the draws: NB log-density at each draw's mean and size
    ll = fit.native().log_likelihood["y"].values.reshape(len(theta), -1)
    assert ll.shape[1] == len(sim.data)
    eta = fit.engine_fit.linear_predictor_draws(fit.encoding.apply(sim.data), len(theta))
    y = sim.data["y"].to_numpy()
    expected = stats.nbinom.logpmf(y[None, :5], theta[:, None], theta[:, None] / (theta[:, None] + np.exp(eta[:, :5])))
    np.testing.assert_allclose(ll[:, :5], expected, rtol=1e-8)
    fit.save(tmp_path / "nb")
    back = hierfit.load(tmp_path / "nb")
    assert back.statistics["nb_theta"] == fit.statistics["nb_theta"]
    np.testing.assert_allclose(back.predict(sim.data.head(20), interval="prediction")["upper"],
                               fit.predict(sim.data.head(20), interval="prediction")["upper"])


@pytest.mark.parametrize("engine", ENGINES)
def test_binomial_with_trials_predicts_probabilities_and_keeps_rows_for_loo(engine):
    """cbind(y, n - y) with aggregated cells: predictions are probabilities (as mixed), the
    log-likelihood has one column per original row, and the posterior agrees with mixed."""
    _engine_available(engine)
    d = _discrete("binomial", seed=5, n=400)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hierfit.HierfitWarning)
        fit = hierfit.fit(FORMULAS["binomial"], d, engine=engine, family="binomial", draws=300, tune=300, chains=2,
                          progressbar=False, seed=1, checks=QUIET)
        ml = hierfit.fit(FORMULAS["binomial"], d, engine="mixed", family="binomial")
    info = fit.engine_fit.info
    assert info["aggregated_rows"] == 400 and info["aggregated_cells"] <= 32  # 2 x 2 covariates x 8 submarkets
    assert fit.native().log_likelihood["y"].shape == (2, 300, 400)
    pred = fit.predict(d.head(10))["prediction"]
    assert ((pred > 0) & (pred < 1)).all()
    np.testing.assert_allclose(pred, ml.predict(d.head(10))["prediction"], atol=0.03)
    beta = fit.native().posterior["beta"].values.reshape(600, -1)
    z = (beta.mean(axis=0) - ml.fixed_effects()["estimate"].to_numpy()) / beta.std(axis=0)
    assert np.all(np.abs(z) < 0.5), z  # 4 markets: the posterior is wider than the Laplace fit, but centred on it
