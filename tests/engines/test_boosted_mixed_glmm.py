"""Engine ``boosted-mixed`` for binary, binomial and count outcomes: trees on the family's
log-likelihood with the GLMM's linear predictor as a known part, the GLMM given the trees.

The data are small (a few hundred rows, one level of 20 groups) with a strong nonlinearity
``2 sin(2 x1)`` on the link scale, which no linear term can follow, or none at all; fits are
made once per module.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import hierfit
from hierfit.design import build_design
from hierfit.engines.boosting._family_loss import FamilyLoss
from hierfit.exceptions import HierfitWarning

pytest.importorskip("lightgbm")

BOOSTED = {"num_threads": 1, "learning_rate": 0.1, "trees_per_round": 10, "max_rounds": 15, "patience": 2,
           "min_data_in_leaf": 20, "validation_fraction": 0.25}
FORMULA = "y ~ x1 + x2 + (1 | market)"
N_GROUPS = 20


def simulate(n: int, family: str, nonlinear: bool, seed: int) -> pd.DataFrame:
    """Rows of one level of groups; ``eta = 0.3 x1 - 0.4 x2 + u_market [+ 2 sin(2 x1)] + log exposure``."""
    rng = np.random.default_rng(seed)
    u = np.random.default_rng(1000).normal(0.0, 0.7, N_GROUPS)  # the same groups in every draw
    g = rng.integers(0, N_GROUPS, n)
    x1, x2 = rng.uniform(-2, 2, n), rng.normal(size=n)
    eta = 0.3 * x1 - 0.4 * x2 + u[g] + (2.0 * np.sin(2.0 * x1) if nonlinear else 0.0)
    df = pd.DataFrame({"market": [f"M{k:02d}" for k in g], "x1": x1, "x2": x2})
    if family in ("bernoulli", "binomial"):
        p = 1.0 / (1.0 + np.exp(-eta))
        df["n"] = rng.integers(1, 8, n) if family == "binomial" else 1
        df["y"] = rng.binomial(df["n"].to_numpy(), p).astype(float)
    else:
        df["exposure"] = rng.uniform(0.5, 3.0, n)
        mu = df["exposure"].to_numpy() * np.exp(eta + 0.5)
        df["y"] = (rng.poisson(mu) if family == "poisson" else rng.negative_binomial(2.0, 2.0 / (2.0 + mu))).astype(float)
    return df


def formula_for(family: str) -> str:
    if family == "binomial":
        return "cbind(y, n - y) ~ x1 + x2 + (1 | market)"
    if family in ("poisson", "negative_binomial"):
        return FORMULA + " + offset(log(exposure))"
    return FORMULA


def _fit(data: pd.DataFrame, family: str, engine: str = "boosted-mixed", **options) -> hierfit.FitResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierfitWarning)
        opts = {**BOOSTED, **options} if engine == "boosted-mixed" else options
        return hierfit.fit(formula_for(family), data, engine=engine, family=family, **opts)


def _nll(fit: hierfit.FitResult, data: pd.DataFrame) -> float:
    """Held-out negative log-likelihood per row (log loss for a binary outcome)."""
    family = fit.spec.family
    mu = fit.predict(data)["prediction"].to_numpy()
    trials = data["n"].to_numpy(float) if "n" in data else None
    theta = fit.statistics.get("nb_theta")
    return float(-np.mean(family.logpdf(data["y"].to_numpy(), mu, trials, theta)))


@pytest.fixture(scope="module")
def cases():
    """``cases(family, nonlinear)``: (train rows, test rows, boosted-mixed fit, mixed fit), made once."""
    cache: dict[tuple[str, bool], tuple] = {}

    def get(family: str, nonlinear: bool) -> tuple:
        if (family, nonlinear) not in cache:
            seed = {"bernoulli": 1, "binomial": 2, "poisson": 3, "negative_binomial": 4}[family] + 10 * nonlinear
            n = 600 if family == "bernoulli" and nonlinear else 400
            data = simulate(n + 400, family, nonlinear, seed)
            train, test = data.iloc[:n], data.iloc[n:]
            cache[family, nonlinear] = (train, test, _fit(train, family), _fit(train, family, "mixed"))
        return cache[family, nonlinear]

    return get


@pytest.mark.parametrize("family", ["bernoulli", "poisson"])
def test_a_linear_dgp_keeps_no_trees_and_is_the_glmm(family, cases) -> None:
    """The gate: trees fitted to noise do not beat the GLMM on the validation rows, so none
    are kept and every table and prediction is the ``mixed`` engine's GLMM's, exactly."""
    train, test, bm, mixed = cases(family, False)
    st = bm.statistics
    assert st["n_trees"] == 0 and not st["trees_gain"] > 2 * st["trees_gain_se"]
    for data in (train, test):
        pd.testing.assert_frame_equal(bm.predict(data, interval="confidence"), mixed.predict(data, interval="confidence"))
    pd.testing.assert_frame_equal(bm.group_effects(), mixed.group_effects())
    pd.testing.assert_frame_equal(bm.fixed_effects(), mixed.fixed_effects())
    assert (bm.decompose(test)["nonlinear"] == 0).all()


@pytest.mark.parametrize("family", ["bernoulli", "poisson", "binomial", "negative_binomial"])
def test_a_nonlinear_dgp_keeps_trees_that_beat_the_glmm(family, cases) -> None:
    """The trees' validation gain is beyond noise, and on fresh rows the fit's log-likelihood
    beats the GLMM's; the trees learn the sine the linear terms cannot follow."""
    train, test, bm, mixed = cases(family, True)
    st = bm.statistics
    print(f"{family}: {st['n_trees']:.0f} trees, gain {st['trees_gain']:.4f} ± {st['trees_gain_se']:.4f}, "
          f"held-out nll {_nll(bm, test):.4f} vs GLMM {_nll(mixed, test):.4f}")
    assert st["n_trees"] > 0 and st["trees_gain"] > 2 * st["trees_gain_se"]
    assert st["nll_valid"] < st["nll_train"] + 0.5  # a held-out loss, in nats per row
    assert _nll(bm, test) < _nll(mixed, test) - 0.02
    parts = bm.decompose(train)
    assert np.corrcoef(parts["nonlinear"], 2.0 * np.sin(2.0 * train["x1"]))[0, 1] > 0.8
    assert abs(parts["nonlinear"].mean()) < 1e-8  # centred: the intercept keeps its meaning


