"""scikit-learn estimators over hierfit fits (``pip install 'hierfit[sklearn]'``).

* :class:`HierarchicalRegressor` -- any engine and family; ``predict`` is the expected outcome;
* :class:`HierarchicalClassifier` -- a binary outcome (family ``"bernoulli"``) with
  ``classes_``, ``predict_proba`` and accuracy ``score``.

Both take a formula over the columns of ``X`` (or build one from ``groups``), search over engine
options as ``engine_options__<name>`` (``GridSearchCV``, ``Pipeline``), collect unseen-group
warnings in ``unseen_groups_``, and pickle through hierfit's own save format. The splitters
:class:`hierfit.evaluate.RowKFold` and :class:`hierfit.evaluate.LeaveGroupsOut` give
``cross_val_score`` exactly the folds of :func:`hierfit.compare`.

Examples
--------
>>> import hierfit
>>> from sklearn.model_selection import cross_val_score
>>> from hierfit.evaluate import LeaveGroupsOut
>>> from hierfit.sklearn import HierarchicalRegressor
>>> sim = hierfit.simulate(n_markets=6, n_submarkets=3, rows_per_submarket=10, seed=1)
>>> X, y = sim.data.drop(columns="y"), sim.data["y"]
>>> model = HierarchicalRegressor(formula=sim.formula)
>>> scores = cross_val_score(model, X, y, cv=LeaveGroupsOut("submarket", sim.formula, folds=3),
...                          scoring="neg_root_mean_squared_error")
>>> len(scores)
3

``import hierfit`` never imports scikit-learn; this module does, and says how to install it.
"""

try:
    import sklearn  # noqa: F401
except ModuleNotFoundError as exc:  # an optional dependency: name the extra that brings it
    raise ImportError("hierfit.sklearn needs scikit-learn: pip install 'hierfit[sklearn]'.") from exc

from hierfit.sklearn.estimators import HierarchicalClassifier, HierarchicalRegressor

__all__ = ["HierarchicalClassifier", "HierarchicalRegressor"]
