"""Pickled estimators carry their fit as hierfit's save format, never as pickled hierfit objects."""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

import hierfit
from hierfit.exceptions import PersistenceError
from hierfit.sklearn import HierarchicalClassifier, HierarchicalRegressor
from hierfit.sklearn._base import fit_from_files


class _RecordingUnpickler(pickle.Unpickler):
    """Unpickles, noting every class or function the pickle names."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.names: set[tuple[str, str]] = set()

    def find_class(self, module: str, name: str):
        self.names.add((module, name))
        return super().find_class(module, name)


@pytest.fixture(scope="module")
def fitted(sim, bernoulli_sim):
    """A fitted regressor and classifier, each with its X and prediction method."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hierfit.HierfitWarning)
        reg = HierarchicalRegressor(formula=sim.formula).fit(sim.data.drop(columns="y"), sim.data["y"])
        labels = bernoulli_sim.data["y"].map({0: "no", 1: "yes"})
        clf = HierarchicalClassifier(formula=bernoulli_sim.formula).fit(bernoulli_sim.data.drop(columns="y"), labels)
    return [(reg, sim.data.drop(columns="y"), "predict"), (clf, bernoulli_sim.data.drop(columns="y"), "predict_proba")]


def test_round_trip_gives_identical_predictions_and_no_pickled_hierfit_object(fitted) -> None:
    for estimator, X, method in fitted:
        data = pickle.dumps(estimator)
        unpickler = _RecordingUnpickler(data)
        back = unpickler.load()
        hierfit_names = {(m, n) for m, n in unpickler.names if m.split(".")[0] == "hierfit"}
        assert hierfit_names == {("hierfit.sklearn.estimators", type(estimator).__name__)}
        np.testing.assert_array_equal(getattr(back, method)(X), getattr(estimator, method)(X))
        assert back.result_.spec.text == estimator.result_.spec.text
        assert back.formula_ == estimator.formula_ and back.get_params() == estimator.get_params()
        assert "result_" in vars(estimator)  # pickling left the live estimator as it was


def test_state_holds_the_saved_files_as_bytes(fitted) -> None:
    estimator, X, _ = fitted[0]
    state = estimator.__getstate__()
    assert "result_" not in state
    files = state["_hierfit_saved_fit"]
    assert {"hierfit.json", "SHA256SUMS", "engine/state.json"} <= set(files)
    assert all(isinstance(k, str) and isinstance(v, bytes) for k, v in files.items())
    # everything else in the state is plain data: no hierfit object at any depth
    rest = {k: v for k, v in state.items() if k != "_hierfit_saved_fit"}
    assert not [k for k, v in rest.items() if type(v).__module__.startswith("hierfit")]
    # the saved files are what FitResult.save writes, and load back to the same predictions
    np.testing.assert_array_equal(fit_from_files(files).predict(X)["prediction"], estimator.result_.predict(X)["prediction"])


def test_save_and_load_round_trip_identically(fitted, tmp_path) -> None:
    """The format the pickle relies on: FitResult.save then hierfit.load predicts the same numbers."""
    for k, (estimator, X, _) in enumerate(fitted):
        path = estimator.result_.save(tmp_path / f"fit{k}")
        loaded = hierfit.load(path)
        for interval in (None, "confidence"):
            np.testing.assert_array_equal(loaded.predict(X, interval=interval).to_numpy(),
                                          estimator.result_.predict(X, interval=interval).to_numpy())


def test_deepcopy_and_unfitted_estimators(fitted) -> None:
    estimator, X, _ = fitted[0]
    np.testing.assert_array_equal(copy.deepcopy(estimator).predict(X), estimator.predict(X))
    unfitted = pickle.loads(pickle.dumps(HierarchicalRegressor(engine_options={"reml": False})))
    assert unfitted.engine_options == {"reml": False} and not hasattr(unfitted, "result_")


def test_damaged_saved_files_are_refused(fitted) -> None:
    estimator, _, _ = fitted[0]
    state = estimator.__getstate__()
    files = dict(state["_hierfit_saved_fit"])
    files["engine/state.json"] = files["engine/state.json"][:-5]
    with pytest.raises(PersistenceError, match="engine/state.json"):
        fit_from_files(files)
    with pytest.raises(PersistenceError, match="outside its save"):
        fit_from_files({"../evil": b""})
