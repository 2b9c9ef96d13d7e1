"""Display objects: what from_result() computes, and that plot() draws it, keeps ax_ and figure_, and returns the display."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure

import hierfit
from hierfit.evaluate import compare
from hierfit.exceptions import FitWarning, SpecError
from hierfit.plots import (
    CaterpillarDisplay,
    ComparisonDisplay,
    DecompositionDisplay,
    HierarchyTreeDisplay,
    PredictiveCheckDisplay,
    ShrinkageDisplay,
)


def _texts(fig: Figure) -> str:
    return " ".join(t.get_text() for ax in fig.axes for t in ax.texts + [ax.title]) + " " + (fig._suptitle.get_text() if fig._suptitle else "")


def test_tree_shows_every_node_with_effect_and_interval(plot_fits):
    fit = plot_fits["ols"]
    d = HierarchyTreeDisplay.from_result(fit)
    assert d.n_rows == 20 and d.n_pages == 1 and not any(r.collapsed for r in d.rows)
    assert d.plot() is d  # scikit-learn's Display convention: plot() returns the display
    fig = d.figure_
    assert isinstance(fig, Figure) and d.ax_ in fig.axes
    text = _texts(fig)
    effects = fit.group_effects("total").query("term == 'Intercept'")
    m1 = effects.query("group == 'Market_01'").iloc[0]
    assert f"Market_01  {m1.estimate:.2f} [{m1.lower:.2f}, {m1.upper:.2f}]" in text
    assert "United_state" in text
    slope = HierarchyTreeDisplay.from_result(fit, term="x1")
    assert slope.n_rows == 5  # x1 varies by market only


class _TruthAsFit:
    """The simulated truth dressed as a fit (intervals +-0.1): a 50 x 20 tree without fitting one."""

    engine = "truth"

    def __init__(self, sim):
        spec = hierfit.make_spec(sim.formula)
        self.hierarchy = hierfit.build_design(spec, sim.data).hierarchy
        self._effects = sim.truth.group_effects()

    def group_effects(self, kind="both", level=0.9):
        t = self._effects[self._effects.kind == kind] if kind != "both" else self._effects
        return t.assign(lower=t.estimate - 0.1, upper=t.estimate + 0.1)


def test_large_tree_collapses_expands_and_pages():
    sim = hierfit.simulate(n_markets=50, n_submarkets=20, rows_per_submarket=1, seed=0)
    fit = _TruthAsFit(sim)
    d = HierarchyTreeDisplay.from_result(fit, max_rows=60)
    assert d.n_rows == 50 and all(r.collapsed for r in d.rows)
    assert all(len(r.descendants_at_leaves()) == 20 for r in d.rows)
    assert "20 submarket groups, " in _texts(d.figure_)
    opened = HierarchyTreeDisplay.from_result(fit, max_rows=80, expand=["Market_07"])
    assert opened.n_rows == 49 + 20
    paged = HierarchyTreeDisplay.from_result(fit, max_rows=20, page=2)
    assert paged.n_pages == 3 and paged.n_rows == 10
    assert "page 3 of 3" in _texts(paged.figure_)
    with pytest.raises(SpecError, match="'page' must be between 0 and 2"):
        HierarchyTreeDisplay.from_result(fit, max_rows=20, page=3)


def test_tree_rejects_unknown_term_and_kind(plot_fits):
    with pytest.raises(SpecError, match=r"'term' must be one of: Intercept, x1. Got 'x9'"):
        HierarchyTreeDisplay.from_result(plot_fits["ols"], term="x9")
    with pytest.raises(SpecError, match="'kind' must be one of"):
        HierarchyTreeDisplay.from_result(plot_fits["ols"], kind="sum")


def test_caterpillar_sorts_groups_and_draws_one_panel_per_engine(plot_fits, plot_sim):
    d = CaterpillarDisplay.from_result(plot_fits, level="submarket", truth=plot_sim.truth)
    first = next(iter(d.tables.values()))
    assert list(first.loc[d.order, "estimate"]) == sorted(first["estimate"])
    assert d.truth is not None and d.truth.reindex(d.order).notna().all()
    fig = d.figure_
    assert len(fig.axes) == len(plot_fits)
    _, ax = plt.subplots()
    one = CaterpillarDisplay.from_result(plot_fits["ols"], level="market", kind="deviation")
    assert one.plot(ax=ax).figure_ is ax.figure and one.reference == 0.0
    with pytest.raises(SpecError, match="'level' must be one of: market, submarket"):
        CaterpillarDisplay.from_result(plot_fits["ols"], level="store")


def test_shrinkage_of_partial_pooling_is_below_one(plot_fits):
    if len(plot_fits) < 2:
        pytest.skip("no partial-pooling engine ('mixed') is registered yet")
    d = ShrinkageDisplay.from_results(plot_fits["ols"], plot_fits["mixed"], level="submarket")
    # 20 submarkets of unequal size with SD 0.4: partial pooling pulls deviations toward 0
    assert 0.0 < d.slope < 0.98
    assert len(d.table) == 20 and (d.table.n_rows > 0).all()
    assert isinstance(d.figure_, Figure)


def test_shrinkage_of_a_fit_against_itself_is_one(plot_fits):
    d = ShrinkageDisplay.from_results(plot_fits["ols"], plot_fits["ols"], level="market")
    assert d.slope == pytest.approx(1.0)
    _, ax = plt.subplots()
    assert d.plot(ax=ax).figure_ is ax.figure


def test_predictive_check_replicates_match_the_data_scale(plot_fits, plot_sim):
    d = PredictiveCheckDisplay.from_result(plot_fits["ols"], plot_sim.data, n_rep=20)
    assert d.replicates.shape == (20, len(plot_sim.data))
    assert abs(d.replicates.std() / plot_sim.data["y"].std() - 1) < 0.1
    assert d.pit is not None and 0.35 < d.pit.mean() < 0.65
    assert len(d.figure_.axes) == 2


def test_decomposition_parts_sum_to_the_prediction(plot_fits, plot_sim):
    fit = plot_fits["ols"]
    rows = [0, 5, 40]
    d = DecompositionDisplay.from_result(fit, plot_sim.data, rows=rows)
    pred = fit.predict(plot_sim.data.iloc[rows], scale="link")["prediction"].to_numpy()
    np.testing.assert_allclose(d.total, pred)
    assert {"national", "market[Intercept]", "submarket[Intercept]"} <= set(d.parts.columns)
    assert d.labels[1].startswith("row 5  Market_")
    assert isinstance(d.figure_, Figure)
    with pytest.raises(SpecError, match="'rows' are positions"):
        DecompositionDisplay.from_result(fit, plot_sim.data, rows=[10**6])


def test_comparison_chart_has_a_panel_per_metric(plot_sim):
    comp = compare(plot_sim.formula, plot_sim.data, engines=["ols"], cv="kfold:3", national="United_state", progress=False)
    d = ComparisonDisplay.from_comparison(comp, metrics=["rmse", "coverage", "mlpd"])
    fig = d.figure_
    visible = [a for a in fig.axes if a.get_visible()]
    assert len(visible) == 3
    with pytest.raises(SpecError, match="'metrics' must be one of"):
        ComparisonDisplay.from_comparison(comp, metrics=["r2"])


def _family_fit(family: str, fit_family: str | None = None, **sim_kw):
    """A ``mixed`` fit of a simulated tree of 900 rows (``fit_family`` to misspecify it)."""
    sim = hierfit.simulate(n_markets=6, n_submarkets=5, rows_per_submarket=30, seed=3, family=family, **sim_kw)
    fit = hierfit.fit(sim.formula, sim.data, engine="mixed", family=fit_family or family)
    return sim, fit


def test_binary_check_is_a_calibration_curve():
    sim, fit = _family_fit("bernoulli")
    d = PredictiveCheckDisplay.from_result(fit, sim.data)
    t = d.calibration_
    assert d.kind == "calibration" and d.rootogram_ is None and len(t) == 10
    assert t["weight"].sum() == len(sim.data) and t["predicted"].is_monotonic_increasing
    # a well-specified fit: the diagonal inside most bins' 95% intervals
    assert ((t["lower"] <= t["predicted"]) & (t["predicted"] <= t["upper"])).mean() >= 0.8
    assert "calibration" in _texts(d.figure_)


def test_binomial_calibration_weighs_rows_by_their_trials():
    sim, fit = _family_fit("binomial")
    t = PredictiveCheckDisplay.from_result(fit, sim.data).calibration_
    assert t["weight"].sum() == sim.data["n"].sum()
    assert t["observed"].mul(t["weight"]).sum() == pytest.approx(sim.data["y"].sum())


def test_count_check_is_a_rootogram_that_shows_ignored_overdispersion():
    sim, fit = _family_fit("negative_binomial", dispersion=2.0, exposure=True)
    d = PredictiveCheckDisplay.from_result(fit, sim.data)
    r = d.rootogram_
    assert d.kind == "rootogram" and "rootogram" in _texts(d.figure_)
    assert r["observed"].sum() <= len(sim.data) and r["expected"].sum() <= len(sim.data)
    good = np.abs(np.sqrt(r["observed"]) - np.sqrt(r["expected"]))
    assert good.max() < 2.5  # sqrt scale: a Poisson count's SD is ~0.5 there
    with pytest.warns(FitWarning, match="overdispersed"):
        over, pois = _family_fit("negative_binomial", fit_family="poisson", dispersion=1.0)
    bad = PredictiveCheckDisplay.from_result(pois, over.data).rootogram_
    # a Poisson fit to NB(theta=1) counts predicts far too few zeros
    assert bad.loc[0, "observed"] > 3 * bad.loc[0, "expected"]
