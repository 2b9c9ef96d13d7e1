"""Engine ``neural``: accuracy against simulated truth, pooling, fallback, exactness, persistence.

The two expensive fits (reference DGP and nonlinear DGP, 5,000 rows each) are made once per
module; the other checks use the small tree and ``FAST_OPTIONS``.
"""

from __future__ import annotations

import re

import warnings

import numpy as np
import pandas as pd
import pytest

import hierfit
from hierfit.exceptions import EngineError, HierfitWarning

torch = pytest.importorskip("torch")

from hierfit.engines.neural import FAST_OPTIONS  # noqa: E402

FORMULA = "y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)"
N_MEMBERS = 4  # acceptance fits: fewer members than the default 5 keeps the file under ~3 min


def _fit(data: pd.DataFrame, engine: str = "neural", **options) -> hierfit.FitResult:
    if engine == "neural":
        options = {"progress": False, **options}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierfitWarning)
        return hierfit.fit(FORMULA, data, engine=engine, national="United_state", **options)


def _rmse(a, b) -> float:
    return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


@pytest.fixture(scope="module")
def linear_case(reference_sim):
    """Reference DGP: 10 of 50 submarkets held out entirely, then 20% of the other rows."""
    df = reference_sim.data
    rng = np.random.default_rng(5)
    subs = (df.market + ":" + df.submarket).to_numpy()
    new_subs = rng.choice(np.unique(subs), 10, replace=False)
    is_new = np.isin(subs, new_subs)
    holdout = ~is_new & (rng.random(len(df)) < 0.2)
    train = ~is_new & ~holdout
    fits = {"neural": _fit(df[train], n_members=N_MEMBERS, seed=1), "ols": _fit(df[train], "ols")}
    if "mixed" in hierfit.ENGINES:
        fits["mixed"] = _fit(df[train], "mixed")
    return dict(sim=reference_sim, train=train, holdout=holdout, new=is_new, fits=fits)


@pytest.fixture(scope="module")
def nonlinear_case():
    sim = hierfit.simulate(nonlinear="all", seed=11, national_name="United_state")
    holdout = np.random.default_rng(1).random(len(sim.data)) < 0.2
    train = sim.data[~holdout]
    fits = {"neural": _fit(train, n_members=N_MEMBERS, seed=2), "ols": _fit(train, "ols")}
    if "mixed" in hierfit.ENGINES:
        fits["mixed"] = _fit(train, "mixed")
    return dict(sim=sim, holdout=holdout, fits=fits)


def _submarket_recovery(fit: hierfit.FitResult, truth: pd.DataFrame) -> float:
    m = truth.merge(fit.group_effects("total"), on=["level", "group", "term"], suffixes=("_true", ""))
    sub = m[(m.level == "submarket") & (m.term == "Intercept")]
    assert len(sub) == 40
    return _rmse(sub.estimate, sub.estimate_true)


def test_linear_dgp_holdout_rmse_within_3pct_of_noise_floor(linear_case) -> None:
    """The noise floor is the RMSE of the true mean function on the same holdout rows."""
    sim, rows = linear_case["sim"], linear_case["holdout"]
    test = sim.data[rows]
    floor = _rmse(sim.truth.mean[rows], test.y)
    rmse = _rmse(linear_case["fits"]["neural"].predict(test)["prediction"], test.y)
    print(f"neural holdout RMSE {rmse:.4f}, noise floor {floor:.4f}, ratio {rmse / floor:.4f}")
    assert rmse <= 1.03 * floor


def _statsmodels_submarket_recovery(data: pd.DataFrame, truth: pd.DataFrame) -> float:
    """The same model fitted by statsmodels' MixedLM (REML), as an independent mixed-model reference."""
    import statsmodels.formula.api as smf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = smf.mixedlm("y ~ x1 + x2", data, groups="market", re_formula="1 + x1",
                        vc_formula={"submarket": "0 + C(submarket)"}).fit(reml=True)
    rows = []
    for market, re in m.random_effects.items():
        for sub in data.loc[data.market == market, "submarket"].unique():
            total = m.fe_params["Intercept"] + re["market"] + re[f"submarket[C(submarket)[{sub}]]"]
            rows.append({"level": "submarket", "group": f"{market}:{sub}", "term": "Intercept", "estimate": total})
    m = truth.merge(pd.DataFrame(rows), on=["level", "group", "term"], suffixes=("_true", ""))
    assert len(m) == 40
    return _rmse(m.estimate, m.estimate_true)


