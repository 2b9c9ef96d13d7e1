"""HierarchicalRegressor and HierarchicalClassifier: formulas from X, parameters, output, unseen groups."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("sklearn")

from sklearn.base import clone
from sklearn.pipeline import Pipeline

import hierfit
from hierfit.exceptions import DataError, HierfitError, SpecError, UnseenGroupsWarning
from hierfit.sklearn import HierarchicalClassifier, HierarchicalRegressor

NATIONAL = "United_state"


def _xy(sim):
    return sim.data.drop(columns="y"), sim.data["y"]


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hierfit.HierfitWarning)
        return fn(*args, **kwargs)


# -- fitting: the same model as hierfit.fit ------------------------------------------------------


def test_regressor_predicts_what_hierfit_fit_predicts(sim) -> None:
    X, y = _xy(sim)
    model = _quiet(HierarchicalRegressor(formula=sim.formula, national=NATIONAL).fit, X, y)
    reference = _quiet(hierfit.fit, sim.formula, sim.data, engine="mixed", national=NATIONAL)
    assert model.result_.engine == "mixed" and model.formula_ == sim.formula
    np.testing.assert_array_equal(model.predict(X), reference.predict(sim.data)["prediction"].to_numpy())
    assert model.n_features_in_ == 4 and model.feature_names_in_.tolist() == ["x1", "x2", "market", "submarket"]


def test_without_a_formula_groups_give_nested_random_intercepts(sim) -> None:
    X, y = _xy(sim)
    model = _quiet(HierarchicalRegressor(groups=["market", "submarket"]).fit, X, y)
    assert model.formula_ == "y ~ x1 + x2 + (1 | market) + (1 | market:submarket)"
    assert model.result_.hierarchy.level("submarket").parent == "market"


def test_array_columns_are_x0_x1_and_groups_are_positions(sim) -> None:
    X, y = _xy(sim)
    array = X[["market", "x1"]].to_numpy(dtype=object)  # a string group column in an object array
    model = _quiet(HierarchicalRegressor(groups=[0]).fit, array, y.to_numpy())
    assert model.formula_ == "y ~ x1 + (1 | x0)"
    assert not hasattr(model, "feature_names_in_")
    by_formula = _quiet(HierarchicalRegressor(formula="y ~ x1 + (1 | x0)").fit, array, y.to_numpy())
    np.testing.assert_array_equal(model.predict(array), by_formula.predict(array))


def test_response_label_never_clashes_with_a_column(sim) -> None:
    X, y = _xy(sim)
    X = X[["x1", "market"]].assign(y=X["x1"] * X["x2"])  # a predictor that happens to be called y
    model = _quiet(HierarchicalRegressor(groups="market").fit, X, y)
    assert model.formula_ == "y_ ~ x1 + y + (1 | market)"


def test_column_names_a_formula_cannot_read_bare_are_quoted(sim) -> None:
    X, y = _xy(sim)
    X = X.rename(columns={"x1": "unit price", "market": "sales market"})
    model = _quiet(HierarchicalRegressor(groups=["sales market"]).fit, X[["unit price", "sales market"]], y)
    assert model.formula_ == "y ~ `unit price` + (1 | `sales market`)"
    assert model.result_.hierarchy.level("sales market").n_groups == 6


def test_fit_warnings_point_at_the_callers_line(sim) -> None:
    X, y = _xy(sim)
    with pytest.warns(hierfit.HierfitWarning) as record:
        HierarchicalRegressor(groups=["market"]).fit(X.iloc[:60], y.iloc[:60])  # 60 rows: one market has too few
    assert {w.filename for w in record} == {__file__}


def test_regressor_fits_other_families_and_engines(sim) -> None:
    X, y = _xy(sim)
    counts = np.random.default_rng(0).poisson(np.exp(0.3 + 0.2 * X["x1"]))
    model = _quiet(HierarchicalRegressor(groups=["market"], family="poisson").fit, X[["x1", "market"]], counts)
    assert model.result_.spec.family.name == "poisson" and (model.predict(X[["x1", "market"]]) > 0).all()
    ols = _quiet(HierarchicalRegressor(groups=["market"], engine="ols").fit, X, y)
    assert ols.result_.engine == "ols"


# -- parameters -------------------------------------------------------------------------------


def test_engine_options_are_parameters_of_their_own() -> None:
    options = {"reml": True, "n_draws": 400}
    model = HierarchicalRegressor(engine_options=options)
    params = model.get_params(deep=True)
    assert params["engine_options__reml"] is True and params["engine_options__n_draws"] == 400
    assert "engine_options__reml" not in model.get_params(deep=False)
    model.set_params(engine_options__reml=False)
    assert model.engine_options == {"reml": False, "n_draws": 400}
    assert options == {"reml": True, "n_draws": 400}  # the caller's dict is never changed
    assert HierarchicalRegressor().set_params(engine_options__reml=False).engine_options == {"reml": False}
    # a whole new dict and one option of it in one call: the option applies to the new dict
    both = HierarchicalRegressor().set_params(engine_options={"n_draws": 50}, engine_options__reml=False)
    assert both.engine_options == {"n_draws": 50, "reml": False}


def test_engine_options_reach_through_a_pipeline(sim) -> None:
    pipe = Pipeline([("scale", "passthrough"), ("model", HierarchicalRegressor(formula=sim.formula))])
    pipe.set_params(model__engine_options__reml=False)
    assert pipe.named_steps["model"].engine_options == {"reml": False}
    assert pipe.get_params()["model__engine_options__reml"] is False
    X, y = _xy(sim)
    fitted = _quiet(pipe.fit, X, y)
    assert fitted.named_steps["model"].result_.options == {"reml": False}


def test_constructor_stores_arguments_and_validates_at_fit(sim) -> None:
    model = HierarchicalRegressor(unseen_groups="sometimes", engine_options="reml")  # no error yet
    assert model.unseen_groups == "sometimes"
    X, y = _xy(sim)
    with pytest.raises(SpecError, match="'unseen_groups' must be one of: collect, error, warn. Got 'sometimes'"):
        model.fit(X, y)
    with pytest.raises(SpecError, match="'engine_options' must be a dict"):
        HierarchicalRegressor(engine_options="reml", groups="market").fit(X, y)
    with pytest.raises(SpecError, match="holds family, which are not engine options"):
        HierarchicalRegressor(engine_options={"family": "poisson"}, groups="market").fit(X, y)
    with pytest.raises(hierfit.EngineError, match="lmer"):
        HierarchicalRegressor(engine="lmer", groups="market").fit(X, y)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"formula": "y ~ x1 + (1 | market)", "groups": ["market"]}, "Pass 'groups'.*or 'formula', not both"),
        ({"groups": ["region"]}, r"'groups' names column 'region', which X does not have; its columns are \['market'"),
        ({"groups": [7]}, "'groups' position 7 is out of range: X has 4 columns"),
        ({"groups": ["market", "market"]}, "lists column 'market' twice"),
        ({"formula": "x1 ~ x2 + (1 | market)"}, "X has a column 'x1', the response of the formula"),
    ],
)
def test_user_errors_say_what_to_do(sim, kwargs, match) -> None:
    X, y = _xy(sim)
    with pytest.raises(HierfitError, match=match):
        HierarchicalRegressor(**kwargs).fit(X, y)


def test_missing_values_are_refused_naming_the_column(sim) -> None:
    X, y = _xy(sim)
    with pytest.raises(DataError, match="missing values in columns the model uses: x1"):  # hierfit's message for frames
        HierarchicalRegressor(groups=["market"]).fit(X.assign(x1=X.x1.where(X.index != 3)), y)
    HierarchicalRegressor(formula="y ~ x2 + (1 | market)").fit(X.assign(x1=np.nan), y)  # a column the formula leaves out
    with pytest.raises(ValueError, match="Input X contains NaN"):  # scikit-learn's for arrays
        HierarchicalRegressor(groups=[0]).fit(np.column_stack([X.x1.where(X.index != 3), X.x2]), y)


def test_the_mixed_engine_still_refuses_a_model_without_groups(sim) -> None:
    """No silent switch to a fixed-effects engine: hierfit's own refusal reaches the user."""
    X, y = _xy(sim)
    with pytest.raises(HierfitError, match="mixed"):
        HierarchicalRegressor().fit(X[["x1", "x2"]], y)


