"""Engine ``lightgbm``: partial-dependence effects checked by brute force, fallback, recovery."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import hierfit
from hierfit.exceptions import EngineError, HierfitWarning, SpecError

pytest.importorskip("lightgbm")

QUICK = {"num_threads": 1, "learning_rate": 0.1, "early_stopping_rounds": 20, "num_boost_round": 300}


def _fit(sim, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierfitWarning)
        return hierfit.fit(sim.formula, sim.data, engine="lightgbm", national="United_state", **{**QUICK, **options})


@pytest.fixture(scope="module")
def small():
    """6 markets x 4 submarkets x 60 rows: 24 paths, so the averages are exact (<= pd_max_paths)."""
    return hierfit.simulate(n_markets=6, n_submarkets=4, rows_per_submarket=60, seed=11, national_name="United_state")


@pytest.fixture(scope="module")
def small_fit(small):
    return _fit(small)


def _all_paths(fit, data: pd.DataFrame) -> np.ndarray:
    """F(x_i, path) for every row and every known path, straight from the booster."""
    ef = fit.engine_fit
    design = fit.encoding.apply(data)
    paths = ef.averager.path_codes
    n_paths = len(next(iter(paths.values())))
    rows = np.repeat(np.arange(design.n), n_paths)
    codes = {lv: np.tile(c, design.n) for lv, c in paths.items()}
    return ef.predict_raw(ef.features.matrix(design, rows, codes)).reshape(design.n, n_paths), paths


def test_parts_are_partial_dependence_over_the_tree(small, small_fit) -> None:
    """national + population = average over markets of their submarket averages, etc."""
    rows = small.data.sample(25, random_state=3)
    F, paths = _all_paths(small_fit, rows)
    market_of_path = paths["market"]
    market_avg = np.stack([F[:, market_of_path == m].mean(axis=1) for m in range(6)], axis=1)
    root = market_avg.mean(axis=1)
    parts = small_fit.decompose(rows)
    design = small_fit.encoding.apply(rows)
    own_m = design.group_index["market"]
    own_s = design.group_index["submarket"]
    np.testing.assert_allclose(parts["national"] + parts["population"], root, atol=1e-10)
    market_part = parts["market[Intercept]"] + parts["market[x1]"]
    sub_part = parts["submarket[Intercept]"]
    own_market_avg = market_avg[np.arange(len(rows)), own_m]
    own = F[np.arange(len(rows)), own_s]
    # the level columns hold the fitted line; the remainder holds the rest of each level's change
    np.testing.assert_allclose(market_part + sub_part + parts["remainder"], own - root, atol=1e-10)
    np.testing.assert_allclose(parts.sum(axis=1), own, atol=1e-10)
    assert np.corrcoef(market_part, own_market_avg - root)[0, 1] > 0.9


def test_decomposition_sums_to_prediction_with_remainder(small, small_fit) -> None:
    parts = small_fit.decompose(small.data)
    assert list(parts.columns) == ["national", "market[Intercept]", "market[x1]", "submarket[Intercept]", "population", "remainder"]
    link = small_fit.predict(small.data, scale="link")["prediction"]
    np.testing.assert_allclose(parts.sum(axis=1), link, atol=1e-10)
    assert parts["national"].nunique() == 1
    national = small_fit.group_effects("total").iloc[0]
    assert national["estimate"] == pytest.approx(parts["national"].iloc[0])
    # the fitted line takes most of each level's change: the remainder is the smaller part
    assert parts["remainder"].abs().mean() < (parts["market[Intercept]"] + parts["market[x1]"]).abs().mean()


def test_unseen_submarket_predicts_its_markets_average(small, small_fit) -> None:
    rows = small.data.head(4).copy()
    rows["submarket"] = "Sub_new"
    F, paths = _all_paths(small_fit, rows)
    market = small_fit.encoding.apply(rows).group_index["market"]
    expected = np.array([F[i, paths["market"] == market[i]].mean() for i in range(len(rows))])
    with pytest.warns(hierfit.UnseenGroupsWarning, match="Sub_new"):
        pred = small_fit.predict(rows)
    np.testing.assert_allclose(pred["prediction"], expected, atol=1e-10)
    assert (pred["level_used"] == "market").all()
    rows["market"] = "Market_new"
    with pytest.warns(hierfit.UnseenGroupsWarning):
        pred = small_fit.predict(rows)
    np.testing.assert_allclose(pred["prediction"], F.mean(axis=1), atol=1e-10)  # balanced tree: plain mean
    assert (pred["level_used"] == "national").all()


def test_group_effects_recover_the_truth(reference_sim) -> None:
    fit = _fit(reference_sim)
    est = fit.group_effects("deviation")
    true = reference_sim.truth.group_effects("deviation")
    both = est.merge(true, on=["level", "group", "term"], suffixes=("", "_true")).query("level != 'national'")
    corr = {key: np.corrcoef(g.estimate, g.estimate_true)[0, 1] for key, g in both.groupby(["level", "term"])}
    # 500 rows per market: derived market effects track the truth closely; submarkets (100 rows,
    # true SD 0.4 against noise SD 1) are noisier for trees, which do not pool.
    assert corr[("market", "Intercept")] > 0.9
    assert corr[("market", "x1")] > 0.9
    assert corr[("submarket", "Intercept")] > 0.6
    assert np.isnan(est["std_error"]).all()


def test_per_group_slope_columns(small) -> None:
    fit = _fit(small, slope_features="onehot")
    names = fit.engine_fit.features.names
    assert sum(n.startswith("x1__market__") for n in names) == 6
    assert "x1_market" not in names  # never x1 times an integer code
    parts = fit.decompose(small.data)
    np.testing.assert_allclose(parts.sum(axis=1), fit.predict(small.data, scale="link")["prediction"], atol=1e-10)


def test_native_and_persistence(small, small_fit, tmp_path) -> None:
    import lightgbm as lgb

    assert isinstance(small_fit.native(), lgb.Booster)
    assert "market" in small_fit.native().feature_name() and "United_state" not in small_fit.native().feature_name()
    small_fit.save(tmp_path / "fit")
    assert (tmp_path / "fit" / "engine" / "booster.txt").exists()
    back = hierfit.load(tmp_path / "fit")
    pd.testing.assert_frame_equal(back.decompose(small.data), small_fit.decompose(small.data))


def test_bernoulli_and_grouped_validation(small) -> None:
    data = small.data.assign(y=(small.data["y"] > small.data["y"].median()).astype(float))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierfitWarning)
        fit = hierfit.fit(small.formula, data, engine="lightgbm", family="bernoulli", validation="grouped", **QUICK)
    p = fit.predict(data)["prediction"]
    assert ((p > 0) & (p < 1)).all()
    assert np.corrcoef(p, data["y"])[0, 1] > 0.3


def test_bad_options_and_specs(small) -> None:
    with pytest.raises(EngineError, match="slope_features.*'onehot', 'trees'.*'x1code'"):
        _fit(small, slope_features="x1code")
    with pytest.raises(EngineError, match="validation_fraction"):
        _fit(small, validation_fraction=0.9)
    crossed = small.data.assign(region=np.where(np.arange(len(small.data)) % 2 == 0, "R1", "R2"))
    with pytest.raises(SpecError, match="one chain of nested levels"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", HierfitWarning)
            hierfit.fit("y ~ x1 + (1 | market) + (1 | region)", crossed, engine="lightgbm", **QUICK)


def test_sampled_path_averages_keep_predictions_exact(small) -> None:
    """Above ``pd_max_paths`` descendant paths a group's average uses a fixed sample of them:
    seen rows still predict the booster's own score, and the parts still sum to it."""
    fit = _fit(small, pd_max_paths=8)
    rows = small.data.sample(40, random_state=5)
    F, paths = _all_paths(fit, rows)
    own = F[np.arange(len(rows)), fit.encoding.apply(rows).group_index["submarket"]]
    np.testing.assert_allclose(fit.predict(rows, scale="link")["prediction"], own, atol=1e-10)
    parts = fit.decompose(rows)
    np.testing.assert_allclose(parts.sum(axis=1), own, atol=1e-10)
    root = (parts["national"] + parts["population"]).to_numpy()
    exact = F.mean(axis=1)  # balanced tree: the national average is the plain mean over paths
    # 8 systematic picks over 6 markets (market SD 0.8): the level is off by ~0.1, the shape in x kept
    assert np.abs(root - exact).mean() < 0.15
    assert np.corrcoef(root, exact)[0, 1] > 0.95


