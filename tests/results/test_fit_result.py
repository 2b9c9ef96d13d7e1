"""FitResult arguments and checks that travel with a fit."""

from __future__ import annotations

import pytest

import hierfit
from hierfit.exceptions import DataCheckWarning, DataError, EngineError, SpecError


def test_bad_engine_names_the_choices(small_sim) -> None:
    with pytest.raises(EngineError, match=r"must be one of: .*ols.*Got 'lmer'"):
        hierfit.fit(small_sim.formula, small_sim.data, engine="lmer")


def test_bad_engine_option_lists_options(small_sim) -> None:
    with pytest.raises(EngineError, match="has no option 'draws'. Its options are: rcond"):
        hierfit.fit(small_sim.formula, small_sim.data, engine="ols", draws=10)


@pytest.mark.parametrize(("kwargs", "match"), [({"interval": "credible"}, "'interval' must be"), ({"level": 1.5}, "strictly between 0 and 1")])
def test_predict_argument_errors(small_sim, kwargs, match) -> None:
    fit = hierfit.fit(small_sim.formula, small_sim.data, engine="ols")
    with pytest.raises(SpecError, match=match):
        fit.predict(small_sim.data, **kwargs)


def test_single_row_groups_are_flagged_and_travel_on_the_result(small_sim) -> None:
    data = small_sim.data.copy()
    data.loc[data.index[0], "submarket"] = "Lonely"
    with pytest.warns(DataCheckWarning, match="1 groups with a single row .*Market_01:Lonely"):
        fit = hierfit.fit(small_sim.formula, data, engine="ols")
    assert [d.check for d in fit.diagnostics] == ["single_row_groups"]


def test_checks_can_be_silenced_or_made_errors(small_sim) -> None:
    data = small_sim.data.copy()
    data.loc[data.index[0], "submarket"] = "Lonely"
    fit = hierfit.fit(small_sim.formula, data, engine="ols", checks={"single_row_groups": "ignore"})
    assert fit.diagnostics[0].severity == "ignore"
    with pytest.raises(DataError, match="set to 'error'"):
        hierfit.fit(small_sim.formula, data, engine="ols", checks={"single_row_groups": "error"})
    with pytest.raises(SpecError, match="Unknown check 'fewgroups'"):
        hierfit.fit(small_sim.formula, small_sim.data, engine="ols", checks={"fewgroups": "ignore"})


def test_group_effects_kind(small_sim) -> None:
    fit = hierfit.fit(small_sim.formula, small_sim.data, engine="ols")
    assert set(fit.group_effects("total").kind) == {"total"}
    with pytest.raises(SpecError, match="'kind' must be one of"):
        fit.group_effects("totals")


def test_group_row_counts_are_real_at_every_level(small_sim) -> None:
    """``n_rows`` counts fitted rows: the root holds all of them, each level's groups share them."""
    fit = hierfit.fit(small_sim.formula, small_sim.data, engine="ols")
    ge = fit.group_effects()
    n = len(small_sim.data)
    assert fit.n_obs == n and (ge.n_rows > 0).all()
    assert (ge.loc[ge.level == "national", "n_rows"] == n).all()
    for (level, term, kind), g in ge[ge.level != "national"].groupby(["level", "term", "kind"]):
        assert g.n_rows.sum() == n, (level, term, kind)
    sizes = small_sim.data.groupby("market").size()
    markets = ge[(ge.level == "market") & (ge.term == "Intercept") & (ge.kind == "total")].set_index("group").n_rows
    assert markets.to_dict() == sizes.to_dict()
    assert fit.engine_fit.group_effects(0.9).query("level == 'national'").n_rows.eq(n).all()  # the engine's own table too


def test_a_fit_without_levels_counts_its_rows_at_the_root(small_sim) -> None:
    ge = hierfit.fit("y ~ x1", small_sim.data.head(37), engine="ols").group_effects()
    assert set(ge.level) == {"national"} and (ge.n_rows == 37).all()
