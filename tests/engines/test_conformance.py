"""One contract, every engine and family: each registered and installed engine passes the same
checks for every outcome family the registry says it fits.

Fits use each engine module's ``FAST_OPTIONS`` on a small simulated tree (one outcome per
family) and are made once per session (the ``fits`` fixture of ``tests/conftest.py``). An
engine whose optional dependencies are missing is skipped with the install hint.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import hierfit
from hierfit.engines import ENGINES

FIXED = ["term", "estimate", "std_error", "lower", "upper"]
VARIANCE = ["level", "term1", "term2", "variance", "sd_or_corr"]
GROUP = ["level", "group", "parent", "term", "kind", "estimate", "std_error", "lower", "upper", "n_rows"]


#: every (engine, family) pair the registry declares
PAIRS = [(e, f) for e in sorted(ENGINES) for f in ENGINES[e].capabilities.families]
PAIR_IDS = [f"{e}-{f}" for e, f in PAIRS]


@pytest.mark.parametrize("engine,family", PAIRS, ids=PAIR_IDS)
def test_tables_follow_the_contract(engine, family, fits) -> None:
    fit = fits(engine, family)
    fe = fit.fixed_effects()
    assert list(fe.columns) == FIXED
    assert fe.term.tolist() == ["Intercept", "x1", "x2"]
    assert list(fit.variance_components().columns) == VARIANCE
    ge = fit.group_effects()
    assert list(ge.columns) == GROUP
    assert ge.iloc[0][["level", "group", "term"]].tolist() == ["national", "United_state", "Intercept"]
    assert set(ge.kind) == {"deviation", "total"}
    assert set(ge.level) == {"national", "market", "submarket"}
    assert (ge.n_rows > 0).all() and (ge.loc[ge.level == "national", "n_rows"] == fit.n_obs).all()
    assert ((ge.lower <= ge.estimate + 1e-9) | ge.lower.isna()).all()
    assert fit.summary().startswith(f"hierfit fit -- engine '{engine}'")


@pytest.mark.parametrize("engine,family", PAIRS, ids=PAIR_IDS)
def test_totals_are_national_plus_deviations(engine, family, fits) -> None:
    ge = fits(engine, family).group_effects().set_index(["level", "group", "term", "kind"])["estimate"]
    national = ge["national", "United_state", "Intercept", "total"]
    for (level, group, term, kind), value in ge.items():
        if level != "submarket" or kind != "total":
            continue
        market = group.split(":")[0]
        expected = national + ge["market", market, "Intercept", "deviation"] + ge["submarket", group, "Intercept", "deviation"]
        assert value == pytest.approx(expected, abs=1e-8)


@pytest.mark.parametrize("engine,family", PAIRS, ids=PAIR_IDS)
def test_prediction_and_decomposition_equal_the_engines_own_prediction(engine, family, fits, family_data) -> None:
    """``predict`` and ``decompose`` against the engine's native computation of the linear
    predictor (the booster's raw score, the network's forward pass, X beta + Z b from the
    solver's solution, the posterior mean): a wrong map from estimates to rows fails here."""
    fit = fits(engine, family)
    conformance_data = family_data(family)
    parts = fit.decompose(conformance_data)
    assert parts.columns[0] == "national"
    assert {"market[Intercept]", "market[x1]", "submarket[Intercept]", "population"} <= set(parts.columns)
    native = fit.engine_fit.native_linear_predictor(fit.encoding.apply(conformance_data))
    link = fit.predict(conformance_data, scale="link")["prediction"].to_numpy()
    scale = max(1.0, float(np.abs(native).max()))
    np.testing.assert_allclose(link, native, rtol=0, atol=1e-8 * scale)
    np.testing.assert_allclose(parts.sum(axis=1).to_numpy(), native, rtol=0, atol=1e-8 * scale)
    response = fit.predict(conformance_data)["prediction"].to_numpy()
    np.testing.assert_allclose(response, fit.spec.family.inverse_link(native), rtol=1e-10, atol=1e-10)
    pd.testing.assert_index_equal(parts.index, conformance_data.index)


@pytest.mark.parametrize("engine,family", PAIRS, ids=PAIR_IDS)
def test_predict_keeps_rows_and_order(engine, family, fits, family_data) -> None:
    fit = fits(engine, family)
    conformance_data = family_data(family)
    perm = conformance_data.sample(frac=1.0, random_state=1)
    a = fit.predict(conformance_data, interval="prediction")
    b = fit.predict(perm, interval="prediction")
    assert list(a.columns) == ["prediction", "lower", "upper", "level_used"]
    pd.testing.assert_index_equal(b.index, perm.index)
    np.testing.assert_allclose(b.prediction.to_numpy(), a.loc[perm.index].prediction.to_numpy(), rtol=1e-10, atol=1e-10)
    if ENGINES[engine].capabilities.uncertainty != "none":
        # a mean lies inside its confidence interval; a discrete outcome's prediction quantiles
        # may both sit on one side of a small mean, so they only have to be ordered
        c = fit.predict(conformance_data, interval="confidence")
        assert (c.lower <= c.prediction).all() and (c.prediction <= c.upper).all()
        assert (a.lower <= a.upper).all()
        if fit.spec.family.normal_errors:
            assert (a.lower <= a.prediction).all() and (a.prediction <= a.upper).all()
        # link-scale confidence bounds are the linear predictor's: the link of the response bounds
        # (up to the interpolation between draws, which a nonlinear link does not commute with)
        cl = fit.predict(conformance_data, interval="confidence", scale="link")
        np.testing.assert_allclose(fit.spec.family.inverse_link(cl[["lower", "upper"]].to_numpy()),
                                   c[["lower", "upper"]].to_numpy(), rtol=2e-3, atol=1e-9)
    else:
        assert a.lower.isna().all()


@pytest.mark.parametrize("engine,family", PAIRS, ids=PAIR_IDS)
def test_save_load_round_trip(engine, family, fits, family_data, tmp_path) -> None:
    """A loaded fit is the saved one: every table, prediction, seeded interval and part, exactly."""
    fit = fits(engine, family)
    conformance_data = family_data(family)
    fit.save(tmp_path / "fit")
    back = hierfit.load(tmp_path / "fit")
    assert back.engine == engine and type(back.engine_fit) is type(fit.engine_fit)
    rows = conformance_data.head(6).copy()
    rows.loc[rows.index[0], "submarket"] = "Sub_new"  # an unseen group: its interval adds the group's variance
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hierfit.UnseenGroupsWarning)
        for data in (conformance_data, rows):
            for interval in (None, "confidence", "prediction"):
                for level in (0.9, 0.5):
                    pd.testing.assert_frame_equal(back.predict(data, interval=interval, level=level),
                                                  fit.predict(data, interval=interval, level=level), check_exact=True)
            pd.testing.assert_frame_equal(back.predict(data, scale="link"), fit.predict(data, scale="link"), check_exact=True)
            pd.testing.assert_frame_equal(back.decompose(data), fit.decompose(data), check_exact=True)
    for kind in ("both", "deviation", "total"):
        pd.testing.assert_frame_equal(back.group_effects(kind=kind, level=0.8), fit.group_effects(kind=kind, level=0.8), check_exact=True)
    pd.testing.assert_frame_equal(back.fixed_effects(level=0.8), fit.fixed_effects(level=0.8), check_exact=True)
    pd.testing.assert_frame_equal(back.variance_components(), fit.variance_components(), check_exact=True)
    assert back.summary() == fit.summary()
    assert back.statistics.keys() == fit.statistics.keys()
    np.testing.assert_array_equal(list(back.statistics.values()), list(fit.statistics.values()))
    assert back.diagnostics == fit.diagnostics and back.n_obs == fit.n_obs and back.spec == fit.spec
    assert back.hierarchy.describe() == fit.hierarchy.describe()
    native = fit.engine_fit.native_linear_predictor(fit.encoding.apply(conformance_data))
    np.testing.assert_array_equal(back.engine_fit.native_linear_predictor(back.encoding.apply(conformance_data)), native)