@pytest.mark.parametrize("family", ["binomial", "poisson"])
def test_decomposition_is_on_the_link_scale_with_the_offset_and_the_trees(family, cases) -> None:
    _, test, bm, _ = cases(family, True)
    parts = bm.decompose(test)
    expected = ["national", "market[Intercept]", "population"] + (["offset"] if family == "poisson" else []) + ["nonlinear"]
    assert list(parts.columns) == expected
    link = bm.predict(test, scale="link")["prediction"].to_numpy()
    native = bm.engine_fit.native_linear_predictor(bm.encoding.apply(test))
    np.testing.assert_allclose(parts.sum(axis=1).to_numpy(), link, atol=1e-10)
    np.testing.assert_allclose(native, link, atol=1e-10)
    np.testing.assert_allclose(bm.predict(test)["prediction"], bm.spec.family.inverse_link(link), rtol=1e-12)
    if family == "poisson":
        np.testing.assert_allclose(parts["offset"], np.log(test["exposure"]), rtol=1e-12)


def test_a_doubled_exposure_doubles_the_rate_with_trees(cases) -> None:
    _, test, bm, _ = cases("poisson", True)
    assert bm.statistics["n_trees"] > 0
    doubled = test.assign(exposure=2 * test["exposure"])
    shift = bm.predict(doubled, scale="link")["prediction"] - bm.predict(test, scale="link")["prediction"]
    np.testing.assert_allclose(shift.to_numpy(), np.log(2.0), rtol=1e-12)
    # the trees never see the exposure: it is the offset's, not a feature
    assert bm.native()["booster"].feature_name() == ["x1", "x2"]


def test_negative_binomial_reports_the_glmm_size_and_intervals_use_it(cases) -> None:
    """theta is the GLMM's given the trees (truth 2); prediction intervals draw NB outcomes
    with it, so they are wider than a poisson's at the same mean."""
    _, test, bm, mixed = cases("negative_binomial", True)
    theta = bm.statistics["nb_theta"]
    vc = bm.variance_components()
    assert vc.loc[vc.level == "dispersion", "sd_or_corr"].item() == pytest.approx(theta)
    assert 1.0 < theta < 4.0 and theta > mixed.statistics["nb_theta"]  # f explains spread the GLMM alone calls noise
    assert bm.engine_fit.effects.solution.nb_theta == pytest.approx(theta)
    pred = bm.predict(test, interval="prediction", level=0.9)
    inside = ((test["y"] >= pred["lower"]) & (test["y"] <= pred["upper"])).mean()
    assert 0.83 <= inside <= 0.97, inside
    conf = bm.predict(test, interval="confidence")
    assert ((conf.lower <= conf.prediction) & (conf.prediction <= conf.upper)).all()
    assert (pred.upper - pred.lower).mean() > 2 * (conf.upper - conf.lower).mean()


