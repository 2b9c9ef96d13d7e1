"""Engine ``boosted-mixed``: beats plain boosting on a nonlinear hierarchical DGP, matches the
mixed model's group effects on a linear one, exact decomposition, fallback, intervals."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import hierfit
from hierfit.engines import ENGINES
from hierfit.exceptions import EngineError, HierfitWarning, SpecError

pytest.importorskip("lightgbm")

BOOSTED = {"num_threads": 1, "learning_rate": 0.1, "trees_per_round": 10, "patience": 2}
LIGHTGBM = {"num_threads": 1, "learning_rate": 0.1, "early_stopping_rounds": 20}
EFFECTS_ENGINE = "mixed" if "mixed" in ENGINES else "ols"


def _fit(formula, data, engine, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierfitWarning)
        return hierfit.fit(formula, data, engine=engine, national="United_state", **options)


def _rmse(a, b) -> float:
    return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


@pytest.fixture(scope="module")
def nonlinear():
    """Reference tree with all nonlinear terms; one submarket per market held out (unseen)."""
    sim = hierfit.simulate(nonlinear="all", seed=1, national_name="United_state")
    df = sim.data
    rng = np.random.default_rng(1)
    key = (df["market"] + ":" + df["submarket"]).to_numpy()
    held = [rng.choice(sorted({k for k in key if k.startswith(m + ":")})) for m in sorted(df["market"].unique())]
    unseen = np.isin(key, held)
    test = ~unseen & (rng.random(len(df)) < 0.2)
    train = ~unseen & ~test
    truth = sim.truth.group_effects("deviation")
    sub = truth[truth.level == "submarket"].set_index("group")["estimate"]
    # the best any model can do for an unseen submarket: the truth without its own deviation
    ideal = sim.truth.mean - sub.loc[key].to_numpy()
    fits = {
        "lightgbm": _fit(sim.formula, df[train], "lightgbm", **LIGHTGBM),
        "boosted-mixed": _fit(sim.formula, df[train], "boosted-mixed", effects_engine=EFFECTS_ENGINE, **BOOSTED),
    }
    return sim, train, test, unseen, ideal, fits


def _holdout(nonlinear, engine):
    sim, _, test, unseen, ideal, fits = nonlinear
    df = sim.data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierfitWarning)
        seen_pred = fits[engine].predict(df[test])["prediction"]
        unseen_pred = fits[engine].predict(df[unseen])["prediction"]
    return {
        "seen": _rmse(seen_pred, df["y"][test]),
        "seen_truth": _rmse(seen_pred, sim.truth.mean[test]),
        "unseen": _rmse(unseen_pred, df["y"][unseen]),
        "unseen_ideal": _rmse(unseen_pred, ideal[unseen]),
    }


def test_beats_lightgbm_on_the_nonlinear_dgp(nonlinear) -> None:
    """Seen rows: at most lightgbm's holdout RMSE, and clearly closer to the true mean (pooling
    plus a smooth f). Numbers recorded in benchmarks/RESULTS.md (boosting section)."""
    lgb, bm = _holdout(nonlinear, "lightgbm"), _holdout(nonlinear, "boosted-mixed")
    assert bm["seen"] <= lgb["seen"]
    assert bm["seen_truth"] <= 0.85 * lgb["seen_truth"]


def test_unseen_submarkets(nonlinear) -> None:
    """Unseen submarkets: lower than lightgbm (whose fallback is already its market's average
    over known submarkets) and far below LightGBM's own handling of an unknown category."""
    sim, _, _, unseen, _, fits = nonlinear
    lgb, bm = _holdout(nonlinear, "lightgbm"), _holdout(nonlinear, "boosted-mixed")
    assert bm["unseen"] < lgb["unseen"]
    assert bm["unseen_ideal"] <= 0.9 * lgb["unseen_ideal"]
    ef = fits["lightgbm"].engine_fit
    design = fits["lightgbm"].encoding.apply(sim.data[unseen])
    native = ef.predict_raw(ef.features.matrix(design))  # unseen category -> LightGBM's 'other' branch
    assert bm["unseen"] < 0.85 * _rmse(native, sim.data["y"][unseen])


def test_group_effects_match_the_mixed_model_on_a_linear_dgp(reference_sim) -> None:
    """Without a nonlinear part the trees should add little: effects recover the truth about as
    well as the effects engine alone (within 10% RMSE, or 0.02 absolute)."""
    sim = reference_sim
    bm = _fit(sim.formula, sim.data, "boosted-mixed", effects_engine=EFFECTS_ENGINE, **BOOSTED)
    base = _fit(sim.formula, sim.data, EFFECTS_ENGINE)
    truth = sim.truth.group_effects("deviation")
    keys = ["level", "group", "term"]
    for name, fit in (("bm", bm), ("base", base)):
        truth = truth.merge(fit.group_effects("deviation")[keys + ["estimate"]].rename(columns={"estimate": name}), on=keys)
    for (level, term), g in truth[truth.level != "national"].groupby(["level", "term"]):
        err_bm, err_base = _rmse(g.bm, g.estimate), _rmse(g.base, g.estimate)
        assert err_bm <= 1.1 * err_base + 0.02, (level, term, err_bm, err_base)
        assert np.corrcoef(g.bm, g.base)[0, 1] > 0.98


