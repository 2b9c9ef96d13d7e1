"""The simulator reproduces the stated DGP and returns truth in the estimates' schema."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import hierfit
from hierfit.exceptions import SpecError
from hierfit.simulation import LevelSim


@pytest.fixture(scope="module")
def wide_sim() -> hierfit.Simulation:
    # Many groups, few rows: group-level SDs are then estimated from hundreds of draws.
    return hierfit.simulate(n_markets=400, n_submarkets=5, rows_per_submarket=2, seed=11)


def test_reference_defaults(reference_sim) -> None:
    df = reference_sim.data
    assert len(df) == 5000
    assert df["market"].nunique() == 10
    assert df.groupby("market")["submarket"].nunique().eq(5).all()
    assert df.groupby(["market", "submarket"]).size().eq(100).all()
    for x in ("x1", "x2"):  # standardised exactly
        assert abs(df[x].mean()) < 1e-12 and abs(df[x].std(ddof=0) - 1) < 1e-12
    assert reference_sim.formula == "y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)"
    fixed = reference_sim.truth.fixed_effects().set_index("term")["estimate"]
    assert fixed.to_dict() == {"Intercept": 1.0, "x1": 0.5, "x2": 0.6}


def test_sample_sds_match_the_stated_dgp(wide_sim) -> None:
    dev = wide_sim.truth.group_effects("deviation")
    market = dev[dev.level == "market"].pivot(index="group", columns="term", values="estimate")
    sub = dev[(dev.level == "submarket")]["estimate"]
    n_m, n_s = len(market), len(sub)
    # SE of a sample SD is about sd / sqrt(2 n); allow 4 SE. SE of a correlation ~ (1 - rho^2)/sqrt(n).
    assert abs(market["Intercept"].std() - 0.8) < 4 * 0.8 / np.sqrt(2 * n_m)
    assert abs(market["x1"].std() - 0.5) < 4 * 0.5 / np.sqrt(2 * n_m)
    assert abs(np.corrcoef(market["Intercept"], market["x1"])[0, 1] - 0.3) < 4 * (1 - 0.09) / np.sqrt(n_m)
    assert abs(sub.std() - 0.4) < 4 * 0.4 / np.sqrt(2 * n_s)
    resid = wide_sim.data["y"].to_numpy() - wide_sim.truth.eta
    assert abs(resid.std() - 1.0) < 4 / np.sqrt(2 * len(resid))


def test_truth_rebuilds_every_row(reference_sim) -> None:
    """eta = national + slopes + market intercept/slope + submarket intercept, from the tables."""
    df = reference_sim.data
    dev = reference_sim.truth.group_effects("deviation")
    m = dev[dev.level == "market"].pivot(index="group", columns="term", values="estimate")
    s = dev[dev.level == "submarket"].set_index("group")["estimate"]
    key = df["market"] + ":" + df["submarket"]
    eta = 1.0 + 0.5 * df.x1 + 0.6 * df.x2 + m.loc[df.market, "Intercept"].to_numpy() + m.loc[df.market, "x1"].to_numpy() * df.x1 + s.loc[key].to_numpy()
    np.testing.assert_allclose(eta.to_numpy(), reference_sim.truth.eta, atol=1e-12)
    tot = reference_sim.truth.group_effects("total")
    sub_tot = tot[tot.level == "submarket"].set_index("group")["estimate"]
    expected = 1.0 + m.loc[[g.split(":")[0] for g in sub_tot.index], "Intercept"].to_numpy() + s.loc[sub_tot.index].to_numpy()
    np.testing.assert_allclose(sub_tot.to_numpy(), expected)


def test_truth_tables_share_the_fit_schema(reference_sim) -> None:
    fit = hierfit.fit(reference_sim.formula, reference_sim.data, engine="ols")
    truth = reference_sim.truth
    assert set(truth.group_effects().columns) <= set(fit.group_effects().columns)
    assert list(truth.variance_components().columns) == list(fit.variance_components().columns)
    merged = truth.group_effects().merge(fit.group_effects(), on=["level", "group", "term", "kind"])
    assert len(merged) == len(fit.group_effects()) - 4  # national rows are named differently (national vs United_state)


def test_depth_unbalanced_nonlinear_and_families() -> None:
    levels = [LevelSim("region", 3, 0.5), LevelSim("market", 4, 0.4, {"x1": 0.2}, 0.0), LevelSim("store", 3, 0.3)]
    sim = hierfit.simulate(levels=levels, rows_per_submarket=8, unbalanced=True, nonlinear="all", seed=5)
    assert sim.formula == "y ~ x1 + x2 + (1 | region) + (1 + x1 | region:market) + (1 | region:market:store)"
    sizes = sim.data.groupby(["region", "market", "store"]).size()
    assert sizes.nunique() > 1 and sizes.min() >= 1
    assert np.abs(sim.truth.nonlinear).max() > 0.5
    b = hierfit.simulate(n_markets=3, n_submarkets=2, rows_per_submarket=50, family="bernoulli", seed=1)
    assert set(np.unique(b.data.y)) <= {0.0, 1.0} and "residual" not in set(b.truth.variance_components().level)
    p = hierfit.simulate(n_markets=3, n_submarkets=2, rows_per_submarket=50, family="poisson", seed=1)
    assert (p.data.y >= 0).all() and (p.data.y == np.round(p.data.y)).all()


def test_seeded_and_reproducible() -> None:
    a = hierfit.simulate(n_markets=3, n_submarkets=2, rows_per_submarket=5, seed=3).data
    b = hierfit.simulate(n_markets=3, n_submarkets=2, rows_per_submarket=5, seed=3).data
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"nonlinear": "cubic"}, "Unknown nonlinear term 'cubic'"),
        ({"rows_per_submarket": 0}, "rows_per_submarket must be >= 1"),
        ({"levels": [LevelSim("market", 3, 0.5, {"x9": 0.1})]}, "varies slope 'x9'"),
        ({"family": "gamma"}, "must be one of: bernoulli, binomial, gaussian, negative_binomial, poisson"),
    ],
)
def test_bad_arguments(kwargs, match) -> None:
    with pytest.raises(SpecError, match=match):
        hierfit.simulate(**kwargs)