FAST = {"num_boost_round": 150, "learning_rate": 0.1, "early_stopping_rounds": 20, "pd_rows_per_group": 20, "num_threads": 1}


def _quiet_fit(formula, data, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierfitWarning)
        return hierfit.fit(formula, data, engine="lightgbm", **FAST, **kw)


def test_weights_reach_the_trees() -> None:
    """Constant weights change nothing; a market of weight ~0 has no say, whatever its outcomes."""
    sim = hierfit.simulate(n_markets=5, n_submarkets=3, rows_per_submarket=40, seed=21)
    formula = "y ~ x1 + x2 + (1 | market) + (1 | market:submarket)"
    plain = _quiet_fit(formula, sim.data)
    tripled = _quiet_fit(formula, sim.data.assign(w=3.0), weights="w")
    np.testing.assert_allclose(tripled.predict(sim.data)["prediction"], plain.predict(sim.data)["prediction"], rtol=0, atol=1e-9)
    # a market of weight ~0 has no say: its outcomes shifted by +100 leave its predictions where
    # they were (unweighted, the trees follow it up). Not to the digit: the validation loss is flat
    # near its minimum, and 1e-9 changes of it move early stopping by a few trees.
    first = sim.data["market"] == sim.data["market"].iloc[0]
    shifted = sim.data.assign(y=np.where(first, sim.data["y"] + 100.0, sim.data["y"]))
    quiet = _quiet_fit(formula, sim.data.assign(w=np.where(first, 1e-12, 1.0)), weights="w")
    loud = _quiet_fit(formula, shifted.assign(w=np.where(first, 1e-12, 1.0)), weights="w")
    heard = _quiet_fit(formula, shifted)
    market = sim.data[first]
    assert np.abs(loud.predict(market)["prediction"] - quiet.predict(market)["prediction"]).mean() < 0.5
    assert (heard.predict(market)["prediction"] - quiet.predict(market)["prediction"]).min() > 50.0


