"""HierarchicalRegressor and HierarchicalClassifier: hierfit fits as scikit-learn estimators."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import ClassifierMixin, RegressorMixin
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_array, column_or_1d

from hierfit.exceptions import DataError
from hierfit.model import DEFAULT_NATIONAL
from hierfit.sklearn._base import HierarchicalBase

__all__ = ["HierarchicalClassifier", "HierarchicalRegressor"]


class HierarchicalRegressor(RegressorMixin, HierarchicalBase):
    """A hierfit fit as a scikit-learn regressor: ``predict`` gives the expected outcome.

    Parameters
    ----------
    formula
        lme4-style formula text, e.g. ``"y ~ x1 + (1 + x1 | market) + (1 | market:submarket)"``,
        over the columns of ``X`` (a DataFrame's names; ``x0, x1, ...`` for an array). Its
        response is only a label for ``fit``'s ``y`` (``X`` must not hold a column of that name).
        ``None``: every column of ``X`` not in ``groups`` is a population-level term, and the
        ``groups`` get nested random intercepts, top level first (``(1 | g1) + (1 | g1:g2)``).
    engine
        A hierfit engine name (``hierfit.ENGINES``); the default ``"mixed"`` needs at least one
        group-level term, so give ``groups`` or a formula with one.
    family
        An outcome family the engine fits (``"gaussian"``, ``"poisson"``, ...); predictions are
        on the response scale (an expected count for ``"poisson"``).
    link
        A non-default link of the family, as in :func:`hierfit.fit`.
    groups
        Only without ``formula``: the grouping columns of ``X``, top level first -- names (a
        DataFrame's columns) or integer positions. Their values are group labels (text or numbers).
    national
        Name of the national root.
    hierarchy, priors
        As in :func:`hierfit.fit`.
    engine_options
        The engine's options (its ``OPTIONS``), e.g. ``{"reml": False}``. Each is also a parameter
        ``engine_options__<name>`` for ``set_params`` and ``GridSearchCV``.
    checks
        Severity per named data check, e.g. ``{"singular": "ignore"}``.
    unseen_groups
        What predicting rows of groups the fit never saw does (they use their deepest known
        ancestor's effects): ``"collect"`` records the warning in ``unseen_groups_``, ``"warn"``
        also issues it, ``"error"`` raises a :class:`~hierfit.DataError`.

    Attributes
    ----------
    result_
        The :class:`hierfit.FitResult` (effects tables, ``summary()``, ``decompose()``, ``save()``).
    formula_
        The formula fitted (built from ``groups`` when ``formula`` is None).
    n_features_in_, feature_names_in_
        Number of columns of ``X`` and, for a DataFrame with string column names, their names.
    unseen_groups_
        The unseen-group messages of every ``predict``/``score`` since the last fit.

    Notes
    -----
    ``fit`` takes no ``sample_weight``: hierfit's weights are lme4's prior (precision) weights,
    which do not mean what scikit-learn's frequency weights mean (a weight of 2 is not a repeated
    row under REML). ``set_output(transform="pandas")`` makes ``predict`` return a Series named
    ``prediction`` indexed like ``X``. A pickled estimator carries its fit as the files of
    :meth:`hierfit.FitResult.save` and rebuilds it with :func:`hierfit.load`: no hierfit object
    is ever pickled, so keep ``result_.save(path)`` for persistence and pickles for transport.

    Examples
    --------
    >>> import hierfit
    >>> from hierfit.sklearn import HierarchicalRegressor
    >>> sim = hierfit.simulate(n_markets=5, n_submarkets=3, rows_per_submarket=10, seed=1)
    >>> X, y = sim.data.drop(columns="y"), sim.data["y"]
    >>> model = HierarchicalRegressor(groups=["market", "submarket"]).fit(X, y)
    >>> model.formula_
    'y ~ x1 + x2 + (1 | market) + (1 | market:submarket)'
    >>> model.set_output(transform="pandas").predict(X.head(2)).name
    'prediction'
    >>> model.set_params(engine_options__reml=False).engine_options
    {'reml': False}
    """

    def __init__(
        self,
        formula: str | None = None,
        engine: str = "mixed",
        family: str = "gaussian",
        link: str | None = None,
        groups: str | int | Sequence[str | int] | None = None,
        national: str = DEFAULT_NATIONAL,
        hierarchy: Sequence[str] | None = None,
        priors: Mapping[str, Any] | None = None,
        engine_options: Mapping[str, Any] | None = None,
        checks: Mapping[str, str] | None = None,
        unseen_groups: str = "collect",
    ) -> None:
        self.formula = formula
        self.engine = engine
        self.family = family
        self.link = link
        self.groups = groups
        self.national = national
        self.hierarchy = hierarchy
        self.priors = priors
        self.engine_options = engine_options
        self.checks = checks
        self.unseen_groups = unseen_groups

    def fit(self, X: Any, y: Any) -> HierarchicalRegressor:
        """Fit on the rows of ``X`` with outcome ``y``; returns the estimator."""
        if y is not None:
            y = column_or_1d(check_array(y, ensure_2d=False, dtype="numeric", input_name="y"), warn=True)
        self._fit_hierfit(X, y, self.family)
        return self

    def predict(self, X: Any) -> np.ndarray | pd.Series:
        """The expected outcome of every row of ``X`` (unseen groups fall back to their parent)."""
        values, index = self._predict_hierfit(X)
        return pd.Series(values, index=index, name="prediction") if self._pandas_output() else values


class HierarchicalClassifier(ClassifierMixin, HierarchicalBase):
    """A hierfit binary-outcome fit (family ``"bernoulli"``) as a scikit-learn classifier.

    ``y`` holds two classes, any labels (``classes_``, sorted); the second, ``classes_[1]``, is
    the outcome modelled (1 in the bernoulli fit). ``predict_proba`` gives both columns,
    ``predict`` the more probable label, and ``score`` is the accuracy. More than two classes
    are refused: wrap the estimator in ``sklearn.multiclass.OneVsRestClassifier``.

    Parameters
    ----------
    formula, engine, link, groups, national, hierarchy, priors, engine_options, checks, unseen_groups
        As for :class:`HierarchicalRegressor`; the family is always ``"bernoulli"``.

    Attributes
    ----------
    classes_
        The two class labels, sorted.
    result_, formula_, n_features_in_, feature_names_in_, unseen_groups_
        As for :class:`HierarchicalRegressor`.

    Examples
    --------
    >>> import hierfit
    >>> from hierfit.sklearn import HierarchicalClassifier
    >>> sim = hierfit.simulate(n_markets=5, n_submarkets=3, rows_per_submarket=20, seed=1, family="bernoulli")
    >>> X, y = sim.data.drop(columns="y"), sim.data["y"].map({0: "no", 1: "yes"})
    >>> clf = HierarchicalClassifier(formula="y ~ x1 + x2 + (1 | market)").fit(X, y)
    >>> clf.classes_.tolist(), clf.predict_proba(X).shape
    (['no', 'yes'], (300, 2))
    >>> set(clf.predict(X)) <= {"no", "yes"}
    True
    """

    def __init__(
        self,
        formula: str | None = None,
        engine: str = "mixed",
        link: str | None = None,
        groups: str | int | Sequence[str | int] | None = None,
        national: str = DEFAULT_NATIONAL,
        hierarchy: Sequence[str] | None = None,
        priors: Mapping[str, Any] | None = None,
        engine_options: Mapping[str, Any] | None = None,
        checks: Mapping[str, str] | None = None,
        unseen_groups: str = "collect",
    ) -> None:
        self.formula = formula
        self.engine = engine
        self.link = link
        self.groups = groups
        self.national = national
        self.hierarchy = hierarchy
        self.priors = priors
        self.engine_options = engine_options
        self.checks = checks
        self.unseen_groups = unseen_groups

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return tags

    def fit(self, X: Any, y: Any) -> HierarchicalClassifier:
        """Fit on the rows of ``X`` with the two-class labels ``y``; returns the estimator."""
        if y is not None:
            y = column_or_1d(check_array(y, ensure_2d=False, dtype=None, input_name="y"), warn=True)
            check_classification_targets(y)  # "Unknown label type" for continuous y, as scikit-learn says it
            kind = type_of_target(y, input_name="y", raise_unknown=True)
            if kind != "binary":
                raise DataError(
                    f"Only binary classification is supported. The type of the target is {kind!r}: HierarchicalClassifier "
                    "fits a bernoulli outcome of two classes. For more, wrap it in sklearn.multiclass.OneVsRestClassifier."
                )
            classes, positive = np.unique(y, return_inverse=True)
            if len(classes) < 2:
                raise DataError(f"y has only 1 class ({classes[0]!r}); a binary outcome needs rows of both classes to fit.")
            self.classes_ = classes
            y = positive.astype(float)
        self._fit_hierfit(X, y, "bernoulli")
        return self

    def predict_proba(self, X: Any) -> np.ndarray | pd.DataFrame:
        """Probability of each class for every row of ``X``: columns ``classes_``."""
        p, index = self._predict_hierfit(X)
        proba = np.column_stack([1.0 - p, p])
        return pd.DataFrame(proba, index=index, columns=list(self.classes_)) if self._pandas_output() else proba

    def predict(self, X: Any) -> np.ndarray | pd.Series:
        """The more probable class label of every row of ``X`` (``classes_[0]`` on a tie)."""
        p, index = self._predict_hierfit(X)
        labels = self.classes_[(p > 0.5).astype(np.intp)]
        return pd.Series(labels, index=index, name="prediction") if self._pandas_output() else labels