@pytest.mark.parametrize("engine,family", PAIRS, ids=PAIR_IDS)
def test_unseen_groups_fall_back(engine, family, fits, family_data) -> None:
    fit = fits(engine, family)
    rows = family_data(family).head(3).copy()
    rows.loc[rows.index[0], "submarket"] = "Sub_new"
    rows.loc[rows.index[1], "market"] = "Market_new"
    with pytest.warns(hierfit.UnseenGroupsWarning, match="Market_new"):
        pred = fit.predict(rows)
    assert pred.level_used.tolist() == ["market", "national", "submarket"]
    assert np.isfinite(pred.prediction).all()
    with pytest.warns(hierfit.UnseenGroupsWarning):
        parts = fit.decompose(rows)
    assert parts.loc[rows.index[0], "submarket[Intercept]"] == 0.0
    assert parts.loc[rows.index[1], ["market[Intercept]", "market[x1]"]].abs().sum() == 0.0


@pytest.mark.parametrize("engine,family", PAIRS, ids=PAIR_IDS)
def test_marginal_effects_use_the_engines_own_prediction_and_uncertainty(engine, family, fits, family_data) -> None:
    """``predictions`` is ``predict`` (per row and averaged) and its intervals come from the same
    uncertainty as the engine's confidence intervals (draws thinned to at most 1,000, so the
    bounds agree up to the Monte Carlo error of a 5% quantile)."""
    from hierfit.exceptions import FitWarning

    fit = fits(engine, family)
    data = family_data(family)
    link = fit.predict(data, scale="link")["prediction"]
    scale = max(1.0, float(link.abs().max()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)  # an engine without uncertainty says so once
        rows = fit.predictions(data, scale="link")
        overall = fit.predictions(data, by=True)
        ci = fit.predict(data, interval="confidence", scale="link")
    pd.testing.assert_index_equal(rows.index, data.index)
    np.testing.assert_allclose(rows["estimate"], link, rtol=0, atol=1e-10 * scale)
    assert overall["estimate"].iloc[0] == pytest.approx(fit.predict(data)["prediction"].mean(), rel=1e-12)
    if ENGINES[engine].capabilities.uncertainty == "none":
        assert rows[["std_error", "lower", "upper"]].isna().all().all()
        return
    width = (ci["upper"] - ci["lower"]).to_numpy()
    for bound in ("lower", "upper"):
        gap = np.abs(rows[bound].to_numpy() - ci[bound].to_numpy()) / width
        assert np.median(gap) < 0.05 and gap.max() < 0.3, (bound, np.median(gap), gap.max())
    assert (rows["lower"] <= rows["estimate"] + 1e-12).all() and (rows["estimate"] <= rows["upper"] + 1e-12).all()


POSTERIOR_PAIRS = [(e, f) for e, f in PAIRS if ENGINES[e].capabilities.uncertainty == "posterior" and f in ("gaussian", "bernoulli")]


@pytest.mark.parametrize("engine,family", POSTERIOR_PAIRS, ids=[f"{e}-{f}" for e, f in POSTERIOR_PAIRS])
def test_variance_partition_has_posterior_intervals(engine, family, fits, family_data) -> None:
    """The partition's intervals are quantiles of the partition computed draw by draw; checked
    against the posterior's own variables (submarket: an intercept, so its variance is sd²;
    the residual: sigma²; the population part: the variance of X beta over the rows)."""
    fit = fits(engine, family)
    vp = fit.variance_partition(level=0.8).set_index(["quantity", "level"])
    post = fit.native().posterior
    q = [0.1, 0.9]
    sd = np.asarray(post["sd_submarket"].values).reshape(-1)
    np.testing.assert_allclose(vp.loc[("variance", "submarket"), ["lower", "upper"]].to_numpy(float), np.quantile(sd**2, q), rtol=1e-10)
    if family == "gaussian":
        sigma = np.asarray(post["sigma"].values).reshape(-1)
        np.testing.assert_allclose(vp.loc[("variance", "residual"), ["lower", "upper"]].to_numpy(float), np.quantile(sigma**2, q), rtol=1e-10)
    data = family_data(family)
    beta = np.asarray(post["beta"].values).reshape(-1, 3)
    X = np.column_stack([np.ones(len(data)), data["x1"], data["x2"]])
    var_fixed = np.var(X @ beta.T, axis=0, ddof=1)
    np.testing.assert_allclose(vp.loc[("variance", "population"), ["lower", "upper"]].to_numpy(float), np.quantile(var_fixed, q), rtol=1e-8)
    inside = (vp["lower"] <= vp["estimate"] + 1e-12) & (vp["estimate"] <= vp["upper"] + 1e-12)
    assert inside.all(), vp[~inside]


OFFSET_ENGINES = [e for e in sorted(ENGINES) if ENGINES[e].capabilities.offsets and "poisson" in ENGINES[e].capabilities.families]


@pytest.mark.parametrize("engine", OFFSET_ENGINES)
def test_a_doubled_exposure_shifts_the_log_rate_by_log_2(engine) -> None:
    """Every engine that takes offsets: the offset is a known part of the linear predictor."""
    entry = ENGINES[engine]
    if not entry.available:
        pytest.skip(f"needs {', '.join(entry.missing_dependencies())}")
    sim = hierfit.simulate(n_markets=4, n_submarkets=3, rows_per_submarket=20, seed=11, family="poisson", exposure=True,
                           national=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hierfit.HierfitWarning)  # small data: few groups
        fit = hierfit.fit(sim.formula, sim.data, engine=engine, family="poisson", **entry.fast_options())
    doubled = sim.data.assign(exposure=2 * sim.data["exposure"])
    shift = fit.predict(doubled, scale="link")["prediction"] - fit.predict(sim.data, scale="link")["prediction"]
    np.testing.assert_allclose(shift.to_numpy(), np.log(2.0), rtol=1e-12)
    ratio = fit.predict(doubled)["prediction"] / fit.predict(sim.data)["prediction"]
    np.testing.assert_allclose(ratio.to_numpy(), 2.0, rtol=1e-12)


@pytest.mark.parametrize("engine", sorted(e for e in ENGINES if "bernoulli" in ENGINES[e].capabilities.families))
def test_a_link_the_likelihood_is_not_written_for_is_refused(engine) -> None:
    """An engine whose likelihood is logit's must not read its scores through a probit link."""
    from hierfit.engines import check_capabilities
    from hierfit.exceptions import SpecError

    spec = hierfit.make_spec("y ~ x1 + (1 | market)", family="bernoulli", link="probit")
    if ENGINES[engine].capabilities.links == "any":
        check_capabilities(ENGINES[engine], spec)
    else:
        with pytest.raises(SpecError, match="fits only the default link of family 'bernoulli' \\(logit\\)"):
            check_capabilities(ENGINES[engine], spec)


#: engines that take weights, less the posterior samplers: three sampled fits each cost minutes,
#: and their weighted log density is tested to equal the replicated rows' exactly, without
#: sampling (tests/engines/test_bayes_families.py)
WEIGHT_ENGINES = [e for e in sorted(ENGINES) if ENGINES[e].capabilities.weights and "poisson" in ENGINES[e].capabilities.families
                  and ENGINES[e].capabilities.uncertainty != "posterior"]


@pytest.mark.parametrize("engine", WEIGHT_ENGINES)
def test_integer_weights_act_as_replicated_rows(engine) -> None:
    """Every engine that takes prior weights reads them as lme4 does for a count: a row of
    weight 2 counts as two rows. Exact (1e-6) for the likelihood engines without sampling;
    for the others the weighted fit is clearly closer to the replicated one than the unweighted
    fit is: the weights reach the fit. (Not equal: sampling and ensembles are random, and an
    engine holding out validation rows sees copies of one row on both sides; lightgbm, the
    loosest, measured 0.17 against 0.25.)"""
    entry = ENGINES[engine]
    if not entry.available:
        pytest.skip(f"needs {', '.join(entry.missing_dependencies())}")
    sim = hierfit.simulate(n_markets=5, n_submarkets=3, rows_per_submarket=20, seed=5, family="poisson", national=1.0)
    # weight 3 on the rows of one submarket per market and on a third of the rest: moves every level
    rng = np.random.default_rng(5)
    heavy = (sim.data["submarket"] == "Sub_1").to_numpy() | (rng.random(len(sim.data)) < 0.3)
    data = sim.data.assign(w=np.where(heavy, 3.0, 1.0))
    replicated = pd.concat([data] + [data[heavy]] * 2, ignore_index=True).assign(w=1.0)

    def link_prediction(frame: pd.DataFrame, weights: str | None) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", hierfit.HierfitWarning)
            fit = hierfit.fit(sim.formula, frame, engine=engine, family="poisson", weights=weights, **entry.fast_options())
        return fit.predict(sim.data, scale="link")["prediction"].to_numpy()

    weighted = link_prediction(data, "w")
    copies = link_prediction(replicated, None)
    plain = link_prediction(data, None)
    gap = np.abs(weighted - copies).mean()
    if entry.capabilities.uncertainty == "frequentist" and not entry.capabilities.nonlinear:
        np.testing.assert_allclose(weighted, copies, rtol=1e-6, atol=1e-6)
    else:
        assert gap < 0.8 * np.abs(plain - copies).mean(), (gap, np.abs(plain - copies).mean())