# -- output -----------------------------------------------------------------------------------


def test_pandas_output_is_indexed_like_x(sim, bernoulli_sim) -> None:
    X, y = _xy(sim)
    X = X.set_axis(np.arange(len(X)) * 10 + 5)
    model = _quiet(HierarchicalRegressor(groups=["market", "submarket"]).fit, X, y.to_numpy())
    plain = model.predict(X)
    assert isinstance(plain, np.ndarray)
    series = model.set_output(transform="pandas").predict(X.iloc[::-1])
    assert isinstance(series, pd.Series) and series.name == "prediction"
    assert series.index.equals(X.index[::-1])
    np.testing.assert_array_equal(series.to_numpy(), plain[::-1])
    assert isinstance(clone(model).set_output(transform=None)._sklearn_output_config, dict)  # clone keeps the setting
    assert isinstance(model.set_output(transform="default").predict(X), np.ndarray)
    with pytest.raises(SpecError, match="must be one of: default, pandas"):
        model.set_output(transform="polars")

    Xb, yb = _xy(bernoulli_sim)
    clf = _quiet(HierarchicalClassifier(formula=bernoulli_sim.formula).fit, Xb, yb.map({0: "no", 1: "yes"}))
    proba = clf.set_output(transform="pandas").predict_proba(Xb)
    assert proba.columns.tolist() == ["no", "yes"] and proba.index.equals(Xb.index)
    assert set(clf.predict(Xb)) <= {"no", "yes"}


