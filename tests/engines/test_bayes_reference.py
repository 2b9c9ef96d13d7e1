"""Default-settings Bayesian fits on the reference DGP: ``pymc`` converges and recovers the
truth, saves and loads, samples new groups; ``stan`` agrees with it and reuses its compiled program.

The default fits are the slowest in the suite (~90 s for pymc), so they are made once, here, in
one module (``make test`` runs the suite on two pytest-xdist workers, ``--dist loadfile``: a
module's tests share a worker and its module fixtures).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import hierfit

pytest.importorskip("pymc")
az = pytest.importorskip("arviz")

QUIET = {"few_groups": "ignore", "ess": "ignore", "single_row_groups": "ignore"}


def _stan():
    """The Stan engine module, or a skip with the reason."""
    stan_mod = pytest.importorskip("hierfit.engines.bayes.stan_engine")
    try:
        stan_mod._import_stan()
    except Exception as exc:  # pragma: no cover - environment without pystan
        pytest.skip(f"pystan unavailable: {exc}")
    return stan_mod


@pytest.fixture(scope="module")
def reference_fit():
    """``pymc`` with default settings (4 chains x 1000 + 1000) on a seeded reference-DGP tree."""
    sim = hierfit.simulate(seed=11)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = hierfit.fit(sim.formula, sim.data, engine="pymc", national=sim.national, progressbar=False)
    return sim, result


def test_reference_dgp_defaults_converge_without_divergences(reference_fit):
    sim, result = reference_fit
    idata = result.native()
    assert int(idata.sample_stats["diverging"].sum()) == 0
    assert float(az.rhat(idata.posterior).max().to_array().max()) <= 1.01
    assert not [d for d in result.diagnostics if d.check in ("divergences", "rhat", "treedepth")]
    assert set(idata.groups()) >= {"posterior", "sample_stats", "observed_data", "log_likelihood"}
    truth = sim.truth.group_effects("total").set_index(["level", "group", "term"])["estimate"]
    est = result.group_effects("total").set_index(["level", "group", "term"])
    inside = (est["lower"] <= truth.loc[est.index]) & (truth.loc[est.index] <= est["upper"])
    assert inside.mean() >= 0.75  # 90% intervals; ~63 effects in one data set
    text = result.summary()
    assert "sd:market[x1]" in text and "half_normal" in text


def test_save_load_round_trip_keeps_inference_data(reference_fit, tmp_path):
    sim, result = reference_fit
    result.save(tmp_path / "fit")
    assert (tmp_path / "fit" / "engine" / "posterior.nc").exists()
    back = hierfit.load(tmp_path / "fit")
    assert np.allclose(back.native().posterior["sd_market"], result.native().posterior["sd_market"])
    assert back.group_effects().equals(result.group_effects())
    new = sim.data.head(50)
    assert np.allclose(back.predict(new, interval="prediction")["upper"], result.predict(new, interval="prediction")["upper"])


def test_new_groups_sampled_from_the_group_distribution_widen_intervals(reference_fit):
    sim, result = reference_fit
    new = sim.data.head(200).copy()
    new["market"] = "Market_new"
    assert result.engine_fit.new_groups == "sample"  # the default
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sampled = result.predict(new, interval="confidence")
        known = result.predict(sim.data.head(200), interval="confidence")
        result.engine_fit.new_groups = "parent"
        try:
            parent = result.predict(new, interval="confidence")
            known_parent = result.predict(sim.data.head(200), interval="confidence")
        finally:
            result.engine_fit.new_groups = "sample"
    assert np.allclose(parent["prediction"], sampled["prediction"])
    width_p = (parent["upper"] - parent["lower"]).mean()
    width_s = (sampled["upper"] - sampled["lower"]).mean()
    # a new market adds its intercept and slope variation (market SD 0.8 plus submarket SD 0.4)
    assert width_s > 2 * width_p
    assert np.allclose(known["upper"], known_parent["upper"])  # known groups unchanged


@pytest.fixture(scope="module")
def reference_pair(reference_fit):
    """Default Stan and pymc fits of the same tree."""
    _stan()  # skips without pystan
    sim, pymc_fit = reference_fit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stan_fit = hierfit.fit(sim.formula, sim.data, engine="stan", national=sim.national, progressbar=False, seed=3)
    return sim, stan_fit, pymc_fit


def test_stan_and_pymc_posteriors_agree_on_the_reference_dgp(reference_pair):
    import arviz as az

    _, s, p = reference_pair
    a = az.summary(s.native(), stat_focus="mean")
    b = az.summary(p.native(), stat_focus="mean")
    b = b.loc[a.index]
    mcse = np.sqrt(a["mcse_mean"] ** 2 + b["mcse_mean"] ** 2)
    # every parameter's mean within 3 MCSE plus 0.01 (summary rounding, many parameters); SDs within 10%
    assert np.all(np.abs(a["mean"] - b["mean"]) <= 3 * mcse + 0.01), (a["mean"] - b["mean"]).abs().sort_values().tail()
    assert np.all(np.abs(a["sd"] / b["sd"] - 1) <= 0.10), (a["sd"] / b["sd"]).sort_values().iloc[[0, -1]]
    assert int(s.native().sample_stats["diverging"].sum()) == 0
    assert s.summary().count("half_normal") == p.summary().count("half_normal")  # same priors stated


def test_second_fit_of_the_same_spec_does_not_recompile(reference_pair):
    _, first, _ = reference_pair
    code = first.engine_fit.stan_code
    assert _stan().is_compiled(code)
    other = hierfit.simulate(n_markets=5, n_submarkets=2, rows_per_submarket=20, seed=9)  # other data, same spec
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = hierfit.fit(other.formula, other.data, engine="stan", checks=QUIET, draws=100, tune=100, chains=1,
                            progressbar=False)
    assert again.engine_fit.stan_code == code
    assert again.engine_fit.info["compiled"] is False
    assert again.engine_fit.info["compile_seconds"] < 10  # a compile takes ~25 s or more