def test_binomial_trials_weigh_the_rows(cases) -> None:
    """A binomial row of n trials counts as n bernoulli rows in the tree step (gradient
    ``n p - y``, Hessian ``n p (1 - p)``), and the prediction is a probability per trial."""
    train, test, bm, _ = cases("binomial", True)
    pred = bm.predict(test)["prediction"]
    assert ((pred > 0) & (pred < 1)).all()
    loss = FamilyLoss.from_design(_design(train, "binomial"))
    eta = np.linspace(-1, 1, len(train))
    rows = np.arange(len(train))
    grad, hess = loss.gradients(eta, rows, None)
    p, n, y = 1 / (1 + np.exp(-eta)), train["n"].to_numpy(float), train["y"].to_numpy()
    np.testing.assert_allclose(grad, n * p - y, rtol=1e-10)
    np.testing.assert_allclose(hess, n * p * (1 - p), rtol=1e-10)


def _design(data: pd.DataFrame, family: str, **kwargs):
    return build_design(hierfit.make_spec(formula_for(family), family=family, **kwargs), data)


def test_prior_weights_reach_both_steps(cases) -> None:
    """lme4 semantics: each row's log-likelihood is multiplied by its weight. Rows of weight 0
    are noise the fit must ignore: with them, the trees still learn the sine and predict fresh
    rows better than the GLMM; the same rows at weight 1 spoil the fit. With no trees kept, a
    weighted fit is ``mixed``'s weighted GLMM."""
    train, test, _, mixed = cases("bernoulli", True)
    rng = np.random.default_rng(5)
    noise = simulate(300, "bernoulli", True, 99).assign(y=lambda d: rng.integers(0, 2, len(d)).astype(float))
    data = pd.concat([train.assign(w=1.0), noise.assign(w=0.0)], ignore_index=True)
    weighted = _fit(data, "bernoulli", weights="w")
    unweighted = _fit(data.drop(columns="w"), "bernoulli")
    assert weighted.statistics["n_trees"] > 0
    assert _nll(weighted, test) < _nll(unweighted, test) - 0.01
    assert _nll(weighted, test) < _nll(mixed, test) - 0.05
    # tree-step gradients carry the weights, relative to their mean over the rows that count
    design = _design(data, "bernoulli", weights="w")
    loss = FamilyLoss.from_design(design)
    grad, hess = loss.gradients(np.zeros(design.n), np.arange(design.n), None)
    assert (grad[len(train):] == 0).all() and (hess[len(train):] <= 1e-12).all()
    np.testing.assert_allclose(hess[: len(train)], 0.25)
    # linear data, weights 1..3: no trees kept, and the fit is the weighted GLMM
    lin, _, _, _ = cases("poisson", False)
    lin = lin.assign(w=np.random.default_rng(6).integers(1, 4, len(lin)).astype(float))
    bm, mixed = _fit(lin, "poisson", weights="w"), _fit(lin, "poisson", "mixed", weights="w")
    assert bm.statistics["n_trees"] == 0
    pd.testing.assert_frame_equal(bm.group_effects(), mixed.group_effects())


def test_save_and_load_give_the_same_fit(cases, tmp_path) -> None:
    _, test, bm, _ = cases("negative_binomial", True)
    assert bm.statistics["n_trees"] > 0
    bm.save(tmp_path / "fit")
    back = hierfit.load(tmp_path / "fit")
    for interval in (None, "confidence", "prediction"):
        pd.testing.assert_frame_equal(back.predict(test, interval=interval), bm.predict(test, interval=interval), check_exact=True)
    pd.testing.assert_frame_equal(back.decompose(test), bm.decompose(test), check_exact=True)
    pd.testing.assert_frame_equal(back.group_effects(), bm.group_effects(), check_exact=True)
    pd.testing.assert_frame_equal(back.variance_components(), bm.variance_components(), check_exact=True)
    assert back.statistics == bm.statistics and back.summary() == bm.summary()