# -- the classifier ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "positive"),
    [({0: "no", 1: "yes"}, "yes"), ({0: "stay", 1: "churn"}, "churn"), ({0: False, 1: True}, True)],
)
def test_classifier_probabilities_are_the_bernoulli_glmm(bernoulli_sim, labels, positive) -> None:
    X, y = _xy(bernoulli_sim)
    reference = _quiet(hierfit.fit, bernoulli_sim.formula, bernoulli_sim.data, engine="mixed", family="bernoulli")
    p = reference.predict(bernoulli_sim.data)["prediction"].to_numpy()
    clf = _quiet(HierarchicalClassifier(formula=bernoulli_sim.formula).fit, X, y.map(labels))
    assert clf.classes_.tolist() == sorted(labels.values())
    assert clf.result_.spec.family.name == "bernoulli" and clf.result_.engine == "mixed"
    proba = clf.predict_proba(X)
    column = clf.classes_.tolist().index(positive)
    # classes_[1] is the outcome modelled; when it is y == 0 the fit is the same model with
    # the signs of every effect flipped, equal to the optimiser's tolerance
    np.testing.assert_allclose(proba[:, column], p, rtol=0, atol=1e-12 if column == 1 else 1e-8)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    expected = np.where(p > 0.5, positive, labels[0] if positive == labels[1] else labels[1])
    np.testing.assert_array_equal(clf.predict(X), expected)
    assert clf.score(X, y.map(labels)) == pytest.approx(np.mean(expected == y.map(labels).to_numpy()))


def test_classifier_refuses_more_than_two_classes(bernoulli_sim) -> None:
    X, y = _xy(bernoulli_sim)
    three = np.array(["a", "b", "c"])[np.arange(len(y)) % 3]
    with pytest.raises(DataError, match="Only binary classification is supported.*OneVsRestClassifier"):
        HierarchicalClassifier(formula=bernoulli_sim.formula).fit(X, three)
    with pytest.raises(DataError, match="y has only 1 class"):
        HierarchicalClassifier(formula=bernoulli_sim.formula).fit(X, np.zeros(len(y)))


# -- unseen groups ----------------------------------------------------------------------------


def _held_out_submarket(sim):
    X, y = _xy(sim)
    held = (X["market"] == X["market"].iloc[0]) & (X["submarket"] == X["submarket"].iloc[0])
    return X[~held], y[~held], X, held


def test_unseen_groups_are_collected_not_printed(sim) -> None:
    X_train, y_train, X, held = _held_out_submarket(sim)
    model = _quiet(HierarchicalRegressor(formula=sim.formula).fit, X_train, y_train)
    assert model.unseen_groups_ == []
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnseenGroupsWarning)  # would raise if one escaped
        model.predict(X)
        model.score(X, sim.data["y"])
    assert len(model.unseen_groups_) == 2  # one per call that met them
    assert f"({int(held.sum())} rows)" in model.unseen_groups_[0] and "submarket" in model.unseen_groups_[0]
    model.predict(X_train)  # nothing unseen: nothing recorded
    assert len(model.unseen_groups_) == 2
    _quiet(model.fit, X_train, y_train)
    assert model.unseen_groups_ == []  # per fit


def test_unseen_groups_warn_or_error_on_request(sim) -> None:
    X_train, y_train, X, _ = _held_out_submarket(sim)
    warn = _quiet(HierarchicalRegressor(formula=sim.formula, unseen_groups="warn").fit, X_train, y_train)
    with pytest.warns(UnseenGroupsWarning, match="Groups not seen in fitting"):
        warn.predict(X)
    assert len(warn.unseen_groups_) == 1
    error = _quiet(HierarchicalRegressor(formula=sim.formula, unseen_groups="error").fit, X_train, y_train)
    with pytest.raises(DataError, match="unseen_groups='error'"):
        error.predict(X)
    error.predict(X_train)  # known groups only: fine


def test_other_warnings_of_predict_still_reach_the_caller(sim, monkeypatch) -> None:
    X, y = _xy(sim)
    model = _quiet(HierarchicalRegressor(formula=sim.formula).fit, X, y)
    real = type(model.result_).predict

    def noisy(self, *args, **kwargs):
        warnings.warn("something else", hierfit.HierfitWarning, stacklevel=2)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(model.result_), "predict", noisy)
    with pytest.warns(hierfit.HierfitWarning, match="something else"):
        model.predict(X)
    assert model.unseen_groups_ == []