def test_offset_is_the_known_part_of_the_raw_score() -> None:
    sim = hierfit.simulate(n_markets=5, n_submarkets=3, rows_per_submarket=40, seed=22, family="poisson", exposure=True, national=0.5)
    fit = _quiet_fit(sim.formula, sim.data, family="poisson")
    parts = fit.decompose(sim.data)
    np.testing.assert_allclose(parts["offset"], np.log(sim.data["exposure"]), rtol=1e-12)
    native = fit.engine_fit.native_linear_predictor(fit.encoding.apply(sim.data))
    np.testing.assert_allclose(parts.sum(axis=1), native, rtol=0, atol=1e-9)
    # the trees learn the rate, not the exposure: fitting without the offset is worse on held-in deviance
    without = _quiet_fit(sim.formula.replace(" + offset(log(exposure))", ""), sim.data, family="poisson")
    y = sim.data["y"].to_numpy(float)

    def deviance(f) -> float:
        mu = f.predict(sim.data)["prediction"].to_numpy()
        return float(np.mean(2 * (np.where(y > 0, y * np.log(np.where(y > 0, y, 1) / mu), 0) - (y - mu))))

    assert "offset(log(exposure))" in sim.formula
    assert deviance(fit) < deviance(without)


def test_binomial_is_cross_entropy_on_the_share_weighted_by_trials() -> None:
    """Successes out of trials fit as the share under cross-entropy, weighted by the trials."""
    sim = hierfit.simulate(n_markets=5, n_submarkets=3, rows_per_submarket=30, seed=23, family="binomial", national=0.3)
    d = sim.data
    fit = _quiet_fit("cbind(y, n - y) ~ x1 + x2 + (1 | market) + (1 | market:submarket)", d, family="binomial")
    p = fit.predict(d)["prediction"].to_numpy()
    assert ((p > 0) & (p < 1)).all()
    # calibrated like the data: expected successes add up to the observed ones (cross-entropy's
    # first-order condition for the intercept, to the trees' shrinkage)
    assert float((d["n"] * p).sum()) == pytest.approx(float(d["y"].sum()), rel=0.02)
    # one trial per row is a bernoulli outcome: the same loss, the same trees
    one = d.assign(y=(d["y"] > d["n"] / 2).astype(float), n=1)
    as_binomial = _quiet_fit("cbind(y, n - y) ~ x1 + x2 + (1 | market) + (1 | market:submarket)", one, family="binomial")
    as_bernoulli = _quiet_fit("y ~ x1 + x2 + (1 | market) + (1 | market:submarket)", one, family="bernoulli")
    np.testing.assert_allclose(as_binomial.predict(one)["prediction"], as_bernoulli.predict(one)["prediction"], rtol=1e-6)


def test_negative_binomial_mean_by_poisson_deviance_and_theta_by_maximum_likelihood() -> None:
    """The trees fit the mean (Poisson deviance); theta is the ML size at the means of the
    validation rows (in-sample means that follow the noise would overstate it)."""
    from hierfit.engines.dispersion import theta_ml
    from hierfit.model import get_family

    sim = hierfit.simulate(n_markets=5, n_submarkets=3, rows_per_submarket=60, seed=24, family="negative_binomial", national=1.0)
    formula = "y ~ x1 + x2 + (1 | market) + (1 | market:submarket)"
    fit = _quiet_fit(formula, sim.data, family="negative_binomial")
    theta = fit.variance_components().set_index("level").loc["dispersion", "variance"]
    assert fit.statistics["theta"] == theta
    true = float(sim.truth.variance_components().set_index("level").loc["dispersion", "variance"])
    assert 0.5 * true < theta < 1.2 * true
    # in-sample, the same trees' means would claim far less dispersion than there is
    mu = fit.predict(sim.data)["prediction"].to_numpy()
    y = sim.data["y"].to_numpy(float)
    assert theta_ml(get_family("negative_binomial"), y, mu, np.ones(len(y))) > 1.3 * true
