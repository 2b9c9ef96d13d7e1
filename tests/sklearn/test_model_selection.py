"""scikit-learn's model selection over hierfit: the folds and scores of compare(), grid search in a pipeline."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.compose import ColumnTransformer
from sklearn.model_selection import GridSearchCV, cross_val_score, cross_validate
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

import hierfit
from hierfit.evaluate import LeaveGroupsOut, RowKFold, parse_cv
from hierfit.sklearn import HierarchicalRegressor


def _xy(sim):
    return sim.data.drop(columns="y"), sim.data["y"]


@pytest.mark.parametrize("cv", ["submarket:3", "market:3", "kfold:4"])
def test_cross_val_score_reproduces_compare_fold_by_fold(sim, cv) -> None:
    """Same seed, same folds, same fits: the RMSE of every fold equals compare()'s."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hierfit.HierfitWarning)
        comparison = hierfit.compare(sim.formula, sim.data, engines=["mixed"], cv=cv, seed=5, progress=False)
        splitter = parse_cv(cv, seed=5).splitter(sim.formula)
        X, y = _xy(sim)
        scores = cross_val_score(HierarchicalRegressor(formula=sim.formula), X, y, cv=splitter,
                                 scoring="neg_root_mean_squared_error")
    folds = comparison.folds.sort_values("fold")
    assert folds["fold"].tolist() == list(range(splitter.get_n_splits()))
    np.testing.assert_allclose(-scores, folds["rmse"].to_numpy(), rtol=0, atol=1e-10)


def test_cross_validation_collects_the_held_out_groups_per_fold(sim) -> None:
    X, y = _xy(sim)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hierfit.HierfitWarning)
        warnings.simplefilter("error", hierfit.UnseenGroupsWarning)  # none is printed
        out = cross_validate(HierarchicalRegressor(formula=sim.formula, checks={"singular": "ignore"}), X, y,
                             cv=LeaveGroupsOut("submarket", sim.formula, folds=3), return_estimator=True)
    for estimator in out["estimator"]:
        assert len(estimator.unseen_groups_) == 1 and "submarket:" in estimator.unseen_groups_[0]


def test_grid_search_over_an_engine_option_in_a_pipeline(sim) -> None:
    """GridSearchCV over ``model__engine_options__reml``, numeric columns scaled, group columns passed through."""
    X, y = _xy(sim)
    prep = ColumnTransformer(
        [("scale", StandardScaler(), ["x1", "x2"]), ("groups", "passthrough", ["market", "submarket"])],
        verbose_feature_names_out=False,  # keep the names the formula uses
    ).set_output(transform="pandas")  # and the string group labels
    model = HierarchicalRegressor(formula=sim.formula, national="United_state", checks={"singular": "ignore"})
    pipe = Pipeline([("prep", prep), ("model", model)])
    search = GridSearchCV(pipe, {"model__engine_options__reml": [True, False]},
                          cv=LeaveGroupsOut("submarket", sim.formula, folds=3), scoring="neg_root_mean_squared_error")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hierfit.HierfitWarning)
        search.fit(X, y)
    assert [p["model__engine_options__reml"] for p in search.cv_results_["params"]] == [True, False]
    scores = search.cv_results_["mean_test_score"]
    assert np.all(np.isfinite(scores)) and scores[0] != scores[1]  # REML and ML fits differ
    best = search.best_estimator_.named_steps["model"]
    assert best.result_.options == {"reml": search.best_params_["model__engine_options__reml"]}
    assert best.feature_names_in_.tolist() == ["x1", "x2", "market", "submarket"]
    assert model.engine_options is None  # the estimator given to the search is never changed

    # the best pipeline equals the model fitted by hand on the scaled columns
    scaled = X.assign(x1=(X.x1 - X.x1.mean()) / X.x1.std(ddof=0), x2=(X.x2 - X.x2.mean()) / X.x2.std(ddof=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hierfit.HierfitWarning)
        by_hand = hierfit.fit(sim.formula, scaled.assign(y=y), engine="mixed", national="United_state",
                              reml=search.best_params_["model__engine_options__reml"])
    np.testing.assert_allclose(search.predict(X), by_hand.predict(scaled)["prediction"].to_numpy(), rtol=1e-12, atol=1e-12)


def test_fitted_estimators_come_back_from_worker_processes(sim) -> None:
    """n_jobs=2: fitted estimators travel back from joblib's workers pickled (through hierfit's save format)."""
    X, y = _xy(sim)
    model = HierarchicalRegressor(formula=sim.formula, checks={"singular": "ignore"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hierfit.HierfitWarning)
        out = cross_validate(model, X, y, cv=RowKFold(folds=2), n_jobs=2, return_estimator=True)
        for (train, _), estimator in zip(RowKFold(folds=2).split(X), out["estimator"], strict=True):
            here = HierarchicalRegressor(formula=sim.formula).fit(X.iloc[train], y.iloc[train])
            np.testing.assert_array_equal(estimator.predict(X), here.predict(X))
