"""compare(): every engine on the same folds, out-of-fold predictions, tables, persistence."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import hierfit
from hierfit.evaluate import Comparison, compare
from hierfit.evaluate.comparison import SUMMARY_COLUMNS
from hierfit.exceptions import EngineError, PersistenceError


def test_every_row_is_predicted_once_per_engine_out_of_fold(submarket_comparison, small_sim):
    comp = submarket_comparison
    preds = comp.predictions
    n = len(small_sim.data)
    for name in comp.engines:
        p = preds[preds.engine == name]
        assert sorted(p.row) == list(range(n))
        # the row was held out in the fold it is scored in
        assert np.array_equal(comp.fold_of_row[p.row.to_numpy()], p.fold.to_numpy())
        np.testing.assert_allclose(p.y.to_numpy(), small_sim.data["y"].to_numpy()[p.row.to_numpy()])
    # held-out submarkets inside known markets: every prediction falls back to the market
    assert set(preds.level_used) == {"market"}


def test_summary_pools_the_out_of_fold_rows(submarket_comparison):
    comp = submarket_comparison
    summary = comp.summary()
    assert list(summary.columns)[: len(SUMMARY_COLUMNS)] == SUMMARY_COLUMNS
    assert list(summary.engine) == comp.engines
    assert (summary.n_folds == 3).all()
    for _, row in summary.iterrows():
        p = comp.predictions.query("engine == @row.engine")
        assert row.rmse == pytest.approx(np.sqrt(np.mean((p.y - p.prediction) ** 2)))
        assert row.mlpd == pytest.approx(p.logpd.mean())
        assert 0.6 < row.coverage <= 1.0
    ols = summary.set_index("engine").loc["ols"]
    assert ols.mlpd_method == "t" and ols.pooling == "none"
    folds = comp.folds
    assert (folds.n_train + folds.n_test == 600).all()
    tidy = comp.tidy()
    assert set(tidy.columns) == {"engine", "fold", "metric", "value"}
    assert set(tidy.fold) == {"0", "1", "2", "all"}
    assert comp.best("rmse") in comp.engines


def test_recovery_is_reported_per_engine_and_level(submarket_comparison):
    rec = submarket_comparison.recovery
    for name in submarket_comparison.engines:
        levels = set(rec[(rec.engine == name) & (rec.kind == "total")].level)
        assert {"national", "market", "submarket", "fixed"} <= levels
    sub = rec[(rec.level == "submarket") & (rec.kind == "total")]
    # 25 rows per submarket: a total is known to about 1/sqrt(25) = 0.2
    assert (sub.rmse < 0.35).all()


def test_summary_shows_recovery_of_the_truth_per_level(submarket_comparison, small_sim):
    """As the README says: with a truth, summary() has the RMSE of total effects per level and term."""
    summary = submarket_comparison.summary().set_index("engine")
    recovery_columns = [c for c in summary.columns if c.startswith("recovery_rmse_")]
    assert recovery_columns == ["recovery_rmse_national[Intercept]", "recovery_rmse_national[x1]", "recovery_rmse_market[Intercept]",
                                "recovery_rmse_market[x1]", "recovery_rmse_submarket[Intercept]"]
    rec = submarket_comparison.recovery.query("kind == 'total'").set_index(["engine", "level", "term"]).rmse
    for name in submarket_comparison.engines:
        assert summary.loc[name, "recovery_rmse_submarket[Intercept]"] == rec[name, "submarket", "Intercept"]
        assert summary.loc[name, "recovery_rmse_market[x1]"] == rec[name, "market", "x1"]
    # by hand: the partial-pooling fit's submarket totals against the truth
    est = submarket_comparison.fits["mixed"].group_effects("total").query("level == 'submarket' and term == 'Intercept'")
    true = small_sim.truth.group_effects("total").query("level == 'submarket' and term == 'Intercept'")
    err = est.set_index("group").estimate - true.set_index("group").estimate
    assert summary.loc["mixed", "recovery_rmse_submarket[Intercept]"] == pytest.approx(np.sqrt(np.mean(err**2)))


def test_leave_market_out_falls_back_to_national(small_sim):
    comp = compare(small_sim.formula, small_sim.data, engines=["ols"], cv="market:3", progress=False)
    assert list(comp.summary().columns) == SUMMARY_COLUMNS, "without a truth, no recovery columns"
    assert set(comp.predictions.level_used) == {"national"}
    # predicting unseen markets is much harder than unseen submarkets
    assert comp.summary().rmse.iloc[0] > 1.1


def test_save_and_load_round_trip(submarket_comparison, small_sim, tmp_path):
    """Every table, the data, the truth and every fit come back exactly."""
    comp = submarket_comparison
    path = comp.save(tmp_path / "cmp")
    back = Comparison.load(path)
    assert back.engines == comp.engines and back.cv == comp.cv and back.level == comp.level and back.spec == comp.spec
    assert back.failures == comp.failures and back.notes == comp.notes
    for table in ("folds", "predictions", "recovery"):
        pd.testing.assert_frame_equal(getattr(back, table), getattr(comp, table), check_exact=True)
    pd.testing.assert_frame_equal(back.summary(), comp.summary(), check_exact=True)
    pd.testing.assert_frame_equal(back.tidy(), comp.tidy(), check_exact=True)
    pd.testing.assert_frame_equal(back.data, comp.data, check_exact=True)
    pd.testing.assert_frame_equal(back.truth, comp.truth, check_exact=True)
    assert back.fold_diagnostics == comp.fold_diagnostics
    np.testing.assert_array_equal(back.fold_of_row, comp.fold_of_row)
    rows = small_sim.data.head(20)
    assert sorted(back.fits) == sorted(comp.fits)
    for name in comp.fits:
        for interval in (None, "prediction"):
            pd.testing.assert_frame_equal(back.fits[name].predict(rows, interval=interval), comp.fits[name].predict(rows, interval=interval),
                                          check_exact=True)
        pd.testing.assert_frame_equal(back.fits[name].group_effects(), comp.fits[name].group_effects(), check_exact=True)
        assert hierfit.load(path / "fits" / name).engine == name  # each fit is a complete save of its own


def test_comparison_saves_are_sealed_and_replaced_atomically(submarket_comparison, tmp_path):
    path = submarket_comparison.save(tmp_path / "cmp", extra=lambda d: (d / "report.html").write_text("<html></html>"))
    assert "report.html" in (path / "SHA256SUMS").read_text()
    with pytest.raises(PersistenceError, match="already holds a hierfit save"):
        submarket_comparison.save(path)
    submarket_comparison.save(path, overwrite=True)
    assert not (path / "report.html").exists()
    fold_file = path / "fits" / "ols" / "engine" / "arrays.npz"
    fold_file.write_bytes(fold_file.read_bytes()[:-10])
    with pytest.raises(PersistenceError, match=r"cmp/fits/ols/engine/arrays.npz is truncated"):
        Comparison.load(path)
    with pytest.raises(PersistenceError, match="holds a saved comparison, not a fit"):
        hierfit.load(path)


def test_time_budget_skips_cross_validation_but_keeps_the_fit(small_sim):
    comp = compare(small_sim.formula, small_sim.data, engines=["ols"], cv="kfold:3", time_budget=0.0, progress=False)
    assert "ols" in comp.fits and comp.folds.empty
    assert "not cross-validated" in comp.notes[0]
    assert np.isnan(comp.summary().rmse.iloc[0])


def test_time_budget_stops_further_full_fits_after_the_first(small_sim):
    two = compare(small_sim.formula, small_sim.data, engines=["ols", "mixed"], cv="kfold:3", time_budget=0.0, progress=False)
    assert list(two.fits) == ["ols"]  # the first engine is always fitted
    assert any(n.startswith("mixed: not fitted: 0 s of the 0 s budget were left at its turn") for n in two.notes)


def test_a_failing_engine_is_recorded_not_fatal(small_sim):
    with pytest.warns(UserWarning, match="Engine 'ols' failed in compare"):
        comp = compare(small_sim.formula, small_sim.data, engines=["ols"], cv="kfold:2", options={"ols": {"bogus": 1}}, progress=False)
    assert "no option 'bogus'" in comp.failures["ols"]
    assert comp.fits == {}


def test_bad_arguments_raise_before_fitting(small_sim):
    with pytest.raises(EngineError, match="must be one of: .*ols.* Got 'lmer'"):
        compare(small_sim.formula, small_sim.data, engines=["lmer"], progress=False)
    with pytest.raises(EngineError, match="'engines' is empty"):
        compare(small_sim.formula, small_sim.data, engines=[], progress=False)
    with pytest.raises(EngineError, match="'options' names engines that are not compared: pymc"):
        compare(small_sim.formula, small_sim.data, engines=["ols"], options={"pymc": {}}, progress=False)


def test_progress_display_runs(small_sim, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compare(small_sim.formula, small_sim.data.head(200), engines="ols", cv="kfold:2", progress=True)
    assert "compare" in capsys.readouterr().err


def test_load_keeps_the_tables_when_a_saved_fit_cannot_be_read(submarket_comparison, tmp_path, monkeypatch):
    import dataclasses

    from hierfit.engines import ENGINES

    path = submarket_comparison.save(tmp_path / "cmp")
    # the engine of one saved fit is not installed where the comparison is loaded
    monkeypatch.setitem(ENGINES, "ols", dataclasses.replace(ENGINES["ols"], requires=("no_such_module_for_hierfit",)))
    back = Comparison.load(path)
    assert "ols" not in back.fits and "cannot be loaded" in back.failures["ols"] and "no_such_module_for_hierfit" in back.failures["ols"]
    assert len(back.summary()) == len(submarket_comparison.engines)