def test_linear_dgp_group_effect_recovery(linear_case) -> None:
    """Submarket totals vs truth: within 1.5× a mixed model's RMSE, and no worse than no pooling.

    At 80 rows per submarket with SD 0.4 and sigma 1, pooling shrinks by only ~7%: a mixed
    model and no-pooling OLS are within a few percent of each other (either can win on one
    data set), so against OLS we require "not materially worse" (10%).
    """
    sim = linear_case["sim"]
    truth = sim.truth.group_effects("total")
    fits = linear_case["fits"]
    neural = _submarket_recovery(fits["neural"], truth)
    ols = _submarket_recovery(fits["ols"], truth)
    print(f"submarket-total RMSE: neural {neural:.4f}, ols (no pooling) {ols:.4f}")
    assert neural <= 1.1 * ols
    if "mixed" in fits:
        reference, name = _submarket_recovery(fits["mixed"], truth), "mixed"
    else:
        print("engine 'mixed' is not registered: comparing with statsmodels MixedLM on the same data instead")
        reference, name = _statsmodels_submarket_recovery(sim.data[linear_case["train"]], truth), "statsmodels MixedLM"
    print(f"submarket-total RMSE: {name} {reference:.4f}, ratio {neural / reference:.3f}")
    assert neural <= 1.5 * reference


def test_linear_dgp_variance_components(linear_case) -> None:
    """SDs near the truth (submarket 0.4 from 40 groups; residual 1.0 from 3,200 rows)."""
    vc = linear_case["fits"]["neural"].variance_components().set_index(["level", "term1", "term2"])["sd_or_corr"]
    assert 0.25 <= vc["submarket", "Intercept", ""] <= 0.6
    assert 0.3 <= vc["market", "x1", ""] <= 0.8
    assert 0.95 <= vc["residual", "", ""] <= 1.05


def test_new_submarkets_beat_national_only(linear_case) -> None:
    """Rows of submarkets never seen: the market's effects carry over (their SDs are 0.8 and 0.5).

    The yardstick is the oracle that knows the true market effects but not the new submarket's
    (true mean minus the true submarket deviation): the fit must win at least half of the
    oracle's MSE gain over predicting with the national level only.
    """
    sim, rows = linear_case["sim"], linear_case["new"]
    test = sim.data[rows]
    fit = linear_case["fits"]["neural"]
    with pytest.warns(hierfit.UnseenGroupsWarning):
        pred = fit.predict(test)
        parts = fit.decompose(test)
    assert (pred.level_used == "market").all()
    national_only = parts["national"] + parts["population"]
    dev = sim.truth.group_effects("deviation").query("level == 'submarket' and term == 'Intercept'")
    sub_dev = dev.set_index("group")["estimate"].loc[(test.market + ":" + test.submarket).to_numpy()].to_numpy()
    oracle = sim.truth.mean[rows] - sub_dev
    mse = {name: _rmse(p, test.y) ** 2 for name, p in [("fit", pred.prediction), ("national", national_only), ("oracle", oracle)]}
    print(f"new-submarket rows, RMSE: fit {mse['fit'] ** 0.5:.4f}, national level only {mse['national'] ** 0.5:.4f}, "
          f"market oracle {mse['oracle'] ** 0.5:.4f}")
    assert mse["national"] - mse["fit"] >= 0.5 * (mse["national"] - mse["oracle"]) > 0


def test_nonlinear_dgp_beats_linear_engines(nonlinear_case) -> None:
    sim, rows = nonlinear_case["sim"], nonlinear_case["holdout"]
    test = sim.data[rows]
    floor = _rmse(sim.truth.mean[rows], test.y)
    scores = {name: _rmse(f.predict(test)["prediction"], test.y) for name, f in nonlinear_case["fits"].items()}
    print(f"nonlinear DGP holdout RMSE {scores}, noise floor {floor:.4f}")
    assert scores["neural"] <= 1.10 * floor
    for other in ("ols", "mixed"):
        if other in scores:
            assert scores["neural"] <= 0.85 * scores[other]


