"""Cross-validation schemes: K-fold by row, and leave-groups-out at a chosen level.

Leaving out groups answers a different question from leaving out rows. K-fold asks "how well
do we predict new rows of groups we know?"; leaving out submarkets asks "how well do we
predict a submarket we have never seen, inside a market we know?" (the fit must fall back to
the market), and leaving out markets asks the same one level up (fall back to the national
level). Held-out groups are assigned to folds *within their parent*, so every fold keeps
the other children of each parent in training and the parent stays known.

:class:`RowKFold` and :class:`LeaveGroupsOut` hand the same folds to scikit-learn (they have its
splitter protocol, ``split`` and ``get_n_splits``, without importing it), so
``cross_val_score(..., cv=LeaveGroupsOut("submarket", formula))`` scores exactly the folds that
``compare(formula, data, cv="submarket")`` scores.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from hierfit.design.hierarchy import Hierarchy, build_hierarchy
from hierfit.exceptions import SpecError
from hierfit.model import ModelSpec, make_spec

KFOLD = "kfold"
DEFAULT_FOLDS = 5


@dataclass(frozen=True)
class CVScheme:
    """How to split the rows into folds.

    Parameters
    ----------
    level
        ``None`` for K-fold by row, or a level name (``"submarket"``, ``"market"``) to hold out
        whole groups of that level.
    folds
        Number of folds (at least 2).
    seed
        Seed of the random assignment.

    Examples
    --------
    >>> parse_cv("submarket:4")
    CVScheme(level='submarket', folds=4, seed=0)
    >>> parse_cv("kfold").describe()
    '5-fold by row'
    """

    level: str | None = None
    folds: int = DEFAULT_FOLDS
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.folds, (int, np.integer)) or self.folds < 2:
            raise SpecError(f"Cross-validation needs at least 2 folds; got folds={self.folds!r}.")

    @property
    def kind(self) -> str:
        return KFOLD if self.level is None else "groups"

    def describe(self) -> str:
        if self.level is None:
            return f"{self.folds}-fold by row"
        return f"leave-{self.level}-out, {self.folds} folds (held-out {self.level} groups, parents kept)"

    def assign(self, spec: ModelSpec, data: pd.DataFrame) -> np.ndarray:
        """Fold number (0 .. folds-1) of every row of ``data``."""
        if self.level is None:
            return self.row_folds(len(data))
        return _group_folds(spec, data, self.level, self.folds, np.random.default_rng(self.seed))

    def row_folds(self, n: int) -> np.ndarray:
        """Fold number of each of ``n`` rows for K-fold by row (what :meth:`assign` gives then).

        Examples
        --------
        >>> CVScheme(None, 3, seed=1).row_folds(7).tolist()
        [2, 0, 1, 1, 2, 0, 0]
        """
        if n < self.folds:
            raise SpecError(f"{self.folds}-fold cross-validation needs at least {self.folds} rows; the data have {n}.")
        return np.random.default_rng(self.seed).permutation(np.arange(n) % self.folds)

    def splitter(self, formula: str | ModelSpec | None = None, *,
                 hierarchy: Sequence[str] | None = None) -> RowKFold | LeaveGroupsOut:
        """This scheme as a scikit-learn splitter: :class:`RowKFold`, or :class:`LeaveGroupsOut`
        (which needs the ``formula`` to know the grouping columns).

        Examples
        --------
        >>> parse_cv("kfold:3", seed=2).splitter()
        RowKFold(folds=3, seed=2)
        >>> parse_cv("market:4").splitter("y ~ x1 + (1 | market)")
        LeaveGroupsOut(level='market', formula='y ~ x1 + (1 | market)', folds=4, seed=0, hierarchy=None)
        """
        if self.level is None:
            return RowKFold(self.folds, self.seed)
        if formula is None:
            raise SpecError(
                f"Leaving out {self.level} groups needs the formula, whose group-level terms name the grouping "
                f"columns: pass it, as in parse_cv('{self.level}:{self.folds}').splitter('y ~ x + (1 | {self.level})')."
            )
        return LeaveGroupsOut(self.level, formula, self.folds, self.seed, hierarchy=hierarchy)


def parse_cv(cv: CVScheme | str | int | None, seed: int = 0) -> CVScheme:
    """Read a CV argument: a :class:`CVScheme`, ``"kfold"``, ``"kfold:10"``, a level name
    (``"submarket"``, ``"market:5"``) or an int (K-fold with that many folds)."""
    if cv is None:
        return CVScheme(None, DEFAULT_FOLDS, seed)
    if isinstance(cv, CVScheme):
        return cv
    if isinstance(cv, (int, np.integer)) and not isinstance(cv, bool):
        return CVScheme(None, int(cv), seed)
    if not isinstance(cv, str) or not cv.strip():
        raise SpecError(f"'cv' must be 'kfold', 'kfold:K', a level name such as 'submarket' or 'market:K', or an int; got {cv!r}.")
    name, _, k = cv.strip().partition(":")
    folds = DEFAULT_FOLDS
    if k:
        try:
            folds = int(k)
        except ValueError:
            raise SpecError(f"The number of folds in cv={cv!r} must be an integer, as in 'submarket:5'.") from None
    return CVScheme(None if name == KFOLD else name, folds, seed)


def _group_folds(spec: ModelSpec, data: pd.DataFrame, level: str, folds: int, rng: np.random.Generator) -> np.ndarray:
    check_cv_level(spec, level)
    hierarchy, codes = build_hierarchy(spec, data)
    return group_folds(hierarchy, level, folds, rng)[codes[level]]


def check_cv_level(spec: ModelSpec, level: str) -> None:
    """Refuse a cv level that is not a level of the formula, listing those that are."""
    levels = [f.level for f in spec.formula.factors]
    if level not in levels:
        raise SpecError(
            f"cv level {level!r} is not a level of the formula {spec.text!r}; choose one of: "
            f"{', '.join(sorted(levels))}, or 'kfold'."
        )


def group_folds(hierarchy: Hierarchy, level: str, folds: int, rng: np.random.Generator) -> np.ndarray:
    """Fold number of every group of ``level`` (in the tree's order of groups).

    Only the tree is read -- its sorted groups and their parents -- so a tree built from the
    distinct groups of a streamed source gives the folds the rows in memory give
    (:func:`hierfit.evaluate.streamed.compare_source` relies on it).

    Examples
    --------
    >>> import hierfit
    >>> from hierfit.design.hierarchy import build_hierarchy
    >>> sim = hierfit.simulate(n_markets=2, n_submarkets=3, rows_per_submarket=2, seed=0)
    >>> tree, _ = build_hierarchy(hierfit.make_spec(sim.formula), sim.data)
    >>> group_folds(tree, "submarket", 3, np.random.default_rng(0)).tolist()
    [1, 2, 0, 2, 1, 0]
    """
    lv = hierarchy.level(level)
    if lv.n_groups < folds:
        raise SpecError(
            f"Leaving out {level} groups in {folds} folds needs at least {folds} {level} groups; "
            f"the data have {lv.n_groups}. Use fewer folds (cv='{level}:{max(lv.n_groups, 2)}') or cv='kfold'."
        )
    group_fold = np.empty(lv.n_groups, dtype=np.int64)
    parent = lv.parent_index if lv.parent_index is not None else np.zeros(lv.n_groups, dtype=np.int64)
    # Deal each parent's children round-robin into folds from a random start, so every fold
    # holds out about one child per parent and keeps the others (the parent stays known).
    start = 0
    for p in np.unique(parent):
        kids = rng.permutation(np.flatnonzero(parent == p))
        group_fold[kids] = (start + np.arange(len(kids))) % folds
        start = (start + len(kids)) % folds
    return group_fold


# -- the same folds for scikit-learn ------------------------------------------------------------
# The splitters below speak scikit-learn's protocol (split, get_n_splits) without importing it:
# scikit-learn is an optional dependency, and ``check_cv`` accepts any object with those two methods.


def array_column_names(n: int) -> list[str]:
    """Names of the columns of an array, as scikit-learn names them: ``x0, x1, ...``.

    Examples
    --------
    >>> array_column_names(3)
    ['x0', 'x1', 'x2']
    """
    return [f"x{i}" for i in range(n)]


def feature_frame(X: Any) -> pd.DataFrame:
    """``X`` as a DataFrame whose columns a formula can name: a DataFrame with string column
    names as it is, anything else with its columns named by :func:`array_column_names`.

    Examples
    --------
    >>> feature_frame(np.zeros((2, 2))).columns.tolist()
    ['x0', 'x1']
    """
    if isinstance(X, pd.DataFrame):
        if all(isinstance(c, str) for c in X.columns):
            return X
        return X.set_axis(array_column_names(X.shape[1]), axis=1)
    frame = pd.DataFrame(np.asarray(X))
    if frame.ndim != 2:
        raise SpecError(f"X must be two-dimensional (rows x columns); got shape {np.shape(X)}.")
    return frame.set_axis(array_column_names(frame.shape[1]), axis=1)


def _no_groups(groups: Any, splitter: str) -> None:
    # scikit-learn's group splitters take labels through ``groups``; these read them from the
    # formula's grouping columns of X, and an ignored argument would hide a mistake.
    if groups is not None:
        raise SpecError(
            f"{splitter}.split() reads the groups from the columns of X that the formula names (as compare() does); "
            "it takes no 'groups' argument. Drop groups=... from the call (cross_val_score, GridSearchCV.fit)."
        )


def _folds_as_splits(fold: np.ndarray, folds: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for k in range(folds):
        yield np.flatnonzero(fold != k), np.flatnonzero(fold == k)


@dataclass(frozen=True)
class RowKFold:
    """K-fold by row for scikit-learn: exactly the folds of ``compare(..., cv="kfold:K", seed=seed)``.

    Unlike :class:`sklearn.model_selection.KFold` (which cuts the rows in order, or shuffles them
    with its own generator), the rows are dealt into folds by :meth:`CVScheme.row_folds`, so a
    score per fold from ``cross_val_score`` matches ``Comparison.folds`` row for row.

    Examples
    --------
    >>> cv = RowKFold(folds=3, seed=1)
    >>> [test.tolist() for _, test in cv.split(np.zeros((7, 2)))]
    [[1, 5, 6], [2, 3], [0, 4]]
    >>> cv.get_n_splits()
    3
    """

    folds: int = DEFAULT_FOLDS
    seed: int = 0

    def __post_init__(self) -> None:
        CVScheme(None, self.folds, self.seed)  # the same check of the number of folds

    @property
    def scheme(self) -> CVScheme:
        """The :class:`CVScheme` these folds come from."""
        return CVScheme(None, self.folds, self.seed)

    def get_n_splits(self, X: Any = None, y: Any = None, groups: Any = None) -> int:
        """The number of folds."""
        return self.folds

    def split(self, X: Any, y: Any = None, groups: Any = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(train, test)`` row positions of each fold in turn (fold 0 first)."""
        _no_groups(groups, "RowKFold")
        n = X.shape[0] if hasattr(X, "shape") else len(X)
        return _folds_as_splits(self.scheme.row_folds(int(n)), self.folds)


@dataclass(frozen=True)
class LeaveGroupsOut:
    """Leave-groups-out for scikit-learn: exactly the folds of ``compare(formula, ..., cv="LEVEL:K", seed=seed)``.

    Whole groups of ``level`` are held out, dealt into folds within their parent (so a held-out
    submarket's market stays in training: the fit predicts it from its market), or whole
    markets at the top level. The grouping columns are read from ``X`` by the ``formula``'s
    group-level terms (columns of an array are named ``x0, x1, ...``); ``hierarchy`` is the
    explicit level order, as in :func:`hierfit.fit`.

    Examples
    --------
    >>> import hierfit
    >>> sim = hierfit.simulate(n_markets=3, n_submarkets=3, rows_per_submarket=2, seed=0)
    >>> cv = LeaveGroupsOut("submarket", sim.formula, folds=3)
    >>> X = sim.data.drop(columns="y")
    >>> for train, test in cv.split(X):
    ...     held = X.iloc[test]
    ...     print(held.groupby("market")["submarket"].nunique().tolist(), set(held.market) <= set(X.iloc[train].market))
    [1, 1, 1] True
    [1, 1, 1] True
    [1, 1, 1] True
    """

    level: str
    formula: str | ModelSpec
    folds: int = DEFAULT_FOLDS
    seed: int = 0
    hierarchy: Sequence[str] | None = None
    _spec: ModelSpec = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        CVScheme(self.level, self.folds, self.seed)
        if isinstance(self.formula, ModelSpec) and self.hierarchy is not None:
            raise SpecError("Pass 'hierarchy' either in the ModelSpec or to LeaveGroupsOut, not both.")
        spec = make_spec(self.formula, hierarchy=self.hierarchy)  # a bad formula fails here, not at the first split
        levels = [f.level for f in spec.formula.factors]
        if self.level not in levels:
            raise SpecError(
                f"LeaveGroupsOut level {self.level!r} is not a level of the formula {spec.text!r}; choose one of: "
                f"{', '.join(sorted(levels))}, or use RowKFold."
            )
        object.__setattr__(self, "_spec", spec)

    @property
    def scheme(self) -> CVScheme:
        """The :class:`CVScheme` these folds come from."""
        return CVScheme(self.level, self.folds, self.seed)

    def get_n_splits(self, X: Any = None, y: Any = None, groups: Any = None) -> int:
        """The number of folds."""
        return self.folds

    def split(self, X: Any, y: Any = None, groups: Any = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(train, test)`` row positions of each fold in turn (fold 0 first)."""
        _no_groups(groups, "LeaveGroupsOut")
        return _folds_as_splits(self.scheme.assign(self._spec, feature_frame(X)), self.folds)
