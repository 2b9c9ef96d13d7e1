"""Thread budgets: every core for a single fit, ``cores // workers`` for each fold worker in compare."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import hierfit
from hierfit import threads
from hierfit.engines import ENGINES
from hierfit.threads import available_cores, fold_budget, limit_threads, thread_budget, threads_for


def test_a_budget_holds_inside_its_block_and_user_counts_are_kept():
    assert thread_budget() == available_cores() == threads_for(0) == threads_for(None)
    with limit_threads(1) as outer:
        assert thread_budget() == 1 and threads_for(0) == 1
        assert threads_for(3) == 3, "a count the user set is the user's"
        with limit_threads(2) as inner:
            assert threads_for(None) == 2
        assert inner.used == 2 and outer.used == 3 and outer.granted == [1, 3]
        assert thread_budget() == 1
    assert thread_budget() == available_cores()
    with limit_threads(0) as use:  # never below one thread
        assert use.budget == 1 and use.used == 1  # nobody asked: the budget (BLAS takes it)


def test_blas_pools_take_the_budget():
    from threadpoolctl import threadpool_info

    blas = [p for p in threadpool_info() if p["user_api"] == "blas"]
    if not blas:
        pytest.skip("no BLAS library with a thread pool is loaded")
    with limit_threads(1):
        assert all(p["num_threads"] == 1 for p in threadpool_info() if p["user_api"] == "blas")


def test_fold_budget_shares_the_cores(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 16)
    assert [fold_budget(w) for w in (1, 2, 3, 16, 40)] == [16, 8, 5, 1, 1]


def test_lightgbm_takes_the_budget_unless_told(monkeypatch, small_sim):
    pytest.importorskip("lightgbm")
    from hierfit.engines.boosting._booster import lgb_params
    from hierfit.engines.boosting.lightgbm_engine import OPTIONS

    monkeypatch.setattr(threads, "available_cores", lambda: 6)
    assert lgb_params(OPTIONS(), "regression")["num_threads"] == 6
    with limit_threads(2):
        assert lgb_params(OPTIONS(), "regression")["num_threads"] == 2
        assert lgb_params(OPTIONS(num_threads=5), "regression")["num_threads"] == 5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = hierfit.fit(small_sim.formula, small_sim.data, engine="lightgbm", **ENGINES["lightgbm"].fast_options())
    assert fit.native().params["num_threads"] == 6, "a single fit has every core"


def test_compare_with_two_workers_gives_each_fold_fit_its_share(monkeypatch, small_sim):
    """On 2 cores, 2 fold workers: LightGBM gets one thread in every fold fit, and the
    full-data fit (alone) gets both; the scores are those of one worker."""
    pytest.importorskip("lightgbm")
    from hierfit.evaluate import compare

    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    names = ["ols", "lightgbm"]
    options = {n: ENGINES[n].fast_options() for n in names}
    kwargs = dict(engines=names, cv="submarket:3", national="United_state", options=options, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        two = compare(small_sim.formula, small_sim.data, workers=2, **kwargs)
        one = compare(small_sim.formula, small_sim.data, workers=1, **kwargs)
    assert not two.failures
    folds = two.folds.set_index(["engine", "fold"])
    assert (folds.loc["lightgbm", "threads"] == 1).all() and len(folds.loc["lightgbm"]) == 3
    assert two.fits["lightgbm"].native().params["num_threads"] == 2
    assert (one.folds.set_index(["engine", "fold"]).loc["lightgbm", "threads"] == 2).all()
    a, b = two.predictions.sort_values(["engine", "row"]), one.predictions.sort_values(["engine", "row"])
    assert np.array_equal(a.row, b.row) and np.array_equal(a.fold, b.fold)
    np.testing.assert_allclose(a.prediction, b.prediction, rtol=1e-6)


def test_workers_must_be_a_positive_integer(small_sim):
    from hierfit.evaluate import compare
    from hierfit.exceptions import SpecError

    for bad in (0, 1.5, True):
        with pytest.raises(SpecError, match="'workers' must be a positive integer"):
            compare(small_sim.formula, small_sim.data, engines=["ols"], workers=bad, progress=False)