def test_decomposition_is_exact_and_nonlinear_part_identified(linear_case, nonlinear_case) -> None:
    """Parts sum to the predictor; the nonlinear part is orthogonal to the linear columns."""
    from hierfit.engines.base import LinearEngineFit

    fit = nonlinear_case["fits"]["neural"]
    train = nonlinear_case["sim"].data[~nonlinear_case["holdout"]]
    parts = fit.decompose(train)
    assert list(parts.columns) == ["national", "market[Intercept]", "market[x1]", "submarket[Intercept]", "population", "nonlinear"]
    np.testing.assert_allclose(parts.sum(axis=1), fit.predict(train, scale="link")["prediction"], rtol=1e-10, atol=1e-10)
    design = fit.encoding.apply(train)
    R = LinearEngineFit.layout_row_matrix(fit.engine_fit, design)
    nl = parts["nonlinear"].to_numpy()
    # zero mean overall and in every group, no linear trend in x1, x2 (up to the 1e-6 ridge)
    assert np.abs(R.T @ nl).max() < 1e-3 * np.sqrt(len(nl)) * nl.std()
    assert nl.std() > 0.3  # and it does carry the simulated nonlinearity (SD about 0.6)
    assert np.corrcoef(nl, nonlinear_case["sim"].truth.nonlinear[~nonlinear_case["holdout"]])[0, 1] > 0.8


def test_intervals_cover(linear_case) -> None:
    """90% prediction intervals on holdout rows, and group-effect intervals on the truth."""
    sim, rows = linear_case["sim"], linear_case["holdout"]
    fit = linear_case["fits"]["neural"]
    test = sim.data[rows]
    pred = fit.predict(test, interval="prediction")
    covered = ((pred.lower <= test.y) & (test.y <= pred.upper)).mean()
    assert 0.85 <= covered <= 0.95
    conf = fit.predict(test, interval="confidence")
    assert ((conf.upper - conf.lower) < (pred.upper - pred.lower)).all()
    truth = sim.truth.group_effects("total")
    m = truth.merge(fit.group_effects("total"), on=["level", "group", "term"], suffixes=("_true", ""))
    sub = m[(m.level == "submarket") & (m.term == "Intercept")]
    cover = ((sub.lower <= sub.estimate_true) & (sub.estimate_true <= sub.upper)).mean()
    print(f"submarket-total 90% interval coverage {cover:.2f} (40 groups)")
    assert 0.6 <= cover <= 1.0


@pytest.fixture(scope="module")
def small_fit(small_sim):
    return _fit(small_sim.data, **FAST_OPTIONS)


def test_deterministic_given_seed(small_sim) -> None:
    """Same seed, same fit; another seed, another network (the MLP kept so the seed matters)."""
    options = {**FAST_OPTIONS, "nonlinear": "always"}
    first, again = _fit(small_sim.data, **options), _fit(small_sim.data, **options)
    pd.testing.assert_frame_equal(again.predict(small_sim.data), first.predict(small_sim.data))
    other = _fit(small_sim.data, **{**options, "seed": 1})
    assert not np.allclose(other.predict(small_sim.data).prediction, first.predict(small_sim.data).prediction)
    assert first.decompose(small_sim.data)["nonlinear"].abs().max() > 0


def test_mlp_is_kept_only_where_it_predicts_held_out_rows_better(linear_case, nonlinear_case) -> None:
    """Linear DGP: the MLP's held-out gain is noise, so it is dropped and the fit is the mixed
    model (REML variances, exact conditional modes). Nonlinear DGP: the gain is many SEs."""
    linear, nonlinear = linear_case["fits"]["neural"].statistics, nonlinear_case["fits"]["neural"].statistics
    print(f"held-out gain per row: linear DGP {linear['nonlinear_gain']:+.4f} ± {linear['nonlinear_gain_se']:.4f}, "
          f"nonlinear DGP {nonlinear['nonlinear_gain']:+.4f} ± {nonlinear['nonlinear_gain_se']:.4f}")
    assert linear["nonlinear_kept"] == 0 and linear["nonlinear_gain"] < 2 * linear["nonlinear_gain_se"]
    assert nonlinear["nonlinear_kept"] == 1 and nonlinear["nonlinear_gain"] > 5 * nonlinear["nonlinear_gain_se"]
    test = linear_case["sim"].data[linear_case["holdout"]]
    neural = linear_case["fits"]["neural"]
    assert (neural.decompose(test)["nonlinear"] == 0).all()
    if "mixed" in linear_case["fits"]:
        np.testing.assert_allclose(neural.predict(test).prediction, linear_case["fits"]["mixed"].predict(test).prediction, atol=1e-6)