def test_trees_are_kept_only_when_they_beat_the_mixed_model_beyond_noise(nonlinear) -> None:
    """Sparse linear data (10 rows per submarket, 45 validation rows): the best round's edge
    is noise, so no trees are kept and the fit is the effects engine's. Nonlinear DGP: the
    trees' validation gain is many standard errors."""
    sim = hierfit.simulate(seed=3, rows_per_submarket=10, national_name="United_state")
    bm = _fit(sim.formula, sim.data, "boosted-mixed", effects_engine=EFFECTS_ENGINE, **BOOSTED)
    base = _fit(sim.formula, sim.data, EFFECTS_ENGINE)
    st = bm.statistics
    print(f"sparse linear: gain {st['trees_gain']:.4f} ± {st['trees_gain_se']:.4f}, trees kept {st['n_trees']:.0f}")
    assert st["n_trees"] == 0 and not st["trees_gain"] > 2 * st["trees_gain_se"]
    np.testing.assert_allclose(bm.predict(sim.data).prediction, base.predict(sim.data).prediction, atol=1e-8)
    kept = nonlinear[-1]["boosted-mixed"].statistics
    assert kept["n_trees"] > 0 and kept["trees_gain"] > 5 * kept["trees_gain_se"]


def test_exact_decomposition_with_centred_nonlinear_part(nonlinear) -> None:
    sim, train, _, _, _, fits = nonlinear
    fit = fits["boosted-mixed"]
    parts = fit.decompose(sim.data[train])
    assert list(parts.columns) == ["national", "market[Intercept]", "market[x1]", "submarket[Intercept]", "population", "nonlinear"]
    np.testing.assert_allclose(parts.sum(axis=1), fit.predict(sim.data[train], scale="link")["prediction"], atol=1e-10)
    assert abs(parts["nonlinear"].mean()) < 1e-8  # centred on the fitting rows: the intercept keeps its meaning
    national = fit.group_effects("total").iloc[0]
    assert national["estimate"] == pytest.approx(parts["national"].iloc[0])
    # the trees learn what the linear part cannot: correlated with the true nonlinear term
    assert np.corrcoef(parts["nonlinear"], sim.truth.nonlinear[train])[0, 1] > 0.8


def test_intervals_and_fallback_come_from_the_mixed_step(nonlinear) -> None:
    sim, _, test, _, _, fits = nonlinear
    fit = fits["boosted-mixed"]
    ge = fit.group_effects()
    assert np.isfinite(ge["std_error"]).all() and (ge["lower"] < ge["upper"]).all()
    rows = sim.data[test].head(5).copy()
    pred = fit.predict(rows, interval="prediction")
    assert ((pred.lower < pred.prediction) & (pred.prediction < pred.upper)).all()
    new = rows.assign(submarket="Sub_new")
    with pytest.warns(hierfit.UnseenGroupsWarning):
        parts = fit.decompose(new)
    with pytest.warns(hierfit.UnseenGroupsWarning):
        fallback = fit.predict(new)
    assert (parts["submarket[Intercept]"] == 0).all() and (fallback["level_used"] == "market").all()
    same = ["national", "market[Intercept]", "market[x1]", "population", "nonlinear"]
    np.testing.assert_allclose(parts[same].to_numpy(), fit.decompose(rows)[same].to_numpy(), atol=1e-12)


def test_native_and_persistence(nonlinear, tmp_path) -> None:
    import lightgbm as lgb

    sim, _, test, _, _, fits = nonlinear
    fit = fits["boosted-mixed"]
    native = fit.native()
    assert isinstance(native["booster"], lgb.Booster)
    assert native["booster"].feature_name() == ["x1", "x2"]  # the trees never see a group column
    fit.save(tmp_path / "fit")
    back = hierfit.load(tmp_path / "fit")
    pd.testing.assert_frame_equal(back.predict(sim.data[test], interval="confidence"), fit.predict(sim.data[test], interval="confidence"))
    pd.testing.assert_frame_equal(back.group_effects(), fit.group_effects())


def test_bad_options(small_sim) -> None:
    with pytest.raises(EngineError, match="effects_engine.*registered linear engine.*ols.*'neural'"):
        _fit(small_sim.formula, small_sim.data, "boosted-mixed", effects_engine="neural", **BOOSTED)
    with pytest.raises(SpecError, match="fits only the default link of family 'bernoulli'"):
        data = small_sim.data.assign(y=(small_sim.data.y > 0).astype(float))
        _fit(small_sim.formula, data, "boosted-mixed", family="bernoulli", link="probit", **BOOSTED)
    with pytest.raises(SpecError, match="population-level predictors"):
        _fit("y ~ 1 + (1 | market)", small_sim.data, "boosted-mixed", **BOOSTED)
    with pytest.raises(EngineError, match="trees_per_round"):
        _fit(small_sim.formula, small_sim.data, "boosted-mixed", **{**BOOSTED, "trees_per_round": 0})
