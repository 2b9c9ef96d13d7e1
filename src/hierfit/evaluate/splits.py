"""Cross-validation schemes: K-fold by row, and leave-groups-out at a chosen level.

Leaving out groups answers a different question from leaving out rows. K-fold asks "how well
do we predict new rows of groups we know?"; leaving out submarkets asks "how well do we
predict a submarket we have never seen, inside a market we know?" (the fit must fall back to
the market), and leaving out markets asks the same one level up (fall back to the national
level). Held-out groups are assigned to folds *within their parent*, so every fold keeps
the other children of each parent in training and the parent stays known.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from hierfit.design.hierarchy import build_hierarchy
from hierfit.exceptions import SpecError
from hierfit.model import ModelSpec

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
        rng = np.random.default_rng(self.seed)
        n = len(data)
        if self.level is None:
            if n < self.folds:
                raise SpecError(f"{self.folds}-fold cross-validation needs at least {self.folds} rows; the data have {n}.")
            fold = np.arange(n) % self.folds
            return rng.permutation(fold)
        return _group_folds(spec, data, self.level, self.folds, rng)


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
    levels = [f.level for f in spec.formula.factors]
    if level not in levels:
        raise SpecError(
            f"cv level {level!r} is not a level of the formula {spec.text!r}; choose one of: "
            f"{', '.join(sorted(levels))}, or 'kfold'."
        )
    hierarchy, codes = build_hierarchy(spec, data)
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
    return group_fold[codes[level]]