def test_native_and_weights_only_persistence(small_sim, small_fit, tmp_path) -> None:
    net = small_fit.native()
    assert isinstance(net, torch.nn.Module) and net.n_members == FAST_OPTIONS["n_members"]
    small_fit.save(tmp_path / "fit")
    # the state_dict is plain arrays: readable without torch and without unpickling
    with np.load(tmp_path / "fit" / "engine" / "weights.npz", allow_pickle=False) as weights:
        assert set(weights.files) == set(net.state_dict())
        for name, tensor in net.state_dict().items():
            np.testing.assert_array_equal(weights[name], tensor.numpy())
    back = hierfit.load(tmp_path / "fit")
    assert isinstance(back.native(), torch.nn.Module)
    pd.testing.assert_frame_equal(back.decompose(small_sim.data), small_fit.decompose(small_sim.data))
    lo1 = small_fit.predict(small_sim.data, interval="confidence")
    lo2 = back.predict(small_sim.data, interval="confidence")
    pd.testing.assert_frame_equal(lo1, lo2)


def test_grouped_validation_refits_held_out_groups(small_sim) -> None:
    fit = _fit(small_sim.data, **{**FAST_OPTIONS, "validation": "group", "refit": None})
    dev = fit.group_effects("deviation")
    sub = dev[dev.level == "submarket"]
    # after the refit on all rows no submarket is left at its parent's value
    assert (sub.estimate.abs() > 1e-6).all()
    assert fit.statistics["epochs"] >= 1


def test_linear_only_network_has_zero_nonlinear_part(small_sim) -> None:
    fit = _fit(small_sim.data, **{**FAST_OPTIONS, "hidden": ()})
    assert (fit.decompose(small_sim.data)["nonlinear"] == 0).all()


@pytest.mark.parametrize("family", ["bernoulli", "poisson"])
def test_glm_families(family) -> None:
    sim = hierfit.simulate(n_markets=6, n_submarkets=3, rows_per_submarket=40, family=family, seed=3, national_name="United_state")
    fit = _fit(sim.data, family=family, **FAST_OPTIONS)
    pred = fit.predict(sim.data, interval="confidence")
    assert (pred.prediction > 0).all() and ((pred.prediction < 1).all() if family == "bernoulli" else True)
    assert (pred.lower <= pred.prediction).all() and (pred.prediction <= pred.upper).all()
    assert "residual" not in set(fit.variance_components().level)
    truth = sim.truth.group_effects("total")
    m = truth.merge(fit.group_effects("total"), on=["level", "group", "term"], suffixes=("_true", ""))
    market = m[(m.level == "market") & (m.term == "Intercept")]
    assert np.corrcoef(market.estimate, market.estimate_true)[0, 1] > 0.8


@pytest.mark.parametrize(
    ("option", "value", "match"),
    [
        ("validation", "rows", "one of: 'group', 'random'; got 'rows'"),
        ("n_members", 0, "an integer >= 1 (or None); got 0"),
        ("variance", "reml", "one of: 'joint', 'laplace'; got 'reml'"),
        ("hidden", "64", "a list of integers (or None); got '64'"),
        ("hidden", (64, 0), "a tuple of positive layer widths"),
        ("nonlinear", "never", "one of: 'always', 'auto'; got 'never'"),
    ],
)
def test_bad_options_are_explained(small_sim, option, value, match) -> None:
    with pytest.raises(EngineError, match=re.escape(match)):
        _fit(small_sim.data, **{option: value})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_without_a_gpu_is_explained(small_sim) -> None:
    with pytest.raises(EngineError, match="no CUDA device"):
        _fit(small_sim.data, device="cuda", **FAST_OPTIONS)
